"""The CSR pipeline as Prefect flows.

world -> evaluate base -> [sample -> generate -> relevance -> calibrate -> DPO -> evaluate] x rounds
"""
from __future__ import annotations

from dataclasses import dataclass

from prefect import flow

from csr_core.config import WORLD
from flows.config import RunConfig, given_or_loaded
from flows.inputs import Inputs, check_rounds_fit, check_user_inputs
from flows.publish import publish_report
from tasks.benchmarks import build_eval_set, uses_eval_set
from tasks.calibrate import calibrate_select, pair_accuracy
from tasks.common import model_fingerprint
from tasks.dpo import dpo_finetune
from tasks.evaluate import evaluate
from tasks.generate import generate_candidates
from tasks.models import register_base_model, registered_model_dir
from tasks.prompts import pool_fingerprint, sample_prompts
from tasks.relevance import score_relevance
from tasks.world import build_scenes, train_world_clip, train_world_vlm


@dataclass(frozen=True)
class Policy:
    key: str
    path: str


@flow(name="csr-world", log_prints=True)
def world_flow(config_files: list[str] | None = None, overrides: list[str] | None = None,
               config: RunConfig | None = None) -> dict[str, str]:
    """Build the miniature world: scenes with ground truth, the base VLM, the relevance scorer."""
    return build_world(given_or_loaded(config, config_files, overrides))


def build_world(cfg: RunConfig, *, everything: bool = True) -> dict[str, str]:
    """The world's scenes, and those of its models the run uses (all of them with `everything`)."""
    world_dir = str(cfg.world_dir)
    keys = {"scenes": build_scenes(cfg.db, cfg.world, world_dir)}
    if everything or cfg.model.path == WORLD:
        keys["vlm"] = train_world_vlm(cfg.db, cfg.world, world_dir, keys["scenes"], cfg.runtime.progress)
    if everything or cfg.relevance.model_dir == WORLD:
        keys["clip"] = train_world_clip(cfg.db, cfg.world, world_dir, keys["scenes"], cfg.runtime.progress)
    return keys


@flow(name="csr-pipeline", log_prints=True)
def csr_pipeline(config_files: list[str] | None = None, overrides: list[str] | None = None,
                 rounds: int | None = None, config: RunConfig | None = None) -> dict:
    """CSR end to end: evaluate the base model, then `rounds` rounds of self-rewarded DPO."""
    cfg = given_or_loaded(config, config_files, overrides)
    inputs = prepare(cfg)
    check_rounds_fit(cfg, inputs, cfg.rounds if rounds is None else rounds)
    policy = policy_for_round(cfg, inputs, 1)
    summary: dict = {"base_eval": evaluate_policy(cfg, inputs, policy, 0), "rounds": []}
    for round_ in range(1, (cfg.rounds if rounds is None else rounds) + 1):
        keys = csr_round(cfg, inputs, policy, round_)
        policy = policy_of(cfg, keys["model"])
        summary["rounds"].append(keys)
    publish_report(cfg.db)
    return summary


def csr_round(cfg: RunConfig, inputs: Inputs, policy: Policy, round_: int, *, with_eval: bool = True
              ) -> dict[str, str | None]:
    """One round: candidates from the current policy, rewards, pairs, DPO, evaluation of the new policy."""
    keys: dict[str, str | None] = {**candidates(cfg, inputs, policy, round_)}
    keys["pairs"] = pairs(cfg, inputs, keys)
    keys["model"] = dpo_finetune(cfg.db, cfg.dpo, cfg.model, policy.key, policy.path, keys["pairs"], cfg.data_dir,
                                 round_, runtime=cfg.runtime)
    if with_eval:
        keys["eval"] = evaluate_policy(cfg, inputs, policy_of(cfg, keys["model"]), round_)
    return keys


def pairs(cfg: RunConfig, inputs: Inputs, keys: dict) -> str:
    """Calibrated rewards and chosen/rejected pairs (plus their accuracy where ground truth exists)."""
    pairs_key = calibrate_select(cfg.db, cfg.reward, keys["tree"], keys["relevance"], keys["prompts"])
    keys["pair_accuracy"] = pair_accuracy(cfg.db, pairs_key, inputs.pool_file, inputs.vocab_file)
    return pairs_key


def policy_of(cfg: RunConfig, model_key: str) -> Policy:
    return Policy(model_key, registered_model_dir(cfg.db, model_key))


def policy_for_round(cfg: RunConfig, inputs: Inputs, round_: int) -> Policy:
    """The policy that generates round `round_`'s candidates (earlier rounds are cache hits once done)."""
    policy = Policy(register_base_model(cfg.db, inputs.model_dir), inputs.model_dir)
    for earlier in range(1, round_):
        policy = policy_of(cfg, csr_round(cfg, inputs, policy, earlier, with_eval=False)["model"])
    return policy


def prepare(cfg: RunConfig) -> Inputs:
    """Check the user's inputs and build the miniature world's when the config uses them; read and store a
    benchmark's sample (COCO, POPE question files), so that bad annotations stop the run before any model work."""
    inputs = check_user_inputs(cfg)
    if cfg.uses_world:
        build_world(cfg, everything=False)
    eval_set(cfg, inputs)
    return inputs


def eval_set(cfg: RunConfig, inputs: Inputs) -> str | None:
    """The stored benchmark sample the evaluations read (a cache hit once built), or None for an eval JSON."""
    return build_eval_set(cfg.db, cfg.eval, inputs.vocab_file) if uses_eval_set(cfg.eval) else None


def candidates(cfg: RunConfig, inputs: Inputs, policy: Policy, round_: int) -> dict[str, str]:
    """Prompts, candidate trees and their relevance scores: everything that runs the VLM or CLIP."""
    scorer_key = model_fingerprint(inputs.scorer_dir)
    prompts = sample_prompts(cfg.db, cfg.prompts, round_, inputs.pool_file, inputs.pool_images,
                             pool_fingerprint(inputs.pool_file))
    tree = generate_candidates(cfg.db, cfg.search, cfg.reward, cfg.model, cfg.runtime, policy.key, policy.path,
                               prompts, inputs.scorer_dir, scorer_key)
    relevance = score_relevance(cfg.db, cfg.relevance, cfg.runtime, scorer_key, inputs.scorer_dir, tree, prompts)
    return {"prompts": prompts, "tree": tree, "relevance": relevance}


def evaluate_policy(cfg: RunConfig, inputs: Inputs, policy: Policy, round_: int) -> str:
    return evaluate(cfg.db, cfg.eval, cfg.model, cfg.runtime, policy.key, policy.path,
                    model_fingerprint(inputs.scorer_dir), inputs.scorer_dir, inputs.eval_file, inputs.eval_images,
                    inputs.vocab_file, round_, eval_set(cfg, inputs))
