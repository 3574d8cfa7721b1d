"""Stage 4, calibrate and select: λ-free path parts from stored raw scores, then pairs for a λ; pair accuracy.

Reads only DuckDB: a new λ or new selection settings rerun this stage alone, never the VLM or CLIP. The
per-prompt walk over the tree (`path_parts` stage) runs once per tree, relevance scores and filter settings;
each λ then weighs the stored parts for all prompts at once (`csr_core.rescore`).
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd

from csr_core.metrics import preference_accuracy
from csr_core.rescore import PathTable, select_pairs, weigh_all
from csr_core.reward import PathParts, PreferencePair, RewardConfig, ScoredNode, path_parts
from storage.artifacts import (
    prompt_rounds,
    read_pair_texts,
    read_path_parts,
    read_scored_tree,
    replace_stage_rows,
    write_path_parts,
    write_rescored,
)
from storage.store import open_store
from tasks.common import StageSpec, file_sha256, logger, run_whole_stage, stage_task
from tasks.io import load_vocab, pool_truth


def calibrate_spec(reward: RewardConfig, tree_key: str, relevance_key: str, prompts_key: str) -> StageSpec:
    return StageSpec("calibrate_select", {"reward": reward},
                     {"tree": tree_key, "relevance": relevance_key, "prompts": prompts_key})


def parts_spec(reward: RewardConfig, tree_key: str, relevance_key: str) -> StageSpec:
    """Everything of the reward settings but λ: the parts serve every λ."""
    lam_free = {k: v for k, v in dataclasses.asdict(reward).items() if k != "lam"}
    return StageSpec("path_parts", {"reward": lam_free}, {"tree": tree_key, "relevance": relevance_key})


@stage_task(name="path-parts")
def score_path_parts(db: str, reward: RewardConfig, tree_key: str, relevance_key: str) -> str:
    store = open_store(db)
    spec = parts_spec(reward, tree_key, relevance_key)

    def work(key: str) -> None:
        tree = read_scored_tree(store, tree_key, relevance_key)
        rows = []
        for prompt_id, nodes in tree.groupby("prompt_id", sort=True):
            paths = path_parts([scored_node(row) for row in nodes.itertuples()], reward)
            rows += [_parts_row(prompt_id, index, path) for index, path in enumerate(paths)]
        write_path_parts(store, key, pd.DataFrame(rows, columns=PARTS_COLUMNS))

    return run_whole_stage(store, spec, work)


@stage_task(name="calibrate-select")
def calibrate_select(db: str, reward: RewardConfig, tree_key: str, relevance_key: str, prompts_key: str) -> str:
    store = open_store(db)
    spec = calibrate_spec(reward, tree_key, relevance_key, prompts_key)

    def work(key: str) -> None:
        parts_key = score_path_parts.fn(db, reward, tree_key, relevance_key)
        prompt_ids, path_index, table = stored_path_table(store, parts_key)
        rewards = weigh_all(table, reward)
        pairs = select_pairs(table, rewards, reward)
        rounds = prompt_rounds(store, prompts_key)
        pair_prompts = prompt_ids[pairs.chosen]
        n_prompts = int(table.group.max()) + 1 if len(table.group) else 0  # groups number the prompts 0..n-1
        if len(pairs.group) < n_prompts:
            logger().info("%d of %d prompts have fewer than two complete paths: no pair", n_prompts - len(pairs.group),
                          n_prompts)
        write_rescored(store, key, parts_key, pd.DataFrame({
            "prompt_id": prompt_ids, "path_index": path_index, "self_term": rewards.self_term,
            "relevance_term": rewards.relevance_term, "reward": rewards.reward}), pd.DataFrame({
            "prompts_key": prompts_key, "prompt_id": pair_prompts,
            "round": rounds.reindex(pair_prompts).fillna(0).astype(int).to_numpy(), "lam": reward.lam,
            "mode": reward.mode, "chosen_index": path_index[pairs.chosen],
            "rejected_index": path_index[pairs.rejected]}))

    return run_whole_stage(store, spec, work)


_TABLES: dict[tuple[str, str], tuple] = {}  # a complete stage's parts never change: a λ curve reads them once


def stored_path_table(store, parts_key: str) -> tuple[np.ndarray, np.ndarray, PathTable]:
    key = (str(Path(store.path).resolve()), parts_key)
    if key not in _TABLES:
        _TABLES.clear()
        _TABLES[key] = path_table(read_path_parts(store, parts_key))
    return _TABLES[key]


def path_table(parts) -> tuple[np.ndarray, np.ndarray, PathTable]:
    """(prompt id per path, path index per path, the table) from `read_path_parts`'s Arrow table."""
    prompt_ids = parts.column("prompt_id").to_numpy(zero_copy_only=False).astype(object)
    _, group = np.unique(prompt_ids, return_inverse=True)
    return prompt_ids, parts.column("path_index").to_numpy(), PathTable(
        group=group.astype(np.int64), n_sentences=parts.column("n_sentences").to_numpy().astype(np.int64),
        self_parts=_padded(parts.column("self_parts")), relevance_parts=_padded(parts.column("relevance_parts")))


