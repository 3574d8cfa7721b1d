"""Sentence-level beam tree (CSR step 1).

Root = image + prompt. Each step extends every live node by one sentence with token-level diverse beam search;
all live nodes of all prompts decode together (in chunks of `max_batch_nodes`, or, given a KV budget, in batches
packed to it while prompts enter the search in waves: see `build_trees`). Candidates that end the
response (EOS, the token budget, `max_depth` or `max_response_tokens`) stay as final leaves. Of a prompt's new
non-final nodes, pooled across its live parents, the step keeps the `keep_top` best and `keep_bottom` worst by
cumulative self score (`prune_by="self"`, the paper's code) or by cumulative calibrated value
(`prune_by="calibrated"`, the paper's text; needs a relevance callable), once there are at least `prune_min_open`
of them; fewer are all kept. The paper's `sample.py` prunes from 5 open children (its number of sentence beams)
and keeps `new_nodes[:1] + new_nodes[-2:]`.
"""

from __future__ import annotations

import logging
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PIL import Image

from csr_core.beams import BeamParams, Candidate
from csr_core.reward import RewardConfig, ScoredNode, sentence_value
from csr_core.validation import ConfigError, require, require_choice

PRUNE_MODES = ("self", "calibrated")
DELIMITERS = ("suffix", "period")
BEAM_FIELDS = {"num_beams": "num_token_beams"}  # BeamParams field -> SearchConfig field
RelevanceFn = Callable[[list[str], list[str]], list[float]]
log = logging.getLogger("csr")


