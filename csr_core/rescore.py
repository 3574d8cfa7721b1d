"""Rewards and chosen/rejected pairs for any λ from stored λ-free path parts, vectorized over all prompts.

The arithmetic and the tie order are those of `reward.weigh` and `reward.select_pair`, operation for
operation: the weighted parts are summed sentence by sentence from the first (a padded position adds an
exact 0.0) and divided once, the reward being the mixed sum in rank mode and self plus relevance in value
mode; the chosen path is the first best of its prompt, the rejected the last worst. So the pairs are the
per-prompt Python path's exactly, ties included; `tests/test_rescore.py` checks it.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from csr_core.reward import PathParts, RewardConfig


@dataclass(frozen=True)
class PathTable:
    """The paths of many prompts: row i is a path of prompt `group[i]`; rows of a prompt are contiguous and
    in path order; `self_parts`/`relevance_parts` are (paths, longest path) arrays padded with 0."""

    group: np.ndarray
    n_sentences: np.ndarray
    self_parts: np.ndarray
    relevance_parts: np.ndarray

    @classmethod
    def from_parts(cls, parts_by_prompt: Sequence[Sequence[PathParts]]) -> PathTable:
        rows = [(g, p) for g, parts in enumerate(parts_by_prompt) for p in parts]
        width = max((p.n_sentences for _, p in rows), default=0)
        self_parts, relevance_parts = np.zeros((len(rows), width)), np.zeros((len(rows), width))
        for i, (_, p) in enumerate(rows):
            self_parts[i, :len(p.self_parts)] = p.self_parts
            relevance_parts[i, :len(p.relevance_parts)] = p.relevance_parts
        return cls(np.array([g for g, _ in rows], dtype=np.int64),
                   np.array([p.n_sentences for _, p in rows], dtype=np.int64), self_parts, relevance_parts)


@dataclass(frozen=True)
class Rewards:
    self_term: np.ndarray
    relevance_term: np.ndarray
    reward: np.ndarray


@dataclass(frozen=True)
class Pairs:
    """Row indices into the table, one pair per prompt that has at least two paths."""

    group: np.ndarray
    chosen: np.ndarray
    rejected: np.ndarray


def weigh_all(table: PathTable, cfg: RewardConfig) -> Rewards:
    if cfg.mode == "rank":
        denominator = table.n_sentences + 1
    elif cfg.aggregate == "mean":
        denominator = np.maximum(table.n_sentences, 1)
    else:
        denominator = np.ones_like(table.n_sentences)
    self_sum = np.zeros(len(table.group))
    relevance_sum = np.zeros(len(table.group))
    mixed_sum = np.zeros(len(table.group))
    for j in range(table.self_parts.shape[1]):  # left to right, as Python's sum() adds
        self_part, relevance_part = (1.0 - cfg.lam) * table.self_parts[:, j], cfg.lam * table.relevance_parts[:, j]
        self_sum = self_sum + self_part
        relevance_sum = relevance_sum + relevance_part
        mixed_sum = mixed_sum + (self_part + relevance_part)
    self_term, relevance_term = self_sum / denominator, relevance_sum / denominator
    reward = mixed_sum / denominator if cfg.mode == "rank" else self_term + relevance_term
    return Rewards(self_term, relevance_term, reward)


def select_pairs(table: PathTable, rewards: Rewards, cfg: RewardConfig) -> Pairs:
    """Per prompt with two paths or more (one, with `dedupe_texts` off): the first best path as chosen, the last
    worst as rejected."""
    goodness = (-1.0 if cfg.mode == "rank" else 1.0) * rewards.reward
    index = np.arange(len(goodness))
    best_first = np.lexsort((index, -goodness, table.group))  # by prompt, best first, earliest first
    worst_first = np.lexsort((-index, goodness, table.group))  # by prompt, worst first, latest first
    starts = np.flatnonzero(np.r_[True, table.group[best_first][1:] != table.group[best_first][:-1]]) \
        if len(goodness) else np.array([], dtype=np.int64)
    sizes = np.diff(np.r_[starts, len(goodness)])
    keep = starts[sizes >= (2 if cfg.dedupe_texts else 1)]
    return Pairs(table.group[best_first[keep]], best_first[keep], worst_first[keep])
