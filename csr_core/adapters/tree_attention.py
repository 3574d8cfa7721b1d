"""Shared-prefix tree decoding for the sentence search: `PrefixSharedBatch`, a drop-in for `vlm.NodeBatch`.

`NodeBatch` gives every batch row (one beam of one tree node) its own copy of its prompt's prefix KV, so each
decode step concatenates and beam-reorders prefix and tail alike. Here a layer's KV cache is three segments, each
stored once at the level that owns it:

- the prompt prefix (image + prompt minus its last token, `PrefixState.kv`): once per distinct prompt, `(P, kv, Lp,
  D)`, right-padded to the longest prefix;
- the node tail (the prompt's last token + the node's response so far): once per node, `(N, kv, Ln, D)`,
  left-padded, written by `prefill` and never moved;
- the beam tail (the tokens of the sentence being searched): one row per live beam in a preallocated buffer
  `(rows, kv, T, D)`, written in place every step (its columns double when full); `step`'s beam reorder copies
  these columns only, with the row -> node index.

A row's query attends to each segment apart: to its prompt's prefix and to its node's tail as one query block per
prompt / node (one batched matmul over prompts or nodes, padding masked), and to its own beam tail (causal within
the new tokens); the three partial softmaxes are merged exactly by their log-sum-exps. That is transformers' own
attention, so the model's decoder layers, RoPE and MLPs run unchanged: `TreeCache` is the `Cache` their
`cache.update` writes into, and `tree_attention` is registered as the attention implementation "csr_tree", which
the text model's config takes for the duration of each forward pass (the vision tower keeps its own). A
non-registered implementation also makes transformers skip building masks: the layout masks itself.

What it knows: GQA (query head h reads kv head h // (heads / kv_heads)), the layer's `scaling`, attention logit
softcapping when a layer passes `softcap` (Gemma 2; Gemma 3's layers pass none), positions given explicitly (2-D,
or Qwen's 3-D with all three equal after the image). What it does not know: sliding windows. A sliding-window layer
is accepted only when no row can outgrow the window (then the window hides nothing and full attention is exact;
`max_new_tokens` must be given to know that); otherwise the constructor raises `SlidingWindowError` and the caller
keeps `NodeBatch`. `contiguous` (NodeBatch's sliding-window layout) is accepted and has nothing to change here.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.cache_utils import Cache, CacheLayerMixin

from csr_core.adapters.vlm import PrefixState, VLMAdapter, sliding_window
from csr_core.beam_search import diverse_beam_search
from csr_core.beams import Candidate

TREE_ATTENTION = "csr_tree"
# torch's CPU flash-attention kernel, which also returns the log-sum-exp (None: the plain matmul path everywhere)
FUSED_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
MIN_BEAM_COLUMNS = 16


class SlidingWindowError(ValueError):
    """A sliding-window layer could hide tokens from a row: the shared layout cannot apply the window."""


@dataclass(frozen=True)
class Groups:
    """Rows arranged as one query block per group (prompt or node), `width` rows per block.

    `order[slot]` is the row in block slot `slot` (slot = group * width + i; empty slots repeat row 0) and
    `slot[row]` the inverse; both None when rows already come group by group, `width` each.
    """

    count: int
    width: int
    order: torch.Tensor | None = None
    slot: torch.Tensor | None = None

    @classmethod
    def of(cls, group_of_row: torch.Tensor, count: int, device) -> Groups:
        group_of_row = group_of_row.cpu()
        n = len(group_of_row)
        counts = torch.bincount(group_of_row, minlength=count)
        width = int(counts.max())
        if count * width == n and bool((group_of_row == torch.arange(n) // width).all()):
            return cls(count, width)
        rows = torch.argsort(group_of_row, stable=True)
        sorted_groups = group_of_row[rows]
        starts = torch.cumsum(counts, 0) - counts
        slots = sorted_groups * width + torch.arange(n) - starts[sorted_groups]
        order = torch.zeros(count * width, dtype=torch.long)
        order[slots] = rows
        slot = torch.empty(n, dtype=torch.long)
        slot[rows] = slots
        return cls(count, width, order.to(device), slot.to(device))

    def blocks(self, rows: torch.Tensor) -> torch.Tensor:
        """(B, kv, M, D) per-row queries -> (count, kv, width * M, D) query blocks."""
        if self.order is not None:
            rows = rows.index_select(0, self.order)
        _, kv, m, d = rows.shape
        if self.width == 1:
            return rows
        return rows.view(self.count, self.width, kv, m, d).transpose(1, 2).reshape(self.count, kv, self.width * m, d)

    def rows(self, blocks: torch.Tensor) -> torch.Tensor:
        """Inverse of `blocks`: (count, kv, width * M, X) -> (B, kv, M, X)."""
        count, kv, wm, x = blocks.shape
        if self.width > 1:
            m = wm // self.width
            blocks = blocks.view(count, kv, self.width, m, x).transpose(1, 2).reshape(count * self.width, kv, m, x)
        return blocks if self.slot is None else blocks.index_select(0, self.slot)


@dataclass
class Segment:
    """KV shared by a group of rows: keys, values (groups, kv, L, D), additive key mask (groups, 1, 1, L) or None."""

    keys: torch.Tensor
    values: torch.Tensor
    bias: torch.Tensor | None


def attend(query, keys, values, bias, scaling: float, softcap: float | None = None):
    """Softmax attention of queries (..., M, D) over keys (..., L, D) with an additive key mask: (output (..., M, D),
    log-sum-exp of the scores (..., M, 1)). On CPU, without softcapping, torch's fused flash kernel does both."""
    if FUSED_CPU is not None and softcap is None and query.device.type == "cpu":
        out, lse = FUSED_CPU(query, keys, values, attn_mask=bias, scale=scaling)
        return out, lse[..., None]
    scores = torch.matmul(query, keys.transpose(-1, -2)) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if bias is not None:
        scores = scores + bias
    scores = scores.float()
    weights = torch.softmax(scores, dim=-1).to(values.dtype)
    return torch.matmul(weights, values), torch.logsumexp(scores, dim=-1, keepdim=True)


