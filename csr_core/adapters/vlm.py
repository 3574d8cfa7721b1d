"""Adapter for transformers VLMs of every supported family: prompts, prefix KV caching, batched sentence search.

The sentence search decodes many tree nodes (of several prompts) in one batch. Row i of the batch is laid out as
`[prefix_i | padding | tail_i]`: the prefix KV cache (image + prompt, minus its last token) is computed once per
prompt and reused; the tail (last prompt token + the node's response so far) is left-padded; padding is masked
out and `position_ids` keep every row's positions contiguous, so the holes change nothing. Qwen's multimodal
RoPE numbers the text after an image from `rope_deltas` on, so a tail's positions start there.

The search runs on `tree_attention.PrefixSharedBatch`, which keeps each prompt's prefix KV once and each node's
tail in a buffer written in place, over the same layout and positions. `NodeBatch` (a row per beam, each with
its own copy of the prefix) stays for one case: a sliding-window attention layer measures distance in cache
slots, not positions, so a hole inside the window would hide tokens it should see, and the shared-prefix engine
does not apply windows. When a batch could reach past the window, `NodeBatch` lays its rows out
`[padding | prefix_i | tail_i]` instead (each tail prefilled on its own prefix copy), which is exact for any
window; the adapter logs when it does so. Which family does what is in `adapters/families.py`.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from csr_core.adapters.families import Family, family_for
from csr_core.beam_search import diverse_beam_search
from csr_core.beams import BeamParams, Candidate
from csr_core.prompts import without_image_placeholder

FALLBACK_TEMPLATE = "USER: <image>\n{text} ASSISTANT:"
# processor outputs with one entry per token: a prefix drops their last column with the last token
PER_TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")
ENGINES = ("shared", "node")  # tree_attention.PrefixSharedBatch, NodeBatch
log = logging.getLogger("csr")


@dataclass(frozen=True)
class PrefixState:
    """KV cache of image + chat-templated prompt, all tokens but the last one (batch size 1).

    `position_delta`: how far the prompt's positions run ahead of its token count (Qwen's `rope_deltas`; 0 for
    1-D RoPE), so the last token sits at position `cache_len + position_delta`.
    """

    kv: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    last_token: int
    position_delta: int = 0

    @property
    def cache_len(self) -> int:
        return self.kv[0][0].shape[-2]


class MissingWeightsError(ValueError):
    """A checkpoint lacks parameters the model has: loading it would initialise them randomly."""


def load_vlm_weights(model_dir, **kwargs):
    """`AutoModelForImageTextToText.from_pretrained(model_dir, **kwargs)`, refusing a checkpoint that lacks some of
    the model's parameters (transformers would initialise them randomly and only log it)."""
    from transformers import AutoModelForImageTextToText

    model, info = AutoModelForImageTextToText.from_pretrained(model_dir, output_loading_info=True, **kwargs)
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise MissingWeightsError(
            f"{model_dir}: the weights lack {len(missing)} of the model's parameters ({shown}); "
            "they would be initialised randomly"
        )
    return model


def _resolve_dtype(dtype):
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    return getattr(torch, str(dtype))


