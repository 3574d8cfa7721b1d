"""Shared-prefix tree decoding for the sentence search: `PrefixSharedBatch`, a drop-in for `vlm.NodeBatch`.

`NodeBatch` gives every batch row (one beam of one tree node) its own copy of its prompt's prefix KV, so each
decode step concatenates and beam-reorders prefix and tail alike. Here each layer's KV cache is two tensors:

- the prompt prefixes (image + prompt minus its last token, `PrefixState.kv`): once per distinct prompt (by
  identity), `(P, kv, Lp, D)`, right-padded to the longest prefix;
- the node buffer, one row per tree node, `(N, kv, Ln + S * T, D)`: the node tail (the prompt's last token + the
  node's response so far, left-padded to Ln) that `prefill` computes, then its S beam slots' new tokens
  interleaved step by step (slot s's token of step t at column `Ln + t * S + s`), written in place; T (columns
  per slot) doubles when full.

A beam reorder moves no keys or values: an index (`TreeCache.ancestors`) records, for every beam and earlier
step, the slot of the ancestor whose token it continues, and the beam's mask shows those columns only, so beams
with a common history share its KV. (Only if a node gains more beams than it has slots are its columns laid out
again.) Nodes whose search has ended, and prompts without a live node, stay stored until a quarter of the stored
ones are dead; then the live ones are copied into smaller tensors.

A row's query attends to its prompt's prefix as one query block per prompt (one batched product over prompts,
padding masked) and to its node buffer as one block per node (the tail, and of the new tokens its ancestors'
only); the two partial softmaxes are merged exactly by their log-sum-exps. During `prefill` (one row per node)
the second part is the node tail itself, causal. That is transformers' own attention interface, so the model's
decoder layers, RoPE and MLPs run unchanged: `TreeCache` is the `Cache` their `cache.update` writes into, and
`tree_attention`, registered as the attention implementation "csr_tree", is what the text model's config names
for the duration of each forward pass (the vision tower keeps its own). transformers builds no mask for an
implementation it does not know; the layout masks itself.

What it knows: GQA (query head h reads kv head h // (heads / kv_heads)), the layer's `scaling`, attention logit
softcapping when a layer passes `softcap` (Gemma 2; Gemma 3's layers pass none), positions given explicitly (2-D,
or Qwen's 3-D with all three equal after the image). What it does not know: sliding windows. A model with
sliding-window layers runs only while no row outgrows the window (the window then hides nothing, so full attention
is exact): the constructor raises `SlidingWindowError` when `max_new_tokens` shows a row could, or when the caller
asks for `NodeBatch`'s `contiguous` layout (its sign that one could), and attention raises it if a row does; the
caller keeps `NodeBatch` for those batches.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.cache_utils import Cache, CacheLayerMixin

from csr_core.adapters.vlm import PrefixState, pad_right, sliding_window

TREE_ATTENTION = "csr_tree"
# torch's CPU flash-attention kernel, which also returns the log-sum-exp (None: the plain matmul path everywhere)
FUSED_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
MIN_BEAM_COLUMNS = 16
COMPACT_WHEN_DEAD = 0.25  # share of stored nodes (prompts) whose death makes the cache copy out the live ones


class SlidingWindowError(ValueError):
    """A sliding-window layer could hide tokens from a row: the shared layout cannot apply the window."""


def ranks(group_of_row: torch.Tensor) -> torch.Tensor:
    """Each row's index among the rows of its group, in row order."""
    rows = torch.argsort(group_of_row, stable=True)
    counts = torch.bincount(group_of_row)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(group_of_row)
    rank[rows] = torch.arange(len(rows)) - starts[group_of_row[rows]]
    return rank