def merge(parts: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Exact softmax over the union of disjoint key sets from each set's (output, log-sum-exp)."""
    if len(parts) == 1:
        return parts[0][0]
    weights = torch.softmax(torch.stack([lse for _, lse in parts]), dim=0)
    return (weights * torch.stack([out for out, _ in parts])).sum(0).to(parts[0][0].dtype)


def grouped_attention(query, groups: Groups, segment: Segment, scaling: float, softcap=None):
    """Rows' queries (B, kv, M, D) over their group's segment: one batched product over all groups; per-row
    results."""
    out, lse = attend(groups.blocks(query), segment.keys, segment.values, segment.bias, scaling, softcap)
    return groups.rows(out), groups.rows(lse)


def pad_bias(lengths: Sequence[int], width: int, *, left: bool, dtype, device) -> torch.Tensor | None:
    """(G, 1, 1, width) additive mask hiding the padding of each group's keys; None when there is none."""
    if all(n == width for n in lengths):
        return None
    columns = torch.arange(width)
    lengths = torch.tensor(list(lengths))[:, None]
    valid = columns >= width - lengths if left else columns < lengths
    return _additive(valid, dtype, device)[:, None, None, :]


def _additive(valid: torch.Tensor, dtype, device) -> torch.Tensor:
    bias = torch.zeros(valid.shape, dtype=dtype)
    return bias.masked_fill_(~valid, torch.finfo(dtype).min).to(device)


class TreeLayer(CacheLayerMixin):
    """One decoder layer's segments: prompt prefixes, node tails (set by prefill), the beam-tail buffer."""

    is_sliding = False

    def __init__(self, prefix: Segment):
        super().__init__()
        self.prefix = prefix
        self.node: Segment | None = None
        self.beam_keys = self.beam_values = None
        self.is_initialized = True

    def lazy_initialization(self, key_states, value_states) -> None:
        pass

    def update(self, key_states, value_states, *args, cache=None, **kwargs):
        """Prefill: the new states are the node tails. Decode: written into the beam buffer at column `cache.t`."""
        if cache.phase == "prefill":
            self.node = Segment(key_states, value_states, cache.node_bias)
            return key_states, value_states
        start, stop, rows = cache.t, cache.t + key_states.shape[-2], key_states.shape[0]
        self._reserve(key_states, rows, stop, cache.beam_columns)
        self.beam_keys[:rows, :, start:stop].copy_(key_states)
        self.beam_values[:rows, :, start:stop].copy_(value_states)
        return self.beam_keys[:rows, :, :stop], self.beam_values[:rows, :, :stop]

    def _reserve(self, like: torch.Tensor, rows: int, columns: int, initial_columns: int) -> None:
        """Buffers of at least `rows` x `columns`: `initial_columns` at first, doubling when full, the written
        columns carried over."""
        if self.beam_keys is None:
            have_rows, have_columns, new_columns = 0, 0, max(columns, initial_columns)
        else:
            have_rows, have_columns = self.beam_keys.shape[0], self.beam_keys.shape[2]
            if rows <= have_rows and columns <= have_columns:
                return
            new_columns = have_columns if columns <= have_columns else max(columns, 2 * have_columns)
        shape = (max(rows, have_rows), like.shape[1], new_columns, like.shape[3])
        keys, values = like.new_empty(shape), like.new_empty(shape)
        if self.beam_keys is not None:
            keys[:have_rows, :, :have_columns].copy_(self.beam_keys)
            values[:have_rows, :, :have_columns].copy_(self.beam_values)
        self.beam_keys, self.beam_values = keys, values

    def reorder_beams(self, parent_rows: torch.Tensor, columns: int) -> None:
        """Beam rows take their parents' written columns (into a fresh buffer: rows may repeat)."""
        if columns == 0 or self.beam_keys is None:
            return
        rows = len(parent_rows)
        keys = self.beam_keys.new_empty((rows,) + self.beam_keys.shape[1:])
        values = self.beam_values.new_empty(keys.shape)
        torch.index_select(self.beam_keys[:, :, :columns], 0, parent_rows, out=keys[:rows, :, :columns])
        torch.index_select(self.beam_values[:, :, :columns], 0, parent_rows, out=values[:rows, :, :columns])
        self.beam_keys, self.beam_values = keys, values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return query_length, 0

    def get_seq_length(self) -> int:
        return 0

    def get_max_length(self) -> int:
        return -1


class TreeCache(Cache):
    """The `Cache` the decoder layers write into, and the per-forward layout `tree_attention` reads.

    Rows: nodes during prefill, beams afterwards (`node_of_row`). `t`: beam-tail columns written so far.
    """

    def __init__(self, prefixes: Sequence[PrefixState], node_tail_lengths: Sequence[int], device,
                 beam_columns: int = MIN_BEAM_COLUMNS):
        prompts = list({id(p): p for p in prefixes}.values())
        index = {id(p): i for i, p in enumerate(prompts)}
        self.prompt_of_node = torch.tensor([index[id(p)] for p in prefixes], dtype=torch.long)
        self.prefix_lengths = [p.cache_len for p in prompts]
        self.node_lengths = list(node_tail_lengths)
        layers = [TreeLayer(_prefix_segment([p.kv[i] for p in prompts], self.prefix_lengths, device))
                  for i in range(len(prompts[0].kv))]
        super().__init__(layers=layers)
        self.device = device
        self.beam_columns = beam_columns
        dtype = prompts[0].kv[0][0].dtype
        self.node_bias = pad_bias(self.node_lengths, max(self.node_lengths), left=True, dtype=dtype, device=device)
        self.phase, self.t = "prefill", 0
        self.node_of_row = torch.arange(len(prefixes))
        self.prompt_groups = self.node_groups = None
        self.own_bias: torch.Tensor | None = None
        self.longest = 0

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        return self.layers[layer_idx].update(key_states, value_states, cache=self)

    def begin_prefill(self) -> None:
        self.prompt_groups = Groups.of(self.prompt_of_node, len(self.prefix_lengths), self.device)
        width = max(self.node_lengths)
        columns, queries = torch.arange(width), torch.arange(width)[:, None]
        starts = width - torch.tensor(self.node_lengths)
        valid = (columns[None, None] >= starts[:, None, None]) & (columns[None, None] <= queries[None])
        dtype = self.layers[0].prefix.keys.dtype
        self.own_bias = _additive(valid, dtype, self.device)[:, None]  # (N, 1, q, T): expanded per head group
        self.longest = max(self.prefix_lengths) + width
        self.phase = "prefill"

    def begin_step(self, parent_rows: torch.Tensor) -> None:
        """Reorder beams by parent (rows of the previous forward) and lay out the next one-token forward."""
        if self.phase == "prefill":
            self.node_of_row = parent_rows.cpu()
            self.phase = "decode"
        else:
            self.node_of_row = self.node_of_row[parent_rows.cpu()]
            self.t += 1
            for layer in self.layers:
                layer.reorder_beams(parent_rows, self.t)
        prompt_of_row = self.prompt_of_node[self.node_of_row]
        self.prompt_groups = Groups.of(prompt_of_row, len(self.prefix_lengths), self.device)
        self.node_groups = Groups.of(self.node_of_row, len(self.node_lengths), self.device)
        self.own_bias = None
        self.longest = max(self.prefix_lengths) + max(self.node_lengths) + self.t + 1

    def attention(self, module, query, scaling, softcap, window):
        """The layer's attention output (B, q, heads, D) for this forward's layout."""
        if window is not None and self.longest > window:
            raise SlidingWindowError(f"a row reaches {self.longest} tokens, past the {window}-token sliding window")
        layer = self.layers[module.layer_idx]
        rows, heads, q, d = query.shape
        kv = layer.prefix.keys.shape[1]
        query = query.reshape(rows, kv, heads // kv * q, d)
        parts = []
        if layer.prefix.keys.shape[-2]:
            parts.append(grouped_attention(query, self.prompt_groups, layer.prefix, scaling, softcap))
        if self.phase == "prefill":
            own_keys, own_values, own_bias = layer.node.keys, layer.node.values, self._own_bias(heads // kv)
        else:
            parts.append(grouped_attention(query, self.node_groups, layer.node, scaling, softcap))
            stop = self.t + 1
            own_keys, own_values, own_bias = layer.beam_keys[:rows, :, :stop], layer.beam_values[:rows, :, :stop], None
        parts.append(attend(query, own_keys, own_values, own_bias, scaling, softcap))
        return merge(parts).view(rows, heads, q, d).transpose(1, 2)

    def _own_bias(self, group: int) -> torch.Tensor:
        """The prefill mask (N, 1, q, T) repeated for each query head of a kv head: (N, 1, group * q, T)."""
        nodes, _, q, width = self.own_bias.shape
        return self.own_bias.expand(nodes, group, q, width).reshape(nodes, 1, group * q, width)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.longest

    @property
    def is_sliding(self) -> list[bool]:
        return [False] * len(self.layers)


def _prefix_segment(kv: Sequence[tuple[torch.Tensor, torch.Tensor]], lengths, device) -> Segment:
    width = max(lengths)
    keys = torch.cat([_pad_right(k, width) for k, _ in kv]) if len(kv) > 1 else kv[0][0]
    values = torch.cat([_pad_right(v, width) for _, v in kv]) if len(kv) > 1 else kv[0][1]
    bias = pad_bias(lengths, width, left=False, dtype=keys.dtype, device=device) if width else None
    return Segment(keys.to(device), values.to(device), bias)


def _pad_right(tensor: torch.Tensor, length: int) -> torch.Tensor:
    missing = length - tensor.shape[-2]
    if missing == 0:
        return tensor
    return torch.cat([tensor, tensor.new_zeros(tensor.shape[:-2] + (missing, tensor.shape[-1]))], dim=-2)


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
    sizes the beam-tail buffer and lets sliding-window models in when no row can outgrow the window.
    """

    def __init__(self, model, prefixes, responses, device, *, mrope: bool = False, contiguous: bool = False,
                 max_new_tokens: int | None = None):
        self.model, self.device, self.mrope = model, device, mrope
        self.tails = [[p.last_token, *r] for p, r in zip(prefixes, responses)]
        self.starts = [p.cache_len + p.position_delta for p in prefixes]
        _check_window(model.config, prefixes, self.tails, max_new_tokens)
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


def _check_window(config, prefixes, tails, max_new_tokens) -> None:
    window = sliding_window(config)
    if window is None:
        return
    if max_new_tokens is None:
        raise SlidingWindowError(f"the model has {window}-token sliding-window layers and no max_new_tokens was "
                                 "given to show that no row outgrows the window")
    longest = max(p.cache_len for p in prefixes) + max(len(t) for t in tails) + max_new_tokens
    if longest > window:
        raise SlidingWindowError(f"a row could reach {longest} tokens, past the {window}-token sliding window")


class SharedPrefixAdapter(VLMAdapter):
    """`VLMAdapter` whose sentence search decodes with `PrefixSharedBatch`, or with `NodeBatch` where a sliding
    window could hide tokens (`SlidingWindowError`)."""

    @torch.inference_mode()
    def search_sentences(self, prefixes, responses, max_new_tokens, params) -> list[list[Candidate]]:
        try:
            batch = PrefixSharedBatch(self.model, prefixes, responses, self.device, mrope=self.family.mrope,
                                      max_new_tokens=max(max_new_tokens))
        except SlidingWindowError:
            return super().search_sentences(prefixes, responses, max_new_tokens, params)
        return diverse_beam_search(
            batch.prefill(), batch.step, params,
            stop_ids=sorted(self.delimiter_ids), eos_ids=sorted(self.eos_ids) if self.stop_at_eos else [],
            max_new_tokens=max_new_tokens,
            suppress_ids=sorted(self.suppress_ids), pad_id=self.tokenizer.pad_token_id,
        )