class VLMAdapter:
    """`delimiters`: "suffix" ends a sentence at every vocabulary token whose text ends in "." (" .", ")." ...);
    "period" only at the tokenizer's "." token, as the paper's code does (its `--period_id 29889`)."""

    def __init__(self, model, processor, *, device: str = "cpu", delimiters: str = "suffix",
                 stop_at_eos: bool = True, engine: str = "shared"):
        self.family: Family = family_for(model.config.model_type)
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
        self.engine = engine  # "node": NodeBatch everywhere, the engine before tree_attention (benches, tests)
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.device = torch.device(device)
        self.eos_ids = frozenset(eos_token_ids(model, self.tokenizer))
        ids = delimiter_token_ids(self.tokenizer) if delimiters == "suffix" else [period_token_id(self.tokenizer)]
        self.delimiter_ids = frozenset(ids) - self.eos_ids
        self.stop_at_eos = stop_at_eos  # False: EOS does not stop the search (the paper's code; see SearchConfig)
        # never generated during the search: an image or turn marker in a response would break re-encoding
        self.suppress_ids = frozenset(suppressed_token_ids(model, self.tokenizer) - self.eos_ids)
        self.sliding_window = sliding_window(model.config)
        self._said_contiguous = False

    @classmethod
    def from_pretrained(cls, model_dir, *, device="cpu", dtype=None, trust_remote_code=False,
                        delimiters: str = "suffix", stop_at_eos: bool = True) -> VLMAdapter:
        from transformers import AutoProcessor

        model_dir = str(Path(model_dir))
        processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
        model = load_vlm_weights(model_dir, dtype=_resolve_dtype(dtype), trust_remote_code=trust_remote_code)
        return cls(model.to(device), processor, device=device, delimiters=delimiters, stop_at_eos=stop_at_eos)

    # --- prompts -------------------------------------------------------------------------------------------
    def format_prompt(self, instruction: str) -> str:
        """Chat-templated prompt text with the image token, ending where the assistant's answer starts."""
        text = without_image_placeholder(instruction)
        if getattr(self.processor, "chat_template", None):
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
            return self.processor.apply_chat_template(messages, add_generation_prompt=True)
        return FALLBACK_TEMPLATE.format(text=text)

    def model_inputs(self, images, instructions, padding_side="left"):
        texts = [self.format_prompt(i) for i in instructions]
        self.tokenizer.padding_side = padding_side
        images = [[im] for im in images] if self.family.images_per_prompt else list(images)
        inputs = self.processor(images=images, text=texts, return_tensors="pt", padding=True)
        inputs = inputs.to(self.device)
        for name in ("pixel_values", "pixel_values_videos"):
            if name in inputs and inputs[name].is_floating_point():
                inputs[name] = inputs[name].to(self.model.dtype)
        return inputs

    def prompt_positions(self, inputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Position ids of (left-padded) model inputs and, per row, how far the positions after the prompt run
        ahead of its token count: (B, L) and zeros for 1-D RoPE; Qwen's (3, B, L) and `rope_deltas`."""
        mask = inputs["attention_mask"]
        if not self.family.mrope:
            return (mask.cumsum(-1) - 1).clamp(min=0), torch.zeros(mask.shape[0], dtype=torch.long)
        positions, deltas = _rope_index(self.model)(
            inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"],
            image_grid_thw=inputs.get("image_grid_thw"), attention_mask=mask,
        )
        return positions, deltas.reshape(-1).long().cpu()

    @property
    def context_length(self) -> int | None:
        """Positions the language model was trained for (None when its config does not say)."""
        config = getattr(self.model.config, "text_config", None) or self.model.config
        return getattr(config, "max_position_embeddings", None)

    def prompt_length(self, image: Image.Image, instruction: str) -> int:
        """Tokens of the templated prompt, image tokens included."""
        return int(self.model_inputs([image], [instruction])["input_ids"].shape[1])

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True).strip()

    # --- sentence search ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def encode_prefix(self, image: Image.Image, instruction: str) -> PrefixState:
        """Run the vision tower and the prompt once; keep the KV cache for reuse by every tree node."""
        from transformers import DynamicCache

        inputs = self.model_inputs([image], [instruction])
        ids = inputs["input_ids"]
        positions, deltas = self.prompt_positions(inputs)
        for name in PER_TOKEN_INPUTS:
            if name in inputs:
                inputs[name] = inputs[name][:, :-1]
        # a cache without sliding-window layers: every layer keeps the whole prefix, the masks apply the window
        out = self.model(**inputs, position_ids=positions[..., :-1], use_cache=True,
                         **{_cache_kwarg(self.model): DynamicCache()})
        kv = tuple((layer.keys, layer.values) for layer in _output_cache(out).layers)
        return PrefixState(kv=kv, last_token=int(ids[0, -1]), position_delta=int(deltas[0]))

    @torch.inference_mode()
    def search_sentences(
        self,
        prefixes: Sequence[PrefixState],
        responses: Sequence[Sequence[int]],
        max_new_tokens: Sequence[int],
        params: BeamParams,
    ) -> list[list[Candidate]]:
        """Extend each (prefix, response-so-far) pair by one sentence with diverse beam search, in one batch."""
        from csr_core.adapters.tree_attention import PrefixSharedBatch

        contiguous = self._needs_contiguous_rows(prefixes, responses, max_new_tokens)
        if contiguous or self.engine == "node":  # shared prefixes know no sliding window
            batch = NodeBatch(self.model, prefixes, responses, self.device, mrope=self.family.mrope,
                              contiguous=contiguous)
        else:
            batch = PrefixSharedBatch(self.model, prefixes, responses, self.device, mrope=self.family.mrope,
                                      max_new_tokens=max(max_new_tokens, default=0))
        first_logits = batch.prefill()
        return diverse_beam_search(
            first_logits, batch.step, params,
            stop_ids=sorted(self.delimiter_ids), eos_ids=sorted(self.eos_ids) if self.stop_at_eos else [],
            max_new_tokens=max_new_tokens,
            suppress_ids=sorted(self.suppress_ids), pad_id=self.tokenizer.pad_token_id,
        )

    def prefix_kv_bytes(self, prefix: PrefixState) -> int:
        """Bytes of a prompt's prefix KV (what the search holds for each prompt in flight)."""
        return sum(keys.nbytes + values.nbytes for keys, values in prefix.kv)

    def batch_kv_bytes(self, prefixes: Sequence[PrefixState], responses: Sequence[Sequence[int]],
                       max_new_tokens: Sequence[int], params: BeamParams) -> int:
        """KV bytes `search_sentences` allocates for this batch, on top of the prefixes it is given.

        `PrefixSharedBatch` (exact, from the first decode step on, while no node's search has ended): its distinct
        prompts' prefixes copied into one tensor right-padded to the longest (no copy for a single prompt), and
        per node a buffer of the longest tail (last prompt token + response) plus `num_beams` slots of
        `max(max_new_tokens, MIN_BEAM_COLUMNS)` columns, which never needs to grow. Nodes whose search ends are
        dropped as it goes, so the count bounds the batch from above. `NodeBatch` (engine "node", or a batch a
        sliding window makes contiguous): an upper bound, every beam row holding the longest prefix, the
        longest tail and all its new tokens. Grows with the batch, as `build_trees` needs to pack batches.
        """
        from csr_core.adapters.tree_attention import MIN_BEAM_COLUMNS

        token = _token_kv_bytes(prefixes[0])
        tail = 1 + max(len(r) for r in responses)
        new_tokens = max(max_new_tokens, default=0)
        longest_prefix = max(p.cache_len for p in prefixes)
        if self.engine == "node" or self._longest_row(prefixes, responses, max_new_tokens) is not None:
            return len(prefixes) * params.num_beams * (longest_prefix + tail + new_tokens) * token
        prompts = len({id(p) for p in prefixes})
        copied = prompts * longest_prefix if prompts > 1 else 0
        nodes = len(prefixes) * (tail + params.num_beams * max(new_tokens, MIN_BEAM_COLUMNS))
        return (copied + nodes) * token

    def _longest_row(self, prefixes, responses, max_new_tokens) -> int | None:
        """The cache slots a row could span when that is more than the sliding window; else None."""
        if self.sliding_window is None:
            return None
        longest = (max(p.cache_len for p in prefixes) + max(len(r) for r in responses) + 1
                   + max(max_new_tokens, default=0))
        return longest if longest > self.sliding_window else None

    def _needs_contiguous_rows(self, prefixes, responses, max_new_tokens) -> bool:
        """True when a row's cache slots could span more than the sliding window (see the module docstring)."""
        longest = self._longest_row(prefixes, responses, max_new_tokens)
        if longest is None:
            return False
        if not self._said_contiguous:
            log.warning("%s: a batch of the search reaches %d cache slots, past the %d-token sliding window; "
                        "its rows are laid out without padding holes (exact, slower prefill)",
                        self.family.name, longest, self.sliding_window)
            self._said_contiguous = True
        return True

    # --- evaluation ---------------------------------------------------------------------------------------
    @torch.inference_mode()
    def yes_probability(self, images, instructions, *, batch_size=16) -> list[float]:
        """Per yes/no question, P(first answer token of "Yes") / (that + P(first token of "No")).

        One forward pass over image + prompt; the rest of the vocabulary is left out, so the result is the
        model's odds between the two answers POPE parses, whatever else it might have said.
        """
        yes, no = self.answer_first_token("Yes"), self.answer_first_token("No")
        if yes == no:
            raise ValueError(f'"Yes" and "No" start with the same token ({yes}); their odds are undefined')
        probabilities: list[float] = []
        for start in range(0, len(instructions), batch_size):
            inputs = self.model_inputs(images[start : start + batch_size], instructions[start : start + batch_size])
            positions, _ = self.prompt_positions(inputs)
            logits = self.model(**inputs, position_ids=positions, logits_to_keep=1).logits[:, -1, [yes, no]]
            probabilities += torch.softmax(logits.float(), dim=-1)[:, 0].tolist()
        return probabilities

    def answer_first_token(self, word: str) -> int:
        """The token id an answer starting with `word` begins with, right after the chat prompt."""
        prompt = self.format_prompt("Is there a cat in the image?")
        before = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        after = self.tokenizer(f"{prompt} {word}", add_special_tokens=False)["input_ids"]
        if len(after) <= len(before) or after[: len(before)] != before:
            raise ValueError(f"cannot find the first token of the answer {word!r}: the tokenizer merges it "
                             "into the end of the chat prompt")
        return after[len(before)]

    @torch.inference_mode()
    def generate(
        self, images, instructions, *, do_sample=False, temperature=1.0, max_new_tokens=128,
        num_return_sequences=1, seed=0, batch_size=16,
    ) -> list[list[str]]:
        """Batched plain generation (CHAIR descriptions, POPE answers); one list of outputs per instruction."""
        results: list[list[str]] = []
        for start in range(0, len(instructions), batch_size):
            torch.manual_seed(seed + start)
            inputs = self.model_inputs(images[start : start + batch_size], instructions[start : start + batch_size])
            sampling = {"do_sample": True, "temperature": temperature} if do_sample else {"do_sample": False}
            out = self.model.generate(
                **inputs, max_new_tokens=max_new_tokens, num_return_sequences=num_return_sequences,
                pad_token_id=self.tokenizer.pad_token_id, **sampling,
            )
            texts = self.tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            for i in range(0, len(texts), num_return_sequences):
                results.append([t.strip() for t in texts[i : i + num_return_sequences]])
        return results