@dataclass(frozen=True)
class Groups:
    """Rows arranged as one query block per group (prompt or node): row r sits at block slot
    `group[r] * width + rank[r]`. `order[slot]` is the row there (empty slots repeat row 0), `slot[row]` the
    inverse; both None when rows already come in that order with no empty slot."""

    count: int
    width: int
    order: torch.Tensor | None = None
    slot: torch.Tensor | None = None

    @classmethod
    def of(cls, group_of_row: torch.Tensor, count: int, device, rank: torch.Tensor | None = None,
           width: int | None = None) -> Groups:
        rank = ranks(group_of_row) if rank is None else rank
        width = int(rank.max()) + 1 if width is None else width
        slots = group_of_row * width + rank
        if count * width == len(slots) and bool((slots == torch.arange(len(slots))).all()):
            return cls(count, width)
        order = torch.zeros(count * width, dtype=torch.long)
        order[slots] = torch.arange(len(slots))
        return cls(count, width, order.to(device), slots.to(device))

    def blocks(self, rows: torch.Tensor) -> torch.Tensor:
        """(B, kv, M, D) per-row queries -> (count, kv, width * M, D) query blocks."""
        if self.order is not None:
            rows = rows.index_select(0, self.order)
        if self.width == 1:
            return rows
        _, kv, m, d = rows.shape
        return rows.view(self.count, self.width, kv, m, d).transpose(1, 2).reshape(self.count, kv, self.width * m, d)

    def rows(self, blocks: torch.Tensor) -> torch.Tensor:
        """Inverse of `blocks`: (count, kv, width * M, X) -> (B, kv, M, X)."""
        if self.width > 1:
            count, kv, wm, x = blocks.shape
            m = wm // self.width
            blocks = blocks.view(count, kv, self.width, m, x).transpose(1, 2).reshape(count * self.width, kv, m, x)
        return blocks if self.slot is None else blocks.index_select(0, self.slot)


@dataclass
class Segment:
    """Keys and values shared by the rows of each group, (groups, kv, L, D), and their additive key mask
    (groups, 1, 1, L) or None."""

    keys: torch.Tensor
    values: torch.Tensor
    bias: torch.Tensor | None

    def select(self, keep: torch.Tensor) -> Segment:
        bias = None if self.bias is None else self.bias.index_select(0, keep)
        return Segment(self.keys.index_select(0, keep), self.values.index_select(0, keep), bias)


def attend(query, keys, values, bias, scaling: float, softcap: float | None = None):
    """Softmax attention of queries (..., M, D) over keys (..., L, D) with an additive mask: (output (..., M, D),
    log-sum-exp of the scores (..., M, 1)). On CPU without softcapping torch's fused flash kernel does both;
    otherwise two matmuls around a softmax."""
    if FUSED_CPU is not None and softcap is None and query.device.type == "cpu":
        out, lse = FUSED_CPU(query, keys, values, attn_mask=bias, scale=scaling)
        return out, lse[..., None]
    scores = torch.matmul(query, keys.transpose(-1, -2)).float()
    if softcap is not None:
        scores = torch.tanh(scores.mul_(scaling / softcap)).mul_(softcap)
    else:
        scores.mul_(scaling)
    if bias is not None:
        scores.add_(bias)
    weights = torch.softmax(scores, dim=-1)
    # log-sum-exp = top score - log(its weight): exact, and one fused softmax instead of a second exp pass
    lse = scores.amax(dim=-1, keepdim=True) - weights.amax(dim=-1, keepdim=True).log()
    return torch.matmul(weights.to(values.dtype), values), lse


