"""Sentence-level beam tree (CSR step 1).

Root = image + prompt. Each step extends every live node by one sentence with token-level diverse beam search;
all live nodes of all prompts decode together (in chunks of `max_batch_nodes`). Candidates that end the
response (EOS, the token budget, `max_depth` or `max_response_tokens`) stay as final leaves. Of a prompt's new
non-final nodes, pooled across its live parents, the step keeps the `keep_top` best and `keep_bottom` worst by
cumulative self score (`prune_by="self"`, the paper's code) or by cumulative calibrated value
(`prune_by="calibrated"`, the paper's text; needs a relevance callable), once there are at least `prune_min_open`
of them; fewer are all kept. The paper's `sample.py` prunes from 5 open children (its number of sentence beams)
and keeps `new_nodes[:1] + new_nodes[-2:]`.
"""

from __future__ import annotations

from collections import defaultdict
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
) -> dict[str, list[TreeNode]]:
    """Build one sentence tree per prompt. Returns prompt_id -> nodes in creation order (ids unique per prompt).

    `vlm` needs `encode_prefix(image, instruction)`, `search_sentences(prefixes, responses, max_new_tokens,
    params)` and `decode(token_ids)` (see `VLMAdapter`). `progress(depth_done, max_depth)` after each step.
    """
    if cfg.prune_by == "calibrated" and relevance is None:
        raise ValueError("prune_by='calibrated' needs a relevance callable")
    reward_cfg = reward_cfg or RewardConfig()
    if len({p.prompt_id for p in prompts}) != len(prompts):
        raise ValueError("prompt_id values must be unique")
    prefixes = {p.prompt_id: vlm.encode_prefix(p.image, p.instruction) for p in prompts}
    trees = {p.prompt_id: [_root()] for p in prompts}
    live = [_Live(p.prompt_id, trees[p.prompt_id][0], ()) for p in prompts]
    depth = 0
    while live and depth < cfg.max_depth:
        depth += 1
        children = _expand(vlm, prefixes, live, cfg, depth)
        if cfg.prune_by == "calibrated":
            _add_calibrated_values(children, relevance, reward_cfg)
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
        if progress is not None:
            progress(depth, cfg.max_depth)
    return trees


def tree_signature(nodes: Sequence[TreeNode]) -> list[tuple]:
    """A tree's content, blind to node ids: sorted (depth, response tokens from the root, kept, finish reason).

    Two searches over the same model can rank equal-score siblings (diverse beam groups may find the same
    sentence twice) in a different order, e.g. on two devices; their node ids differ, their signatures don't.
    """
    paths: dict[int, tuple[int, ...]] = {}
    for n in nodes:  # creation order: a parent comes before its children
        paths[n.node_id] = (paths[n.parent_id] if n.parent_id is not None else ()) + n.token_ids
    return sorted((n.depth, paths[n.node_id], n.kept, n.finish_reason) for n in nodes)


def _expand(vlm, prefixes, live: list[_Live], cfg: SearchConfig, depth: int) -> list[_Live]:
    """One sentence for every live node, decoded in chunks; children in (parent, candidate) order."""
    children: list[_Live] = []
    for start in range(0, len(live), cfg.max_batch_nodes):
        chunk = live[start : start + cfg.max_batch_nodes]
        budgets = [min(cfg.max_new_tokens, cfg.max_response_tokens - len(p.response)) for p in chunk]
        results = vlm.search_sentences(
            [prefixes[p.prompt_id] for p in chunk], [p.response for p in chunk], budgets, cfg.beam_params
        )
        for parent, candidates in zip(chunk, results):
            children.extend(_child(vlm, parent, c, cfg, depth) for c in candidates)
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
