"""Rescoring: new reward settings (λ, mode, filters) over stored candidates; no VLM, no CLIP."""
from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NONE

from flows.config import RunConfig, given_or_loaded
from flows.inputs import resolve_inputs
from storage import stages
from storage.store import open_store
from tasks.calibrate import calibrate_select, pair_accuracy


@task(name="find-scored-candidates", cache_policy=NONE, persist_result=False)
def scored_candidates(db: str, round_: int | None = None, tree_key: str | None = None) -> list[dict[str, str]]:
    """The complete (tree, relevance, prompts) key triples stored, newest first, optionally filtered."""
    store = open_store(db)
    found = []
    for relevance in stages.find_stages(store, "score_relevance"):
        tree = stages.get_stage(store, relevance.upstream["tree"])
        if tree is None or tree.status != "complete" or (tree_key and tree.stage_key != tree_key):
            continue
        prompts = stages.get_stage(store, tree.upstream["prompts"])
        if round_ is not None and (prompts is None or prompts.config.get("round") != round_):
            continue
        found.append({"tree": tree.stage_key, "relevance": relevance.stage_key, "prompts": tree.upstream["prompts"]})
    return found


@flow(name="csr-rescore", log_prints=True)
def rescore(config_files: list[str] | None = None, overrides: list[str] | None = None, round_: int | None = None,
            tree_key: str | None = None, config: RunConfig | None = None) -> list[dict[str, str | None]]:
    """Recompute calibrated rewards and pairs for stored candidates under the configured reward settings."""
    cfg = given_or_loaded(config, config_files, overrides)
    inputs = resolve_inputs(cfg)
    results = []
    for keys in scored_candidates(cfg.db, round_, tree_key):
        pairs = calibrate_select(cfg.db, cfg.reward, keys["tree"], keys["relevance"], keys["prompts"])
        accuracy = pair_accuracy(cfg.db, pairs, inputs.pool_file, inputs.vocab_file)
        results.append({**keys, "pairs": pairs, "pair_accuracy": accuracy})
    if not results:
        print("nothing to rescore: no complete candidates with relevance scores in", cfg.db)
    return results