def merge(parts: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Exact softmax attention over the union of disjoint key sets, from each set's (output, log-sum-exp)."""
    if len(parts) == 1:
        return parts[0][0]
    if len(parts) == 2:
        (first, first_lse), (second, second_lse) = parts
        return torch.lerp(second, first, torch.sigmoid(first_lse - second_lse).to(first.dtype))
    weights = torch.softmax(torch.stack([lse for _, lse in parts]), dim=0)
    return (weights * torch.stack([out for out, _ in parts])).sum(0).to(parts[0][0].dtype)


def grouped_attention(query, groups: Groups, keys, values, bias, scaling: float, softcap=None):
    """Rows' queries (B, kv, M, D) over their group's keys (count, kv, L, D): one batched product over all
    groups; per-row results."""
    out, lse = attend(groups.blocks(query), keys, values, bias, scaling, softcap)
    return groups.rows(out), groups.rows(lse)


def pad_bias(lengths: Sequence[int], width: int, dtype, device) -> torch.Tensor | None:
    """(G, 1, 1, width) additive mask hiding each group's right padding; None when there is none."""
    if all(n == width for n in lengths):
        return None
    valid = torch.arange(width) < torch.tensor(list(lengths))[:, None]
    return additive(valid, dtype, device)[:, None, None, :]


def additive(valid: torch.Tensor, dtype, device) -> torch.Tensor:
    bias = torch.zeros(valid.shape, dtype=dtype)
    return bias.masked_fill_(~valid, torch.finfo(dtype).min).to(device)


class TreeLayer(CacheLayerMixin):
    """One decoder layer's prompt prefixes and node buffer (see the module docstring)."""

    is_sliding = False

    def __init__(self, prefix: Segment):
        super().__init__()
        self.prefix = prefix
        self.keys = self.values = None
        self.is_initialized = True

    def lazy_initialization(self, key_states, value_states) -> None:
        pass

    def update(self, key_states, value_states, cache):
        """Prefill: the new states are the node tails. Decode: each row's state goes to its slot's column."""
        if cache.phase == "prefill":
            self.keys, self.values = key_states, value_states
            return key_states, value_states
        start = cache.tail_width + cache.t * cache.slots
        for buffer, states in ((self.keys, key_states), (self.values, value_states)):
            block = buffer[:, :, start : start + cache.slots]
            if cache.node_groups.order is None:
                nodes, kv, slots, d = block.shape
                block.copy_(states.reshape(nodes, slots, kv, d).transpose(1, 2))
            else:  # some slots have no row: keep them finite, they are read (and masked)
                block.zero_()
                buffer[cache.write_at[0], :, cache.write_at[1]] = states[:, :, 0]
        used = start + cache.slots
        return self.keys[:, :, :used], self.values[:, :, :used]

    def reserve(self, cache, keep, ancestors) -> None:
        """The node buffer for the next forward: only the nodes in `keep` (None: all), room for one more token per
        slot. `ancestors` (nodes, slots, t), given when the slots per step grew: each beam's tokens so far (its
        ancestors' slots) are laid out again under the new slot count."""
        if keep is None and ancestors is None and self.keys.shape[2] >= cache.tail_width + (cache.t + 1) * cache.slots:
            return
        per_slot = max(cache.t + 1, cache.beam_columns, 2 * (self.keys.shape[2] - cache.tail_width) // cache.slots)
        columns = cache.tail_width + per_slot * cache.slots
        self.keys, self.values = (_rebuilt(b, cache, keep, ancestors, columns) for b in (self.keys, self.values))

    def select_prompts(self, keep: torch.Tensor) -> None:
        self.prefix = self.prefix.select(keep)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return query_length, 0

    def get_seq_length(self) -> int:
        return 0

    def get_max_length(self) -> int:
        return -1


def _beam_tokens(buffer: torch.Tensor, width: int, beams: int, t: int) -> torch.Tensor:
    """A node buffer's first t new tokens per beam as a (nodes, kv, t, beams, D) view."""
    nodes, kv, _, d = buffer.shape
    return buffer[:, :, width : width + t * beams].view(nodes, kv, t, beams, d)


def _rebuilt(buffer, cache, keep, ancestors, columns: int) -> torch.Tensor:
    """`buffer`'s written columns (of the nodes in `keep`) in a new buffer of `columns` columns; the others are
    written before they are read."""
    width, t = cache.tail_width, cache.t
    old = buffer[:, :, : width + t * cache.old_slots]
    if keep is not None:
        old = old.index_select(0, keep)
    new = buffer.new_empty(old.shape[:2] + (columns, old.shape[3]))
    if ancestors is None:
        new[:, :, : old.shape[2]] = old
        return new
    new[:, :, :width] = old[:, :, :width]
    nodes, kv, _, d = old.shape
    index = ancestors.transpose(1, 2)[:, None, :, :, None].expand(nodes, kv, t, cache.slots, d)
    _beam_tokens(new, width, cache.slots, t).copy_(torch.gather(_beam_tokens(old, width, cache.old_slots, t), 3, index))
    return new


class TreeCache(Cache):
    """The `Cache` the decoder layers write into, and the layout of the current forward that `tree_attention`
    reads. Nodes and prompts keep their original index (`node_of_row`, `prompt_of_node`); `node_at` and
    `prompt_at` say where each is stored (-1: dropped). `t`: new tokens per beam written before this forward;
    `slots`: beam columns per step; `ancestors[node, slot, t']`: the slot whose step-t' token the beam in `slot`
    descends from (its own at step t), so a beam reorder moves no keys or values, only this index."""

    def __init__(self, prefixes: Sequence[PrefixState], tail_lengths: Sequence[int], device,
                 beam_columns: int = MIN_BEAM_COLUMNS):
        prompts = list({id(p): p for p in prefixes}.values())
        index = {id(p): i for i, p in enumerate(prompts)}
        self.prompt_of_node = torch.tensor([index[id(p)] for p in prefixes], dtype=torch.long)
        self.prefix_lengths = [p.cache_len for p in prompts]
        self.tail_lengths = list(tail_lengths)
        self.tail_width = max(self.tail_lengths)
        super().__init__(layers=[TreeLayer(_prefix_segment([p.kv[i] for p in prompts], self.prefix_lengths, device))
                                 for i in range(len(prompts[0].kv))])
        self.device, self.beam_columns = device, beam_columns
        self.dtype = prompts[0].kv[0][0].dtype
        self.tail_valid = torch.arange(self.tail_width) >= self.tail_width - torch.tensor(self.tail_lengths)[:, None]
        self.node_at, self.prompt_at = torch.arange(len(prefixes)), torch.arange(len(prompts))
        self.phase, self.t, self.slots, self.old_slots = "prefill", 0, 0, 0
        self.node_of_row = self.beam_of_row = self.ancestors = None
        self.prompt_groups = self.node_groups = self.write_at = None
        self.biases: dict[int, torch.Tensor | None] = {}
        self.longest = 0

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        return self.layers[layer_idx].update(key_states, value_states, self)

    def begin_prefill(self) -> None:
        self.prompt_groups = Groups.of(self.prompt_of_node, len(self.prefix_lengths), self.device)
        self.biases = {}
        self.longest = max(self.prefix_lengths) + self.tail_width

    def begin_step(self, parent_rows: torch.Tensor) -> None:
        """Continue each row from its parent (a row of the previous forward) and lay out the next forward."""
        parents = parent_rows.cpu()
        first = self.phase == "prefill"
        node_of_row = parents if first else self.node_of_row[parents]
        self.t += 0 if first else 1
        self.phase = "decode"
        beam_of_row = ranks(node_of_row)
        keep = self._compact_nodes(node_of_row, always=first)
        at = self.node_at[node_of_row]
        self.old_slots, self.slots = self.slots, max(self.slots, int(beam_of_row.max()) + 1)
        ancestors = torch.zeros(int((self.node_at >= 0).sum()), self.slots, self.t + 1, dtype=torch.long)
        if not first:
            ancestors[at, beam_of_row, : self.t] = self.ancestors[at, self.beam_of_row[parents]]
        relaid = ancestors[:, :, : self.t] if self.t and self.slots > self.old_slots else None
        for layer in self.layers:
            layer.reserve(self, keep, None if relaid is None else relaid.to(self.device))
        if relaid is not None:
            ancestors[:, :, : self.t] = torch.arange(self.slots)[:, None]
        ancestors[at, beam_of_row, self.t] = beam_of_row
        self._compact_prompts(self.prompt_of_node[node_of_row])
        self.node_of_row, self.beam_of_row, self.ancestors = node_of_row, beam_of_row, ancestors
        self.node_groups = Groups.of(at, len(ancestors), self.device, rank=beam_of_row, width=self.slots)
        self.prompt_groups = Groups.of(self.prompt_at[self.prompt_of_node[node_of_row]],
                                       int((self.prompt_at >= 0).sum()), self.device)
        self.write_at = (at.to(self.device), (beam_of_row + self.tail_width + self.t * self.slots).to(self.device))
        self.biases = {}
        self.longest = max(self.prefix_lengths) + self.tail_width + self.t + 1

    def _compact_nodes(self, node_of_row, *, always: bool) -> torch.Tensor | None:
        keep = _live(self.node_at, node_of_row, always=always)
        if keep is None:
            return None
        self.node_at = _renumbered(self.node_at, keep)
        self.tail_valid = self.tail_valid[keep]
        if self.ancestors is not None:
            self.ancestors = self.ancestors[keep]
        return keep.to(self.device)

    def _compact_prompts(self, prompt_of_row) -> None:
        keep = _live(self.prompt_at, prompt_of_row)
        if keep is not None:
            self.prompt_at = _renumbered(self.prompt_at, keep)
            for layer in self.layers:
                layer.select_prompts(keep.to(self.device))

    def attention(self, module, query, scaling, softcap, window):
        """The layer's attention output (B, q, heads, D) for this forward's layout."""
        if window is not None and self.longest > window:
            raise SlidingWindowError(f"a row reaches {self.longest} tokens, past the {window}-token sliding window")
        layer = self.layers[module.layer_idx]
        rows, heads, q, d = query.shape
        kv = layer.prefix.keys.shape[1]
        group = heads // kv
        query = query.reshape(rows, kv, group * q, d)
        parts = []
        if layer.prefix.keys.shape[-2]:
            prefix = layer.prefix
            parts.append(grouped_attention(query, self.prompt_groups, prefix.keys, prefix.values, prefix.bias,
                                           scaling, softcap))
        if self.phase == "prefill":
            parts.append(attend(query, layer.keys, layer.values, self._bias(group, q), scaling, softcap))
        else:
            used = self.tail_width + (self.t + 1) * self.slots
            parts.append(grouped_attention(query, self.node_groups, layer.keys[:, :, :used],
                                           layer.values[:, :, :used], self._bias(group, q), scaling, softcap))
        return merge(parts).reshape(rows, heads, q, d).transpose(1, 2)

    def _bias(self, group: int, q: int) -> torch.Tensor:
        """The mask of the node part for query heads `group` per kv head (built once per forward)."""
        if group not in self.biases:
            self.biases[group] = self._prefill_bias(group, q) if self.phase == "prefill" else self._step_bias(group)
        return self.biases[group]

    def _prefill_bias(self, group: int, q: int) -> torch.Tensor:
        """(N, 1, group * q, Ln): each query sees its node's tail up to itself."""
        columns = torch.arange(self.tail_width)
        starts = self.tail_width - torch.tensor(self.tail_lengths)
        valid = (columns >= starts[:, None, None]) & (columns <= columns[:, None])
        valid = valid[:, None].expand(-1, group, -1, -1).reshape(len(starts), 1, group * q, self.tail_width)
        return additive(valid, self.dtype, self.device)

    def _step_bias(self, group: int) -> torch.Tensor:
        """(N, 1, slots * group, Ln + (t + 1) * slots): the node tail, and of the new tokens the beam's ancestors'."""
        nodes, slots, steps = self.ancestors.shape
        own = (self.ancestors[..., None] == torch.arange(slots)).reshape(nodes, slots, steps * slots)
        tails = self.tail_valid[:, None, :].expand(-1, slots, -1)
        valid = torch.cat([tails, own], dim=-1).repeat_interleave(group, dim=1)
        return additive(valid, self.dtype, self.device)[:, None]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.longest

    @property
    def is_sliding(self) -> list[bool]:
        return [False] * len(self.layers)


def _live(stored_at: torch.Tensor, used: torch.Tensor, *, always: bool = False) -> torch.Tensor | None:
    """Storage positions of the groups `used` still needs, when the dead ones are many enough (or any, `always`)
    to copy the live ones out; None to keep the storage as it is."""
    stored = int((stored_at >= 0).sum())
    alive = torch.zeros(stored, dtype=torch.bool)
    alive[stored_at[used]] = True
    dead = stored - int(alive.sum())
    if dead == 0 or (not always and dead < COMPACT_WHEN_DEAD * stored):
        return None
    return alive.nonzero().flatten()


def _renumbered(stored_at: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Where each group is stored once only the storage positions `keep` remain, in order (-1: dropped)."""
    new_position = torch.full((int((stored_at >= 0).sum()),), -1, dtype=torch.long)
    new_position[keep] = torch.arange(len(keep))
    return torch.where(stored_at >= 0, new_position[stored_at.clamp(min=0)], -1)


def _prefix_segment(kv: Sequence[tuple[torch.Tensor, torch.Tensor]], lengths, device) -> Segment:
    width = max(lengths)
    keys = torch.cat([pad_right(k, width) for k, _ in kv]) if len(kv) > 1 else kv[0][0]
    values = torch.cat([pad_right(v, width) for _, v in kv]) if len(kv) > 1 else kv[0][1]
    bias = pad_bias(lengths, width, keys.dtype, device) if width else None
    return Segment(keys.to(device), values.to(device), bias)


def tree_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, *, csr_tree=None,
                   softcap=None, sliding_window=None, **kwargs):
    """transformers attention interface "csr_tree": the layout comes from the `csr_tree` (a `TreeCache`) kwarg."""
    if csr_tree is None:
        raise TypeError('attention "csr_tree" runs only inside PrefixSharedBatch (no csr_tree cache was passed)')
    scaling = scaling if scaling is not None else getattr(module, "scaling", query.shape[-1] ** -0.5)
    window = sliding_window if sliding_window is not None else getattr(module, "sliding_window", None)
    return csr_tree.attention(module, query, scaling, softcap, window), None


AttentionInterface.register(TREE_ATTENTION, tree_attention)


@contextmanager
def attention_implementation(config, name: str):
    """`config` (the text model's) uses attention `name` inside the block, its own one again afterwards."""
    previous = config._attn_implementation_internal
    config._attn_implementation_internal = name
    try:
        yield
    finally:
        config._attn_implementation_internal = previous


class PrefixSharedBatch:
    """KV-cached forward passes for a batch of tree nodes with shared prefixes (see the module docstring).

    Same interface as `NodeBatch`: `prefill()` gives one row of next-token logits per node, `step(parent_rows,
    tokens)` continues row `parent_rows[i]` of the previous forward with `tokens[i]`. `max_new_tokens` (optional)
    sizes the new-token columns of the node buffers and lets the constructor check a sliding window; `contiguous`
    (NodeBatch's layout for rows that may outgrow a sliding window) is refused with `SlidingWindowError` on such a
    model and changes nothing on others.
    """

    def __init__(self, model, prefixes, responses, device, *, mrope: bool = False, contiguous: bool = False,
                 max_new_tokens: int | None = None):
        self.model, self.device, self.mrope = model, device, mrope
        self.tails = [[p.last_token, *r] for p, r in zip(prefixes, responses)]
        self.starts = [p.cache_len + p.position_delta for p in prefixes]
        _check_window(model.config, prefixes, self.tails, max_new_tokens, contiguous)
        self.text_config = model.config.get_text_config(decoder=True)
        self.cache_kwarg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self.cache = TreeCache(prefixes, [len(t) for t in self.tails], device,
                               beam_columns=max(max_new_tokens or 0, MIN_BEAM_COLUMNS))
        self.positions = None

    def prefill(self) -> torch.Tensor:
        width = max(len(t) for t in self.tails)
        input_ids = torch.zeros(len(self.tails), width, dtype=torch.long)
        positions = torch.zeros(len(self.tails), width, dtype=torch.long)
        for i, (tail, start) in enumerate(zip(self.tails, self.starts)):
            input_ids[i, width - len(tail) :] = torch.tensor(tail)
            positions[i, width - len(tail) :] = start + torch.arange(len(tail))
        self.cache.begin_prefill()
        return self._forward(input_ids.to(self.device), positions.to(self.device))

    def step(self, parent_rows: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        parent_rows = parent_rows.to(self.device)
        self.cache.begin_step(parent_rows)
        positions = self.positions[parent_rows] + 1
        return self._forward(tokens.to(self.device)[:, None], positions)

    def _forward(self, input_ids, positions) -> torch.Tensor:
        model_positions = positions[None].expand(3, -1, -1) if self.mrope else positions
        with attention_implementation(self.text_config, TREE_ATTENTION):
            out = self.model(input_ids=input_ids, position_ids=model_positions, use_cache=True, logits_to_keep=1,
                             csr_tree=self.cache, **{self.cache_kwarg: self.cache})
        self.positions = positions[:, -1:]
        return out.logits[:, -1, :].float()


def _check_window(config, prefixes, tails, max_new_tokens, contiguous: bool) -> None:
    """Refuse a sliding window a row could outgrow. Without `max_new_tokens` the caller vouches for the rows (as
    `VLMAdapter` does when it asks for no `contiguous` layout); attention checks them as they grow."""
    window = sliding_window(config)
    if window is None:
        return
    if contiguous:
        raise SlidingWindowError(f"rows may outgrow the {window}-token sliding window (a contiguous layout was asked)")
    if max_new_tokens is not None:
        longest = max(p.cache_len for p in prefixes) + max(len(t) for t in tails) + max_new_tokens
        if longest > window:
            raise SlidingWindowError(f"a row could reach {longest} tokens, past the {window}-token sliding window")