@dataclass(frozen=True)
class SearchConfig:  # defaults = the paper's code
    num_token_beams: int = 5
    num_beam_groups: int = 5
    diversity_penalty: float = 3.0
    max_new_tokens: int = 70  # per sentence
    keep_top: int = 1
    keep_bottom: int = 2
    prune_min_open: int = 5  # top/bottom pruning applies from this many open children (the paper's 5 beams)
    delimiters: str = "suffix"  # "suffix": every token ending in "."; "period": the "." token only (the paper)
    group_rules: str = "transformers4"  # how beam groups finish: as transformers 4.46.3 (the paper's) or "csr"
    # True: EOS ends the response, and a sentence cut by max_new_tokens ends it too. False, the paper's code:
    # EOS is an ordinary token within a sentence (generation runs on to the next delimiter), a node is final
    # when EOS appears in it, and a cut sentence is extended like any other.
    stop_at_eos: bool = True
    max_depth: int = 12  # sentences
    max_response_tokens: int = 400
    length_penalty: float = 1.0
    prune_by: str = "self"  # "self" | "calibrated"
    max_batch_nodes: int = 64  # live nodes decoded per forward (memory bound)

    def __post_init__(self):
        for name in ("max_new_tokens", "max_depth", "max_response_tokens", "max_batch_nodes", "prune_min_open"):
            require(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        try:
            self.beam_params  # noqa: B018 - BeamParams checks the token-level beam settings
        except ConfigError as exc:
            raise ConfigError(BEAM_FIELDS.get(exc.field, exc.field), exc.why) from None
        for name in ("keep_top", "keep_bottom"):
            require(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
        require(self.keep_top + self.keep_bottom >= 1, "keep_bottom", "keep_top + keep_bottom must be >= 1")
        require_choice(self.prune_by, "prune_by", PRUNE_MODES)
        require_choice(self.delimiters, "delimiters", DELIMITERS)

    @property
    def beam_params(self) -> BeamParams:
        return BeamParams(self.num_token_beams, self.num_beam_groups, self.diversity_penalty, self.length_penalty,
                          self.group_rules)


@dataclass(frozen=True)
class PromptInput:
    prompt_id: str
    image: Image.Image
    instruction: str  # may contain "<image>"; the adapter places the image per the chat template


@dataclass(frozen=True)
class TreeNode:
    node_id: int  # root: node_id 0, parent None, depth 0, text ""
    parent_id: int | None
    depth: int
    text: str  # this node's sentence (decoded)
    token_ids: tuple[int, ...]
    token_count: int
    logprob_sum: float  # raw sum of token log-probs
    score: float  # sequences_scores (penalized logprob_sum / token_count ** length_penalty)
    cum_score: float
    is_final: bool
    finish_reason: str  # "delimiter" | "eos" | "length" | "" (root)
    kept: bool  # False = pruned (subtree dropped); live nodes, final leaves and the root are kept


@dataclass
class _Live:
    prompt_id: str
    node: TreeNode
    response: tuple[int, ...]  # all tokens from the root to this node
    calibrated: float = 0.0  # cumulative calibrated value, for prune_by="calibrated"


def _root() -> TreeNode:
    return TreeNode(0, None, 0, "", (), 0, 0.0, 0.0, 0.0, False, "", True)


def build_trees(
    vlm,
    prompts: Sequence[PromptInput],
    cfg: SearchConfig,
    *,
    relevance: RelevanceFn | None = None,
    reward_cfg: RewardConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
    kv_budget_bytes: int | None = None,
) -> dict[str, list[TreeNode]]:
    """Build one sentence tree per prompt. Returns prompt_id -> nodes in creation order (ids unique per prompt).

    `vlm` needs `encode_prefix(image, instruction)`, `search_sentences(prefixes, responses, max_new_tokens,
    params)` and `decode(token_ids)` (see `VLMAdapter`).

    Without `kv_budget_bytes`, every prompt's prefix is encoded first and each step decodes all live nodes in
    batches of `cfg.max_batch_nodes`; `progress(depth_done, max_depth)` after each step.

    With it, the adapter also needs `prefix_kv_bytes(prefix)` and `batch_kv_bytes(prefixes, responses,
    max_new_tokens, params)` (what a `search_sentences` call allocates; it must grow with the batch), and the
    prefixes held for the prompts in flight plus each batch's allocation stay within the budget. Before each
    step, prompts enter in order while the held prefixes and all live nodes as one batch fit, leaving room for
    the next prompt's prefix, which is encoded ahead (the first prompt always enters); the step's live nodes
    decode in batches packed greedily, in order, to what the held prefixes leave (`max_batch_nodes` plays no
    part); a finished tree frees its prefix for the next prompts. A prompt's tree depends only on its own prefix
    and nodes, so the trees are the unbudgeted search's. A node (or a first prompt) over the budget still runs,
    alone, with one warning a call. `progress(trees_done, prompts)` after each step.
    """
    if cfg.prune_by == "calibrated" and relevance is None:
        raise ValueError("prune_by='calibrated' needs a relevance callable")
    if kv_budget_bytes is not None and kv_budget_bytes <= 0:
        raise ValueError(f"kv_budget_bytes must be positive (None: no budget), got {kv_budget_bytes}")
    reward_cfg = reward_cfg or RewardConfig()
    if len({p.prompt_id for p in prompts}) != len(prompts):
        raise ValueError("prompt_id values must be unique")
    trees = {p.prompt_id: [_root()] for p in prompts}
    budget = None if kv_budget_bytes is None else _Budget(vlm, cfg, kv_budget_bytes)
    if budget is None:
        prefixes = {p.prompt_id: vlm.encode_prefix(p.image, p.instruction) for p in prompts}
        live = [_Live(p.prompt_id, trees[p.prompt_id][0], ()) for p in prompts]
    else:
        prefixes, live = budget.prefixes, []
    waiting = deque(prompts if budget is not None else ())
    depth = done = 0
    while live or waiting:
        if budget is not None:
            live += budget.admit(waiting, live, trees)
        depth += 1
        batches = _count_batches(live, cfg) if budget is None else budget.batches(live)
        children = _expand(vlm, prefixes, live, cfg, batches)
        if cfg.prune_by == "calibrated":
            _add_calibrated_values(children, relevance, reward_cfg)
        expanded = {p.prompt_id for p in live}
        live = []
        for prompt_id, group in _by_prompt(children).items():
            kept = _prune(group, cfg)
            for child in group:
                node = child.node
                child.node = TreeNode(**{**node.__dict__, "node_id": len(trees[prompt_id]),
                                         "kept": node.is_final or id(child) in kept})
                trees[prompt_id].append(child.node)
                if id(child) in kept:
                    live.append(child)
        finished = expanded - {p.prompt_id for p in live}
        done += len(finished)
        if budget is not None:
            budget.release(finished)
        if progress is not None:
            progress(*((depth, cfg.max_depth) if budget is None else (done, len(prompts))))
    return trees


class _Budget:
    """Which prompts are in flight and how a step's nodes batch under a KV budget (see `build_trees`)."""

    def __init__(self, vlm, cfg: SearchConfig, budget: int):
        for name in ("prefix_kv_bytes", "batch_kv_bytes"):
            if not callable(getattr(vlm, name, None)):
                raise TypeError(f"a KV budget needs vlm.{name} ({type(vlm).__name__} has none)")
        self.vlm, self.cfg, self.budget = vlm, cfg, budget
        self.prefixes: dict = {}  # prompt_id -> prefix, of the prompts in flight and the next one waiting
        self.held = 0  # their bytes
        self.largest = 0  # the largest prefix's bytes so far
        self.warned = False

    def admit(self, waiting: deque, live: list[_Live], trees) -> list[_Live]:
        """Roots of the next prompts that fit beside the live nodes. The next prompt is encoded before it can be
        admitted and then held while it waits, so each admission leaves room for one more prefix (the largest
        seen) while prompts remain after it; batches pack to what the held prefixes really leave."""
        admitted: list[_Live] = []
        while waiting:
            prompt = waiting[0]
            if prompt.prompt_id not in self.prefixes:
                prefix = self.vlm.encode_prefix(prompt.image, prompt.instruction)
                self.prefixes[prompt.prompt_id] = prefix
                size = self.vlm.prefix_kv_bytes(prefix)
                self.held += size
                self.largest = max(self.largest, size)
            root = _Live(prompt.prompt_id, trees[prompt.prompt_id][0], ())
            in_flight = live + admitted
            cost = self.held + self.cost([*in_flight, root])
            if in_flight and cost + (self.largest if len(waiting) > 1 else 0) > self.budget:
                break
            if cost > self.budget:
                self.warn(f"one prompt's prefix and root need {cost} bytes of KV")
            admitted.append(root)
            waiting.popleft()
        return admitted

    def batches(self, live: list[_Live]) -> list[list[_Live]]:
        """`live` cut in order into the longest batches whose cost fits what the held prefixes leave."""
        room = self.budget - self.held
        batches, start = [], 0
        while start < len(live):
            low, high = start + 1, len(live)  # the longest fitting batch ends in [low, high]; one node always runs
            while low < high:
                middle = (low + high + 1) // 2
                if self.cost(live[start:middle]) <= room:
                    low = middle
                else:
                    high = middle - 1
            if low == start + 1 and self.cost(live[start:low]) > room:
                self.warn(f"one node needs {self.cost(live[start:low])} bytes of KV beside {self.held} bytes of "
                          "held prefixes")
            batches.append(live[start:low])
            start = low
        return batches

    def release(self, prompt_ids) -> None:
        for prompt_id in prompt_ids:
            self.held -= self.vlm.prefix_kv_bytes(self.prefixes.pop(prompt_id))

    def cost(self, nodes: list[_Live]) -> int:
        return self.vlm.batch_kv_bytes([self.prefixes[n.prompt_id] for n in nodes], [n.response for n in nodes],
                                       _budgets(nodes, self.cfg), self.cfg.beam_params)

    def warn(self, what: str) -> None:
        if not self.warned:
            log.warning("search: %s, more than the KV budget of %d bytes (runtime.kv_budget_gb); it runs alone "
                        "(warned once a chunk)", what, self.budget)
            self.warned = True


def tree_signature(nodes: Sequence[TreeNode]) -> list[tuple]:
    """A tree's content, blind to node ids: sorted (depth, response tokens from the root, kept, finish reason).

    Two searches over the same model can rank equal-score siblings (diverse beam groups may find the same
    sentence twice) in a different order, e.g. on two devices; their node ids differ, their signatures don't.
    """
    paths: dict[int, tuple[int, ...]] = {}
    for n in nodes:  # creation order: a parent comes before its children
        paths[n.node_id] = (paths[n.parent_id] if n.parent_id is not None else ()) + n.token_ids
    return sorted((n.depth, paths[n.node_id], n.kept, n.finish_reason) for n in nodes)


def _count_batches(live: list[_Live], cfg: SearchConfig) -> list[list[_Live]]:
    return [live[start : start + cfg.max_batch_nodes] for start in range(0, len(live), cfg.max_batch_nodes)]


def _budgets(nodes: list[_Live], cfg: SearchConfig) -> list[int]:
    """Each node's token budget for its next sentence."""
    return [min(cfg.max_new_tokens, cfg.max_response_tokens - len(p.response)) for p in nodes]


def _expand(vlm, prefixes, live: list[_Live], cfg: SearchConfig, batches: list[list[_Live]]) -> list[_Live]:
    """One sentence for every live node, decoded in `batches` (`live` cut in order); children in (parent,
    candidate) order. A child's depth is its parent's plus one."""
    children: list[_Live] = []
    for chunk in batches:
        results = vlm.search_sentences(
            [prefixes[p.prompt_id] for p in chunk], [p.response for p in chunk], _budgets(chunk, cfg),
            cfg.beam_params,
        )
        for parent, candidates in zip(chunk, results):
            children.extend(_child(vlm, parent, c, cfg, parent.node.depth + 1) for c in candidates)
    return children


def _child(vlm, parent: _Live, cand: Candidate, cfg: SearchConfig, depth: int) -> _Live:
    response = parent.response + cand.token_ids
    if cfg.stop_at_eos:
        ends_response = cand.finish_reason in ("eos", "length")
    else:
        ends_response = any(t in vlm.eos_ids for t in cand.token_ids)
    is_final = ends_response or depth >= cfg.max_depth or len(response) >= cfg.max_response_tokens
    node = TreeNode(
        node_id=-1, parent_id=parent.node.node_id, depth=depth, text=vlm.decode(cand.token_ids),
        token_ids=cand.token_ids, token_count=len(cand.token_ids), logprob_sum=cand.logprob_sum,
        score=cand.score, cum_score=parent.node.cum_score + cand.score, is_final=is_final,
        finish_reason=cand.finish_reason, kept=False,
    )
    return _Live(parent.prompt_id, node, response, parent.calibrated)


def _add_calibrated_values(children: list[_Live], relevance: RelevanceFn, reward_cfg: RewardConfig) -> None:
    cosines = relevance([c.prompt_id for c in children], [c.node.text for c in children])
    for child, cos in zip(children, cosines):
        n = child.node
        scored = ScoredNode(n.node_id, n.parent_id, n.text, n.cum_score, n.logprob_sum, n.token_count,
                            n.is_final, float(cos))
        self_part, relevance_part = sentence_value(scored, reward_cfg)
        child.calibrated += self_part + relevance_part


def _by_prompt(children: list[_Live]) -> dict[str, list[_Live]]:
    groups: dict[str, list[_Live]] = defaultdict(list)
    for child in children:
        groups[child.prompt_id].append(child)
    return groups


def _prune(group: list[_Live], cfg: SearchConfig) -> set[int]:
    """ids (Python object ids) of the non-final children kept: top keep_top and bottom keep_bottom."""
    open_nodes = [c for c in group if not c.node.is_final]
    if len(open_nodes) < cfg.prune_min_open:
        return {id(c) for c in open_nodes}

    def key(c: _Live) -> float:
        return c.calibrated if cfg.prune_by == "calibrated" else c.node.cum_score

    ranked = sorted(open_nodes, key=lambda c: -key(c))  # stable: creation order on ties
    chosen = ranked[: cfg.keep_top] + (ranked[-cfg.keep_bottom :] if cfg.keep_bottom else [])
    return {id(c) for c in chosen}
