"""Calibrated rewards over a sentence tree and chosen/rejected selection (CSR steps 2-3).

Two documented modes, over complete paths only (root -> final leaf, no filtered sentence on the way):

- `rank` (the paper's code). Among the siblings of each node (same parent, filtered ones left out), rank once by
  cumulative self score (higher is better) and once by image relevance (higher is better):
  rank_j = j / n for the j-th best of n siblings, so 1/n is best. A path's reward is
  sum over its sentences of ((1 - lam) * rank_T + lam * rank_I), accumulated sentence by sentence and divided
  once by (its number of sentences + 1), the +1 counting the root, as the paper's `construct.py` computes it.
  Lower is better: the lowest path is chosen, the highest rejected.
- `value` (the paper's text). Per sentence R = lam * R_I + (1 - lam) * R_T with R_I = max(100 * cos, 0) and
  R_T the sentence's probability (`self_reward`: "token_prob" = exp(logprob_sum / token_count), the
  geometric-mean token probability, so long sentences are not crushed; "prob" = exp(logprob_sum)); a path's
  reward is the sum over its sentences (`aggregate="sum"`, the paper's text) or their mean (`aggregate="mean"`).
  Higher is better. A sum grows with every sentence whose reward is positive, so it prefers the response that
  goes on to name one more (possibly absent) object; the mean prefers stopping when the extra sentence scores
  below the response's average, which is what an appended hallucination does.

Degenerate sentences are filtered (see `filter_reason`); a filtered sentence drops its whole subtree.
Paths are listed in depth-first order, children in the order the search made them (`path_order="dfs"`, the
paper's `dfs`), or in the order their leaves were made (`"leaf"`); ties go to the first best path as chosen and
the last worst as rejected, as the paper's stable sort does. `dedupe_texts` (on) keeps one path per text and
makes no pair from fewer than two; off reproduces the paper's code, pairs of identical texts included.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

from csr_core.validation import require, require_choice

MODES = ("rank", "value")
SELF_REWARDS = ("token_prob", "prob")
AGGREGATES = ("sum", "mean")
PATH_ORDERS = ("dfs", "leaf")


@dataclass(frozen=True)
class RewardConfig:
    lam: float = 0.9  # weight of image relevance
    mode: str = "rank"  # "rank" | "value"
    self_reward: str = "token_prob"  # value mode: "token_prob" | "prob"
    aggregate: str = "sum"  # value mode: a path's reward is the "sum" or the "mean" of its sentences' rewards
    min_chars: int = 4  # sentences shorter than this (stripped) are degenerate
    max_word_repeat: int = 3  # a word repeated this many times in a row is degenerate
    min_alpha_ratio: float = 0.5  # fewer letters than this among non-space characters: a non-text run
    path_order: str = "dfs"  # "dfs" (the paper's code) | "leaf" (leaf creation order): the tie order
    dedupe_texts: bool = True  # one path per text, no pair of identical texts (off: the paper's code)

    def __post_init__(self):
        require(0.0 <= self.lam <= 1.0, "lam", f"must be in [0, 1], got {self.lam}")
        require_choice(self.mode, "mode", MODES)
        require_choice(self.self_reward, "self_reward", SELF_REWARDS)
        require_choice(self.aggregate, "aggregate", AGGREGATES)
        require(self.min_chars >= 0, "min_chars", f"must be >= 0, got {self.min_chars}")
        require(self.max_word_repeat >= 2, "max_word_repeat", f"must be >= 2, got {self.max_word_repeat}")
        require(0.0 <= self.min_alpha_ratio <= 1.0, "min_alpha_ratio", f"must be in [0, 1], got {self.min_alpha_ratio}")
        require_choice(self.path_order, "path_order", PATH_ORDERS)


@dataclass(frozen=True)
class ScoredNode:
    node_id: int
    parent_id: int | None
    text: str
    cum_score: float
    logprob_sum: float
    token_count: int
    is_final: bool
    relevance: float  # raw cosine


@dataclass(frozen=True)
class PathReward:
    node_ids: tuple[int, ...]  # root first
    reward: float
    n_sentences: int
    text: str
    self_term: float  # reward = self_term + relevance_term
    relevance_term: float


@dataclass(frozen=True)
class PathParts:
    """A complete path's λ-free parts: per sentence, the self and relevance terms before weighting.

    rank mode: (rank by cumulative self score, rank by relevance) among the sentence's siblings;
    value mode: (R_T, R_I). Any λ then gives the path's reward with `weigh`, no tree needed.
    """

    node_ids: tuple[int, ...]  # root first
    n_sentences: int
    text: str
    self_parts: tuple[float, ...]
    relevance_parts: tuple[float, ...]


@dataclass(frozen=True)
class PreferencePair:
    chosen: PathReward
    rejected: PathReward


def relevance_reward(cos: float) -> float:
    """R_I = max(100 * cos, 0)."""
    return max(100.0 * cos, 0.0)


_WORD = re.compile(r"[A-Za-z']+")


def filter_reason(text: str, cfg: RewardConfig) -> str | None:
    """Why a sentence is degenerate ("too_short", "repeated_words", "non_text"), or None if it is fine."""
    stripped = text.strip()
    if len(stripped) < cfg.min_chars:
        return "too_short"
    words = [w.lower() for w in _WORD.findall(stripped)]
    run = 1
    for previous, word in pairwise(words):
        run = run + 1 if word == previous else 1
        if run >= cfg.max_word_repeat:
            return "repeated_words"
    visible = [c for c in stripped if not c.isspace()]
    if sum(c.isalpha() for c in visible) < cfg.min_alpha_ratio * len(visible):
        return "non_text"
    return None


def self_reward(node: ScoredNode, cfg: RewardConfig) -> float:
    """R_T of one sentence for the value mode."""
    if cfg.self_reward == "prob":
        return math.exp(node.logprob_sum)
    return math.exp(node.logprob_sum / max(node.token_count, 1))


def sentence_value(node: ScoredNode, cfg: RewardConfig) -> tuple[float, float]:
    """(weighted self part, weighted relevance part) of one sentence in the value mode."""
    return (1.0 - cfg.lam) * self_reward(node, cfg), cfg.lam * relevance_reward(node.relevance)


def score_paths(nodes: Sequence[ScoredNode], cfg: RewardConfig) -> list[PathReward]:
    """Rewards of all complete, unfiltered paths, in the order their leaves were created (`path_parts`, weighed)."""
    return [weigh(parts, cfg) for parts in path_parts(nodes, cfg)]


def weigh(parts: PathParts, cfg: RewardConfig) -> PathReward:
    """A path's reward under `cfg.lam`: the weighted parts summed over its sentences, divided once.

    rank mode divides by (sentences + 1), the +1 counting the root as the paper's code does; value mode by the
    number of sentences (`aggregate="mean"`) or 1 (`"sum"`).
    """
    if cfg.mode == "rank":
        denominator = parts.n_sentences + 1
    else:
        denominator = max(parts.n_sentences, 1) if cfg.aggregate == "mean" else 1
    self_term = sum((1.0 - cfg.lam) * x for x in parts.self_parts) / denominator
    relevance_term = sum(cfg.lam * x for x in parts.relevance_parts) / denominator
    if cfg.mode == "rank":  # the paper's arithmetic: one sum of mixed sentence terms, one division
        reward = sum((1.0 - cfg.lam) * a + cfg.lam * b for a, b in zip(parts.self_parts, parts.relevance_parts))
        reward /= denominator
    else:
        reward = self_term + relevance_term
    return PathReward(node_ids=parts.node_ids, reward=reward, n_sentences=parts.n_sentences,
                      text=parts.text, self_term=self_term, relevance_term=relevance_term)


def path_parts(nodes: Sequence[ScoredNode], cfg: RewardConfig) -> list[PathParts]:
    """λ-free parts of all complete, unfiltered paths, in the order their leaves were created.

    Pass every node of the tree (pruned ones too) so that ranks are taken among all generated siblings; the
    root is the node whose parent_id is None. A final node with no text (the model emitted EOS right away)
    ends its parent's response: it is no sentence, takes no rank, and is never filtered. Paths with the same
    text are kept once (the first), so a chosen and a rejected path always differ in text.
    """
    by_id = {n.node_id: n for n in nodes}
    order = {n.node_id: i for i, n in enumerate(nodes)}
    valid = {n.node_id for n in nodes
             if n.parent_id is None or _is_terminator(n) or filter_reason(n.text, cfg) is None}
    ranks = _sibling_ranks(nodes, valid, order) if cfg.mode == "rank" else {}
    paths: list[PathParts] = []
    seen: set[str] = set()
    for leaf in _leaves(nodes, cfg.path_order):
        chain = _chain(leaf, by_id)
        if chain is None or not all(n.node_id in valid for n in chain):
            continue
        path = _path_parts(chain, ranks, cfg)
        if path.n_sentences and not (cfg.dedupe_texts and path.text in seen):
            seen.add(path.text)
            paths.append(path)
    return paths


def _leaves(nodes: Sequence[ScoredNode], path_order: str) -> list[ScoredNode]:
    """The final nodes, in leaf creation order or depth-first (children in creation order)."""
    finals = [n for n in nodes if n.is_final and n.parent_id is not None]
    if path_order == "leaf":
        return finals
    children = defaultdict(list)
    for n in nodes:
        if n.parent_id is not None:
            children[n.parent_id].append(n)
    ordered, stack = [], [n for n in nodes if n.parent_id is None][::-1]
    while stack:
        node = stack.pop()
        if node.is_final and node.parent_id is not None:
            ordered.append(node)
        stack.extend(children[node.node_id][::-1])
    return ordered


def _is_terminator(node: ScoredNode) -> bool:
    return node.is_final and not node.text.strip()


def _chain(leaf: ScoredNode, by_id: dict[int, ScoredNode]) -> list[ScoredNode] | None:
    chain = [leaf]
    while chain[-1].parent_id is not None:
        parent = by_id.get(chain[-1].parent_id)
        if parent is None:
            return None
        chain.append(parent)
    return chain[::-1]


def _sibling_ranks(nodes, valid, order) -> dict[int, tuple[float, float]]:
    """node_id -> (rank by cumulative self score, rank by relevance) among its valid siblings."""
    siblings = defaultdict(list)
    for n in nodes:
        if n.parent_id is not None and n.node_id in valid and not _is_terminator(n):
            siblings[n.parent_id].append(n)
    ranks = {}
    for group in siblings.values():
        by_self = sorted(group, key=lambda n: (-n.cum_score, order[n.node_id]))
        by_relevance = sorted(group, key=lambda n: (-n.relevance, order[n.node_id]))
        size = len(group)
        self_rank = {n.node_id: (j + 1) / size for j, n in enumerate(by_self)}
        relevance_rank = {n.node_id: (j + 1) / size for j, n in enumerate(by_relevance)}
        for n in group:
            ranks[n.node_id] = (self_rank[n.node_id], relevance_rank[n.node_id])
    return ranks


def _path_parts(chain: list[ScoredNode], ranks, cfg: RewardConfig) -> PathParts:
    sentences = [n for n in chain[1:] if not _is_terminator(n)]
    if cfg.mode == "rank":
        pairs = [ranks[n.node_id] for n in sentences]
    else:
        pairs = [(self_reward(n, cfg), relevance_reward(n.relevance)) for n in sentences]
    return PathParts(
        node_ids=tuple(n.node_id for n in chain),
        n_sentences=len(sentences),
        text=" ".join(n.text.strip() for n in sentences if n.text.strip()),
        self_parts=tuple(p[0] for p in pairs),
        relevance_parts=tuple(p[1] for p in pairs),
    )


def select_pair(paths: Sequence[PathReward], cfg: RewardConfig) -> PreferencePair | None:
    """Best path as chosen, worst as rejected: the first best one and the last worst one, as the paper's stable
    sort picks them, so they differ whenever two paths exist. None with fewer than two paths (with
    `dedupe_texts` off, as in the paper's code, one path makes a pair with itself).

    rank mode: lower reward is better; value mode: higher is better.
    """
    if len(paths) < (2 if cfg.dedupe_texts else 1):
        return None
    sign = -1.0 if cfg.mode == "rank" else 1.0
    goodness = [sign * p.reward for p in paths]
    chosen_index = max(range(len(paths)), key=lambda i: (goodness[i], -i))
    rejected_index = min(range(len(paths)), key=lambda i: (goodness[i], -i))
    return PreferencePair(chosen=paths[chosen_index], rejected=paths[rejected_index])
