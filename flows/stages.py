"""One flow per stage, for running or re-running a single stage of a round.

Each runs what its stage needs first; those upstream stages are cache hits once they are complete.
"""
from __future__ import annotations

from prefect import flow

from flows.config import load_config
from flows.pipeline import candidates, evaluate_policy, pairs, policy_for_round, policy_of, prepare
from tasks.common import model_fingerprint
from tasks.dpo import dpo_finetune
from tasks.generate import generate_candidates
from tasks.prompts import pool_fingerprint, sample_prompts


@flow(name="csr-sample-prompts")
def sample_prompts_flow(config_files: list[str] | None = None, overrides: list[str] | None = None,
                        round_: int = 1) -> str:
    cfg = load_config(config_files or [], overrides or [])
    inputs = prepare(cfg)
    return sample_prompts(cfg.db, cfg.prompts, round_, inputs.pool_file, inputs.pool_images,
                          pool_fingerprint(inputs.pool_file))


@flow(name="csr-generate-candidates")
def generate_flow(config_files: list[str] | None = None, overrides: list[str] | None = None,
                  round_: int = 1) -> str:
    cfg = load_config(config_files or [], overrides or [])
    inputs = prepare(cfg)
    policy = policy_for_round(cfg, inputs, round_)
    prompts = sample_prompts(cfg.db, cfg.prompts, round_, inputs.pool_file, inputs.pool_images,
                             pool_fingerprint(inputs.pool_file))
    return generate_candidates(cfg.db, cfg.search, cfg.reward, cfg.model, cfg.runtime, policy.key, policy.path,
                               prompts, inputs.scorer_dir, model_fingerprint(inputs.scorer_dir))


@flow(name="csr-score-relevance")
def relevance_flow(config_files: list[str] | None = None, overrides: list[str] | None = None,
                   round_: int = 1) -> str:
    cfg = load_config(config_files or [], overrides or [])
    inputs = prepare(cfg)
    return candidates(cfg, inputs, policy_for_round(cfg, inputs, round_), round_)["relevance"]


@flow(name="csr-calibrate-select")
def calibrate_flow(config_files: list[str] | None = None, overrides: list[str] | None = None,
                   round_: int = 1) -> str:
    cfg = load_config(config_files or [], overrides or [])
    inputs = prepare(cfg)
    return pairs(cfg, inputs, candidates(cfg, inputs, policy_for_round(cfg, inputs, round_), round_))


@flow(name="csr-dpo")
def dpo_flow(config_files: list[str] | None = None, overrides: list[str] | None = None, round_: int = 1) -> str:
    cfg = load_config(config_files or [], overrides or [])
    inputs = prepare(cfg)
    policy = policy_for_round(cfg, inputs, round_)
    keys = candidates(cfg, inputs, policy, round_)
    return dpo_finetune(cfg.db, cfg.dpo, cfg.model, policy.key, policy.path, pairs(cfg, inputs, keys),
                        cfg.data_dir, round_, runtime=cfg.runtime)


@flow(name="csr-evaluate")
def evaluate_flow(config_files: list[str] | None = None, overrides: list[str] | None = None,
                  model_key: str | None = None, round_: int = 0) -> str:
    """Evaluate the base model, or a registered model by key (e.g. a round's DPO stage key)."""
    cfg = load_config(config_files or [], overrides or [])
    inputs = prepare(cfg)
    policy = policy_of(cfg, model_key) if model_key else policy_for_round(cfg, inputs, 1)
    return evaluate_policy(cfg, inputs, policy, round_)
