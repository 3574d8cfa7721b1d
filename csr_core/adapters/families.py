"""The VLM families csr runs, keyed by `config.model_type`, and what each does differently.

One adapter (`adapters/vlm.py: VLMAdapter`) serves them all; an entry here says only what differs: how the
processor takes a batch's images, how positions continue after a cached prefix, and where the language
model's decoder sits (for LoRA). Everything else (chat templates, image tokens, extra tensors such as
Gemma 3's `token_type_ids` or Idefics3's `pixel_attention_mask`) comes from the model's own processor.

This module does not know about models or tensors; it reads a `config.json` at most.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    # Qwen's multimodal RoPE: image tokens take 3-D (t, h, w) positions, so the text after an image continues
    # from `rope_deltas` past its token index, and a cached prefix must hand the tail that offset
    mrope: bool = False
    # the processor wants one list of images per prompt; a flat list would put every image into every prompt
    images_per_prompt: bool = False
    # the module (path component) holding the language model's decoder layers, for `dpo.lora_scope`
    decoder_scope: str = "language_model"
    notes: str = ""


FAMILIES: tuple[Family, ...] = (
    Family("LLaVA-1.5", ("llava",), notes="USER: <image>\\n... ASSISTANT:"),
    Family("LLaVA-NeXT", ("llava_next",), notes="anyres tiles: the processor returns image_sizes"),
    Family("LLaVA-OneVision", ("llava_onevision",), notes="Qwen2 chat template, anyres-max tiles"),
    Family("Qwen2-VL", ("qwen2_vl",), mrope=True, notes="image_grid_thw; <|im_end|> ends a turn"),
    Family("Qwen2.5-VL", ("qwen2_5_vl",), mrope=True, notes="image_grid_thw; <|im_end|> ends a turn"),
    Family("Qwen3-VL", ("qwen3_vl",), mrope=True, notes="image_grid_thw; deepstack features in the prefix"),
    Family("Gemma 3", ("gemma3",), images_per_prompt=True,
           notes="token_type_ids make image tokens attend both ways; <end_of_turn> ends a turn"),
    Family("Idefics3 / SmolVLM", ("idefics3", "smolvlm"), images_per_prompt=True, decoder_scope="text_model",
           notes="image splitting into row/column crops; pixel_attention_mask"),
)

_BY_MODEL_TYPE = {model_type: family for family in FAMILIES for model_type in family.model_types}
SUPPORTED_MODEL_TYPES = tuple(_BY_MODEL_TYPE)


class UnsupportedFamilyError(ValueError):
    """A model whose `model_type` csr has no family entry for: its search and odds would not be exact."""


def family_for(model_type: str | None) -> Family:
    family = _BY_MODEL_TYPE.get(model_type or "")
    if family is None:
        raise UnsupportedFamilyError(
            f"model_type {model_type!r} is not a supported VLM family; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    return family


def model_type_of(model_dir: str | Path) -> str | None:
    """`model_type` from a save_pretrained dir's config.json (None when it has none)."""
    config = Path(model_dir) / "config.json"
    try:
        return json.loads(config.read_text()).get("model_type")
    except (OSError, ValueError) as error:
        raise ValueError(f"{config}: cannot read the model's config ({error})") from None
