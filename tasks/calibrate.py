"""Stage 4, calibrate and select: calibrated path rewards from stored raw scores, then pairs.

Reads only DuckDB: a new λ or new selection settings rerun this stage alone, never the VLM or CLIP.
"""
from __future__ import annotations

import math

import pandas as pd
from prefect import task

from csr_core.reward import PreferencePair, RewardConfig, ScoredNode, score_paths, select_pair
from storage.artifacts import read_prompts, read_scored_tree, write_pairs
from storage.store import open_store
from tasks.common import TASK_OPTIONS, StageSpec, logger, run_whole_stage


def calibrate_spec(reward: RewardConfig, tree_key: str, relevance_key: str, prompts_key: str) -> StageSpec:
    return StageSpec("calibrate_select", {"reward": reward},
                     {"tree": tree_key, "relevance": relevance_key, "prompts": prompts_key})


@task(name="calibrate-select", **TASK_OPTIONS)
def calibrate_select(db: str, reward: RewardConfig, tree_key: str, relevance_key: str, prompts_key: str) -> str:
    store = open_store(db)
    spec = calibrate_spec(reward, tree_key, relevance_key, prompts_key)

    def work(key: str) -> None:
        rounds = read_prompts(store, prompts_key).set_index("prompt_id")["round"]
        tree = read_scored_tree(store, tree_key, relevance_key)
        path_rows, pair_rows = [], []
        for prompt_id, nodes in tree.groupby("prompt_id", sort=True):
            paths = score_paths([_scored_node(row) for row in nodes.itertuples()], reward)
            path_rows += [_path_row(prompt_id, path) for path in paths]
            pair = select_pair(paths, reward)
            if pair is None:
                logger().info("prompt %s: fewer than two complete paths, no pair", prompt_id)
                continue
            pair_rows.append(pair_row(prompt_id, int(rounds[prompt_id]), prompts_key, pair, reward.lam, reward.mode))
        write_pairs(store, key, pd.DataFrame(path_rows), pd.DataFrame(pair_rows))

    return run_whole_stage(store, spec, work)


def _scored_node(row) -> ScoredNode:
    cosine = 0.0 if row.cosine is None or (isinstance(row.cosine, float) and math.isnan(row.cosine)) else row.cosine
    parent = None if row.parent_id is None or pd.isna(row.parent_id) else int(row.parent_id)
    return ScoredNode(node_id=int(row.node_id), parent_id=parent, text=row.text, cum_score=row.cum_score,
                      logprob_sum=row.logprob_sum, token_count=int(row.token_count), is_final=bool(row.is_final),
                      relevance=float(cosine))


def _path_row(prompt_id: str, path) -> dict:
    return {"prompt_id": prompt_id, "leaf_id": path.node_ids[-1], "node_ids": list(path.node_ids),
            "text": path.text, "n_sentences": path.n_sentences, "self_term": path.self_term,
            "relevance_term": path.relevance_term, "reward": path.reward}


def pair_row(prompt_id: str, round_: int, prompts_key: str, pair: PreferencePair, lam: float, mode: str) -> dict:
    """A `preference_pairs` row; `lam` and `mode` say what picked the pair (a reward mix, or a control)."""
    return {"prompts_key": prompts_key, "prompt_id": prompt_id, "round": round_, "lam": lam,
            "mode": mode, "chosen": pair.chosen.text, "rejected": pair.rejected.text,
            "chosen_reward": pair.chosen.reward, "rejected_reward": pair.rejected.reward,
            "chosen_nodes": list(pair.chosen.node_ids), "rejected_nodes": list(pair.rejected.node_ids)}