class NodeBatch:
    """KV-cached forward passes for a batch of tree nodes, with beam reordering between steps.

    `mrope`: positions go to the model as Qwen's (3, B, L) (all three equal after the image). `contiguous`: the
    `[padding | prefix | tail]` layout, for sliding-window models (see the module docstring).
    """

    def __init__(self, model, prefixes, responses, device, *, mrope: bool = False, contiguous: bool = False):
        self.model, self.device = model, device
        self.prefixes, self.responses = prefixes, responses
        self.mrope, self.contiguous = mrope, contiguous
        self.cache = None
        self.mask = self.positions = None

    def prefill(self) -> torch.Tensor:
        tails = [[p.last_token, *r] for p, r in zip(self.prefixes, self.responses)]
        starts = [p.cache_len + p.position_delta for p in self.prefixes]
        if self.contiguous:
            return self._prefill_rows(tails, starts)
        from transformers import DynamicCache

        cache_max = max(p.cache_len for p in self.prefixes)
        tail_max = max(len(t) for t in tails)
        n = len(tails)
        kv = []
        for layer in range(len(self.prefixes[0].kv)):
            keys = [pad_right(p.kv[layer][0], cache_max) for p in self.prefixes]
            values = [pad_right(p.kv[layer][1], cache_max) for p in self.prefixes]
            kv.append((torch.cat(keys), torch.cat(values)))
        self.cache = DynamicCache(ddp_cache_data=kv)
        input_ids = torch.zeros(n, tail_max, dtype=torch.long, device=self.device)
        mask = torch.zeros(n, cache_max + tail_max, dtype=torch.long, device=self.device)
        positions = torch.zeros(n, tail_max, dtype=torch.long, device=self.device)
        for i, (prefix, tail) in enumerate(zip(self.prefixes, tails)):
            input_ids[i, tail_max - len(tail) :] = torch.tensor(tail, device=self.device)
            mask[i, : prefix.cache_len] = 1
            mask[i, cache_max + tail_max - len(tail) :] = 1
            positions[i, tail_max - len(tail) :] = starts[i] + torch.arange(len(tail), device=self.device)
        return self._forward(input_ids, mask, positions)

    def _prefill_rows(self, tails, starts) -> torch.Tensor:
        """Each tail on its own copy of its prefix, then the rows left-padded into one cache."""
        from transformers import DynamicCache

        logits, row_kv = [], []
        for prefix, tail, start in zip(self.prefixes, tails, starts):
            self.cache = DynamicCache(ddp_cache_data=list(prefix.kv))
            ids = torch.tensor([tail], device=self.device)
            mask = torch.ones(1, prefix.cache_len + len(tail), dtype=torch.long, device=self.device)
            positions = start + torch.arange(len(tail), device=self.device)[None]
            logits.append(self._forward(ids, mask, positions))
            row_kv.append([(layer.keys, layer.values) for layer in self.cache.layers])
        lengths = [p.cache_len + len(t) for p, t in zip(self.prefixes, tails)]
        longest = max(lengths)
        kv = []
        for layer in range(len(row_kv[0])):
            keys = [pad_left(row[layer][0], longest) for row in row_kv]
            values = [pad_left(row[layer][1], longest) for row in row_kv]
            kv.append((torch.cat(keys), torch.cat(values)))
        self.cache = DynamicCache(ddp_cache_data=kv)
        self.mask = torch.zeros(len(tails), longest, dtype=torch.long, device=self.device)
        for i, length in enumerate(lengths):
            self.mask[i, longest - length :] = 1
        last = [start + len(tail) - 1 for start, tail in zip(starts, tails)]
        self.positions = torch.tensor(last, device=self.device)[:, None]
        return torch.cat(logits)

    def step(self, parent_rows: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        parent_rows = parent_rows.to(self.device)
        self.cache.reorder_cache(parent_rows)
        ones = torch.ones(len(parent_rows), 1, dtype=torch.long, device=self.device)
        mask = torch.cat([self.mask[parent_rows], ones], dim=1)
        positions = self.positions[parent_rows] + 1
        return self._forward(tokens.to(self.device)[:, None], mask, positions)

    def _forward(self, input_ids, mask, positions) -> torch.Tensor:
        model_positions = positions[None].expand(3, -1, -1) if self.mrope else positions
        out = self.model(
            input_ids=input_ids, attention_mask=mask, position_ids=model_positions,
            **{_cache_kwarg(self.model): self.cache}, use_cache=True, logits_to_keep=1,
        )
        self.cache, self.mask, self.positions = _output_cache(out), mask, positions[:, -1:]
        return out.logits[:, -1, :].float()


def _rope_index(model):
    """Qwen's `get_rope_index` (on the model or its inner `.model`), which numbers image tokens by (t, h, w)."""
    for owner in (model, getattr(model, "model", None)):
        if owner is not None and hasattr(owner, "get_rope_index"):
            return owner.get_rope_index
    raise TypeError(f"{type(model).__name__} has no get_rope_index, which multimodal RoPE needs")


def sliding_window(config) -> int | None:
    """The language model's sliding attention window, when any of its layers uses one."""
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    window = getattr(text, "sliding_window", None)
    if not window:
        return None
    layer_types = getattr(text, "layer_types", None)
    if layer_types is not None:
        return int(window) if "sliding_attention" in layer_types else None
    return int(window) if getattr(text, "use_sliding_window", True) else None


def _token_kv_bytes(prefix: PrefixState) -> int:
    """Keys and values of one token in every layer, from a prefix's tensors (layer: (1, kv_heads, L, head_dim))."""
    return sum(t.shape[1] * t.shape[-1] * t.element_size() for layer in prefix.kv for t in layer)


def _cache_kwarg(model) -> str:
    """transformers >= 5.x renamed `past_key_values` to `cache`; accept both."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _output_cache(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def pad_right(tensor: torch.Tensor, length: int) -> torch.Tensor:
    return pad_sequence(tensor, length, right=True)


def pad_left(tensor: torch.Tensor, length: int) -> torch.Tensor:
    return pad_sequence(tensor, length, right=False)


def pad_sequence(tensor: torch.Tensor, length: int, *, right: bool) -> torch.Tensor:
    """Zeros along the sequence axis (-2) up to `length`."""
    missing = length - tensor.shape[-2]
    if missing == 0:
        return tensor
    pad = tensor.new_zeros(tensor.shape[:-2] + (missing, tensor.shape[-1]))
    return torch.cat([tensor, pad] if right else [pad, tensor], dim=-2)


def delimiter_token_ids(tokenizer, delimiter: str = ".") -> list[int]:
    """Vocabulary tokens whose decoded text ends with the delimiter (e.g. "." , "▁.", ")."), never hard-coded."""
    special = set(tokenizer.all_special_ids)
    ids = []
    for token, token_id in tokenizer.get_vocab().items():
        if token_id in special:
            continue
        text = tokenizer.convert_tokens_to_string([token]).strip()
        if text.endswith(delimiter):
            ids.append(token_id)
    return sorted(ids)


def period_token_id(tokenizer) -> int:
    """The vocabulary's own "." token (Llama's 29889), the one delimiter of the paper's code."""
    token_id = tokenizer.convert_tokens_to_ids(".")
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise ValueError("search.delimiters=period: the tokenizer has no '.' token; use delimiters=suffix")
    return int(token_id)


def suppressed_token_ids(model, tokenizer) -> set[int]:
    """Tokens a response never contains: the image placeholder and every special token (pad, turn and image
    markers, Idefics3's crop tags...) but BOS, UNK and EOS. The caller also takes out the model's EOS ids."""
    ids = {getattr(model.config, "image_token_id", None), getattr(model.config, "image_token_index", None)}
    ids.update(int(i) for i in tokenizer.all_special_ids)
    ids.update(int(i) for i, token in getattr(tokenizer, "added_tokens_decoder", {}).items() if token.special)
    ids -= {tokenizer.bos_token_id, tokenizer.unk_token_id, tokenizer.eos_token_id, None}
    return ids


def eos_token_ids(model, tokenizer) -> list[int]:
    """The generation config's EOS ids and the tokenizer's."""
    ids = set()
    configured = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(int(i) for i in configured)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return sorted(ids)
