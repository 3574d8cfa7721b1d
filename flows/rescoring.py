"""Rescoring stored candidates under new reward settings, for one λ or a curve of them; no VLM, no CLIP.

Prefect-free on purpose: `csr rescore` runs these stages directly (recorded in DuckDB as always) when no
Prefect API is configured, and as task runs of the `csr-rescore` flow (`flows/rescore.py`) when one is.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from flows.config import RunConfig
from flows.inputs import resolve_inputs
from storage.stages import scored_candidates
from storage.store import open_store
from tasks.calibrate import calibrate_select, pair_accuracy

CURVE_REFERENCE_LAM = 0.9  # the curve's agreement column compares each λ's pairs with the paper's λ's


def direct(stage, *args):
    """Run a stage task's function in this process, without Prefect."""
    return stage.fn(*args)


def as_task(stage, *args):
    return stage(*args)


def rescore_candidates(cfg: RunConfig, lams: Sequence[float] | None = None, round_: int | None = None,
                       tree_key: str | None = None, run: Callable = direct) -> list[dict]:
    """Pairs (and their accuracy where ground truth exists) for every stored candidate set and every λ."""
    inputs, store = resolve_inputs(cfg), open_store(cfg.db)
    results = []
    for keys in scored_candidates(store, round_, tree_key):
        for lam in lams if lams is not None else [cfg.reward.lam]:
            reward = dataclasses.replace(cfg.reward, lam=float(lam))
            with store.session():  # one connection for the λ's few queries and writes, let go after
                pairs = run(calibrate_select, cfg.db, reward, keys["tree"], keys["relevance"], keys["prompts"])
                accuracy = run(pair_accuracy, cfg.db, pairs, inputs.pool_file, inputs.vocab_file)
            results.append({**keys, "lam": float(lam), "pairs": pairs, "pair_accuracy": accuracy})
    return results


def with_reference(lams: Sequence[float]) -> list[float]:
    """A curve's λ values, plus the reference λ its agreement column needs."""
    values = [float(x) for x in lams]
    return values if CURVE_REFERENCE_LAM in values or len(values) < 2 else [*values, CURVE_REFERENCE_LAM]
