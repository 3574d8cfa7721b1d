"""Control pairs: random or oracle picks among the same complete paths a calibrate_select stage scored.

Rows land in `preference_pairs` like CSR's own, with `mode` = "random" | "oracle" and `lam` = -1
(no reward mix chose them); chosen_reward/rejected_reward keep the calibrated rewards of the picked paths
under the upstream stage's settings, for comparison.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from csr_core.controls import CONTROLS, oracle_pair, random_pair
from csr_core.reward import PathReward
from storage import stages
from storage.artifacts import read_prompts, write_pairs
from storage.reports import read_path_rewards
from storage.store import open_store
from tasks.calibrate import pair_row
from tasks.common import StageSpec, file_sha256, logger, run_whole_stage, stage_task
from tasks.io import load_vocab, pool_truth

CONTROL_LAM = -1.0  # `lam` of control pairs: no λ mix chose them


def control_spec(control: str, seed: int, paths_key: str, pool_file: str = "", vocab_path: str = "") -> StageSpec:
    """Random pairs depend on the seed; oracle pairs on the ground truth (pool and vocabulary contents)."""
    if control not in CONTROLS:
        raise ValueError(f"control must be one of {CONTROLS}, got {control!r}")
    config: dict = {"control": control}
    if control == "random":
        config["seed"] = seed
    else:
        config.update(pool=file_sha256(pool_file)[:16], vocab=file_sha256(vocab_path)[:16])
    return StageSpec("control_pairs", config, {"paths": paths_key})


def has_ground_truth(pool_file: str, vocab_path: str) -> bool:
    return bool(vocab_path) and Path(vocab_path).is_file() and bool(pool_truth(pool_file))


@stage_task(name="control-pairs")
def control_pairs(db: str, control: str, seed: int, paths_key: str, pool_file: str = "",
                  vocab_path: str = "") -> str:
    """Pairs picked by `control` among the complete paths of calibrate_select stage `paths_key`."""
    if control == "oracle" and not has_ground_truth(pool_file, vocab_path):
        raise ValueError(f"oracle control needs ground-truth 'objects' in the prompt pool ({pool_file}) "
                         f"and an object vocabulary ({vocab_path or 'none'})")
    store = open_store(db)
    spec = control_spec(control, seed, paths_key, pool_file, vocab_path)

    def work(key: str) -> None:
        upstream = stages.get_stage(store, paths_key)
        if upstream is None or upstream.status != "complete":
            raise LookupError(f"no complete calibrate_select stage {paths_key}")
        prompts_key = upstream.upstream["prompts"]
        rounds = read_prompts(store, prompts_key).set_index("prompt_id")["round"]
        pick = _picker(control, seed, pool_file, vocab_path)
        rows = []
        for prompt_id, paths in read_path_rewards(store, paths_key).groupby("prompt_id", sort=True):
            pair = pick(str(prompt_id), [_path(row) for row in paths.itertuples()])
            if pair is None:
                logger().info("prompt %s: fewer than two complete paths, no %s pair", prompt_id, control)
                continue
            rows.append(pair_row(prompt_id, int(rounds[prompt_id]), prompts_key, pair, CONTROL_LAM, control))
        write_pairs(store, key, pd.DataFrame(), pd.DataFrame(rows))

    return run_whole_stage(store, spec, work)


def _picker(control: str, seed: int, pool_file: str, vocab_path: str):
    if control == "random":
        return lambda prompt_id, paths: random_pair(paths, seed, prompt_id)
    truth, vocab = pool_truth(pool_file), load_vocab(vocab_path)
    return lambda prompt_id, paths: oracle_pair(paths, truth[prompt_id], vocab) if prompt_id in truth else None


def _path(row) -> PathReward:
    return PathReward(node_ids=tuple(int(n) for n in row.node_ids), reward=float(row.reward),
                      n_sentences=int(row.n_sentences), text=row.text, self_term=float(row.self_term),
                      relevance_term=float(row.relevance_term))
