"""Token-level diverse (group) beam search over a step function, for many independent searches at once.

The search follows transformers' beam search (v5 `_beam_search`, which `generate(num_beams=k)` runs) and, with
`num_beam_groups > 1`, the group beam search of transformers 4.46.3 (Vijayakumar et al. 2016), checked on golden
files recorded with it (`tests/test_beam_golden.py`):

- beams are split into `num_beam_groups` groups of `num_beams // num_beam_groups`; each group starts from the
  prompt alone (only its first beam has score 0, the others -1e9);
- at every step the groups are processed in order; group g's log-probs are lowered by
  `diversity_penalty * (number of beams of groups < g that picked the token at this step)` (Hamming diversity);
- each group keeps the top K = max(2, 1 + #stop tokens) * group_size continuations; those among the top
  `group_size` that hit a stop token or the token budget become finished hypotheses with score
  `penalized_logprob_sum / generated_len ** length_penalty` (generated_len counts the stop token), which is
  what transformers returns as `sequences_scores`; the best `group_size` non-finished ones run on;
- a group stops taking hypotheses once it holds `group_size` of them and its best candidate cannot beat the
  worst (transformers' `early_stopping=False` heuristic): with one group, its best running beam (transformers
  5); with several (`group_rules="transformers4"`), its best top-K candidate, a just-finished one included, and
  from then on the group emits the pad token, which later groups' diversity penalty counts (4.46.3's
  `BeamSearchScorer`). `group_rules="csr"` keeps csr's earlier rule for groups: the best running beam, and a
  finished group keeps expanding it. A search ends when all its groups stop or at its token budget.

The model is hidden behind `step_fn(parent_rows, tokens) -> logits`: row i of the next forward continues row
`parent_rows[i]` of the previous forward (of `first_logits` for the first call) with token `tokens[i]`.
That keeps the loop testable with hand-built logits; the adapter implements it with a KV cache.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from csr_core.beams import BeamParams, Candidate

NEG_INF = -1.0e9
StepFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class _Hypothesis:
    score: float
    logprob_sum: float
    token_ids: tuple[int, ...]
    finish_reason: str


def _add_to_pool(pool: list[_Hypothesis], hyp: _Hypothesis, size: int) -> None:
    """Keep the `size` best hypotheses, best first; on ties the earlier one stays ahead."""
    position = len(pool)
    while position > 0 and pool[position - 1].score < hyp.score:
        position -= 1
    pool.insert(position, hyp)
    del pool[size:]


class _SearchState:
    """Running beams of P searches x G groups x B beams, as [P, G, B(, T)] tensors."""

    def __init__(self, num_searches: int, params: BeamParams, device: torch.device):
        shape = (num_searches, params.num_beam_groups, params.group_size)
        self.scores = torch.full(shape, NEG_INF, device=device)
        self.scores[:, :, 0] = 0.0
        self.raw = torch.zeros(shape, device=device)
        self.tokens = torch.zeros(shape + (0,), dtype=torch.long, device=device)

    def select(self, keep: torch.Tensor) -> None:
        self.scores, self.raw, self.tokens = self.scores[keep], self.raw[keep], self.tokens[keep]


def diverse_beam_search(
    first_logits: torch.Tensor,
    step_fn: StepFn,
    params: BeamParams,
    *,
    stop_ids: Sequence[int],
    eos_ids: Sequence[int],
    max_new_tokens: Sequence[int],
    suppress_ids: Sequence[int] = (),
    pad_id: int | None = None,
) -> list[list[Candidate]]:
    """Run one search per row of `first_logits` ([P, vocab], the next-token logits of each context).

    `stop_ids` end a sentence ("delimiter"), `eos_ids` end the response ("eos"); `max_new_tokens[p]` is search
    p's token budget ("length"); `suppress_ids` get log-prob -inf (after the softmax, like transformers'
    `suppress_tokens`). `pad_id` is what a finished group emits under `params.group_rules="transformers4"`
    (the tokenizer's pad token; None: it emits nothing that counts). Returns, per search, its `num_beams`
    candidates sorted by score, best first.
    """
    v4_groups = params.group_rules == "transformers4" and params.num_beam_groups > 1
    num_searches, vocab = first_logits.shape
    if len(max_new_tokens) != num_searches:
        raise ValueError(f"max_new_tokens has {len(max_new_tokens)} entries for {num_searches} searches")
    device = first_logits.device
    eos_set = {int(i) for i in eos_ids}
    stop_tensor = torch.tensor(sorted({int(i) for i in stop_ids} | eos_set), dtype=torch.long, device=device)
    groups, size = params.num_beam_groups, params.group_size
    top_k = min(max(2, 1 + len(stop_tensor)) * size, size * vocab)

    suppress = torch.tensor(sorted(set(suppress_ids)), dtype=torch.long, device=device) if suppress_ids else None
    state = _SearchState(num_searches, params, device)
    pools = [[[] for _ in range(groups)] for _ in range(num_searches)]
    still_improving = torch.ones(num_searches, groups, dtype=torch.bool, device=device)
    active = torch.arange(num_searches, device=device)  # original index of each live search
    budget = torch.tensor([int(m) for m in max_new_tokens], device=device)
    if int(budget.min()) < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {list(max_new_tokens)}")
    logits = first_logits.repeat_interleave(groups * size, dim=0)
    step = 0
    while True:
        step += 1
        log_probs = torch.log_softmax(logits.float(), dim=-1).view(len(active), groups, size, vocab)
        if suppress is not None:
            log_probs[..., suppress] = float("-inf")
        at_limit = budget[active] <= step
        parent, tokens, best_total = _advance_groups(
            log_probs, state, params, stop_tensor, at_limit, top_k,
            on_finish=lambda p, g, hyp, live=active: _add_to_pool(pools[int(live[p])][g], hyp, size),
            may_finish=still_improving[active], eos_set=eos_set, pad_id=pad_id if v4_groups else "running",
        )
        best = best_total if v4_groups else state.scores[:, :, 0]
        still_improving[active] &= _can_improve(best, pools, active, step, params.length_penalty, size)
        done = at_limit | ~still_improving[active].any(dim=1)
        if bool(done.all()):
            break
        keep = (~done).nonzero().squeeze(1)
        state.select(keep)
        rows = _parent_rows(parent[keep], keep, groups, size, first_step=step == 1)
        active = active[keep]
        logits = step_fn(rows.flatten(), tokens[keep].flatten())
    return [_sorted_candidates(search_pools) for search_pools in pools]


def _advance_groups(log_probs, state, params, stop_tensor, at_limit, top_k, *, on_finish, may_finish, eos_set,
                    pad_id):
    """One step for every group of every live search; updates `state` and returns (parent beam, token, each
    group's best top-K total).

    What a finished group adds to later groups' penalty: its running tokens (`pad_id="running"`), the pad
    token (an int), or nothing (None).
    """
    stop_set = set(stop_tensor.tolist())
    num_live, groups, size, vocab = log_probs.shape
    picked = torch.zeros(num_live, vocab, device=log_probs.device)
    new_scores = torch.empty_like(state.scores)
    new_raw = torch.empty_like(state.raw)
    parent = torch.empty(state.scores.shape, dtype=torch.long, device=log_probs.device)
    tokens = torch.empty_like(parent)
    best_total = torch.empty(num_live, groups, device=log_probs.device)
    for g in range(groups):
        penalized = log_probs[:, g] - params.diversity_penalty * picked[:, None, :]
        totals = (penalized + state.scores[:, g, :, None]).view(num_live, size * vocab)
        top_scores, top_index = torch.topk(totals, top_k, dim=1)
        best_total[:, g] = top_scores[:, 0]
        beam, token = top_index // vocab, top_index % vocab
        raw = state.raw[:, g].gather(1, beam) + log_probs[:, g].reshape(num_live, -1).gather(1, top_index)
        stops = torch.isin(token, stop_tensor)
        # At the token budget every candidate finishes, but the running beams are still the best non-stop ones:
        # later groups' diversity penalty counts their tokens (transformers' group beam search does the same).
        running = torch.topk(top_scores + NEG_INF * stops.float(), size, dim=1).indices
        hits = stops | at_limit[:, None]
        new_scores[:, g] = (top_scores + NEG_INF * hits.float()).gather(1, running)
        new_raw[:, g] = raw.gather(1, running)
        parent[:, g] = beam.gather(1, running)
        tokens[:, g] = token.gather(1, running)
        finished = hits[:, :size] & may_finish[:, g, None]
        for p, j in finished.nonzero().tolist():
            hyp = _finished_hypothesis(state, p, g, beam, token, top_scores, raw, j, params, eos_set, stop_set)
            on_finish(p, g, hyp)
        counted = tokens[:, g]
        ones = torch.ones_like(counted, dtype=picked.dtype)
        if pad_id != "running":
            finished_group = ~may_finish[:, g]
            if pad_id is None:
                ones = ones * (~finished_group)[:, None]
            else:
                counted = torch.where(finished_group[:, None], torch.full_like(counted, int(pad_id)), counted)
        picked.scatter_add_(1, counted, ones)
    history = state.tokens.gather(2, parent[..., None].expand(-1, -1, -1, state.tokens.shape[-1]))
    state.tokens = torch.cat([history, tokens[..., None]], dim=-1)
    state.scores, state.raw = new_scores, new_raw
    return parent, tokens, best_total


def _finished_hypothesis(state, p, g, beam, token, top_scores, raw, j, params, eos_set, stop_set) -> _Hypothesis:
    b, tok = int(beam[p, j]), int(token[p, j])
    token_ids = tuple(state.tokens[p, g, b].tolist()) + (tok,)
    reason = "eos" if tok in eos_set else "delimiter" if tok in stop_set else "length"
    score = float(top_scores[p, j]) / len(token_ids) ** params.length_penalty
    return _Hypothesis(score, float(raw[p, j]), token_ids, reason)


def _can_improve(best, pools, active, length, length_penalty, size) -> torch.Tensor:
    """transformers' early_stopping=False heuristic, per (live search, group), from each group's best total."""
    best_running = best / length**length_penalty
    result = torch.ones_like(best_running, dtype=torch.bool)
    for p, search in enumerate(active.tolist()):
        for g, pool in enumerate(pools[search]):
            if len(pool) == size:
                result[p, g] = bool(best_running[p, g] > pool[-1].score)
    return result


def _parent_rows(parent, keep, groups, size, *, first_step) -> torch.Tensor:
    """Rows of the previous forward that the kept beams continue ([P_kept, G, B])."""
    if first_step:
        return keep[:, None, None].expand_as(parent).clone()
    group_offset = torch.arange(groups, device=parent.device)[None, :, None] * size
    return (keep[:, None, None] * groups * size) + group_offset + parent


def _sorted_candidates(group_pools: list[list[_Hypothesis]]) -> list[Candidate]:
    hyps = [h for pool in group_pools for h in pool]
    hyps.sort(key=lambda h: -h.score)  # stable: group order, then rank, on ties
    return [Candidate(h.token_ids, h.logprob_sum, h.score, h.finish_reason) for h in hyps]