def _padded(column) -> np.ndarray:
    """A list column as a (rows, longest) array, padded with 0."""
    lists = column.combine_chunks()
    offsets = lists.offsets.to_numpy()
    lengths = np.diff(offsets)
    out = np.zeros((len(lengths), int(lengths.max()) if len(lengths) else 0))
    rows = np.repeat(np.arange(len(lengths)), lengths)
    out[rows, np.arange(offsets[-1] - offsets[0]) - np.repeat(offsets[:-1] - offsets[0], lengths)] = \
        lists.values.to_numpy()[offsets[0]:offsets[-1]]
    return out


@stage_task(name="pair-accuracy")
def pair_accuracy(db: str, pairs_key: str, pool_file: str, vocab_path: str) -> str | None:
    """Share of pairs whose chosen response names fewer absent objects than the rejected one.

    Needs ground truth for the pool's images (an "objects" field per prompt row, as the miniature
    world writes); returns None, computing nothing, for pools without it.
    """
    if not Path(pool_file).is_file() or not Path(vocab_path).is_file():
        return None
    truth = pool_truth(pool_file)
    if not truth:
        return None
    store = open_store(db)
    spec = StageSpec("pair_accuracy", {"pool": file_sha256(pool_file)[:16]}, {"pairs": pairs_key})

    def work(key: str) -> None:
        pairs = read_pair_texts(store, pairs_key)
        pairs = pairs[pairs["prompt_id"].isin(truth.keys())]
        result = preference_accuracy(pairs["chosen"].tolist(), pairs["rejected"].tolist(),
                                     [truth[p] for p in pairs["prompt_id"]], load_vocab(vocab_path))
        round_ = int(pairs["round"].iloc[0]) if len(pairs) else 0
        rows = [{"model_key": "", "round": round_, "split": "pairs", "metric": name,
                 "value": float(getattr(result, name)), "n": result.n_pairs}
                for name in ("accuracy", "n_better", "n_tied", "n_worse")]
        replace_stage_rows(store, "eval_results", key, pd.DataFrame(rows))

    return run_whole_stage(store, spec, work)


PARTS_COLUMNS = ["prompt_id", "path_index", "leaf_id", "node_ids", "text", "n_sentences", "self_parts",
                 "relevance_parts"]


def scored_node(row) -> ScoredNode:
    cosine = 0.0 if row.cosine is None or (isinstance(row.cosine, float) and math.isnan(row.cosine)) else row.cosine
    parent = None if row.parent_id is None or pd.isna(row.parent_id) else int(row.parent_id)
    return ScoredNode(node_id=int(row.node_id), parent_id=parent, text=row.text, cum_score=row.cum_score,
                      logprob_sum=row.logprob_sum, token_count=int(row.token_count), is_final=bool(row.is_final),
                      relevance=float(cosine))


def _parts_row(prompt_id: str, index: int, path: PathParts) -> dict:
    return {"prompt_id": prompt_id, "path_index": index, "leaf_id": path.node_ids[-1], "node_ids": list(path.node_ids),
            "text": path.text, "n_sentences": path.n_sentences, "self_parts": list(path.self_parts),
            "relevance_parts": list(path.relevance_parts)}


def pair_row(prompt_id: str, round_: int, prompts_key: str, pair: PreferencePair, lam: float, mode: str) -> dict:
    """A `preference_pairs` row; `lam` and `mode` say what picked the pair (a reward mix, or a control)."""
    return {"prompts_key": prompts_key, "prompt_id": prompt_id, "round": round_, "lam": lam,
            "mode": mode, "chosen": pair.chosen.text, "rejected": pair.rejected.text,
            "chosen_reward": pair.chosen.reward, "rejected_reward": pair.rejected.reward,
            "chosen_nodes": list(pair.chosen.node_ids), "rejected_nodes": list(pair.rejected.node_ids)}
