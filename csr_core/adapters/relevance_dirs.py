"""Which relevance scorer a model directory holds, read from its config files alone.

No torch here: the pre-run check (`flows/inputs.py`) and the relevance stage's key use it before any model loads.
"""

from __future__ import annotations

import json
from pathlib import Path

OPEN_CLIP = "open_clip"
HF_CLIP, HF_SIGLIP, HF_SIGLIP2 = "hf-clip", "hf-siglip", "hf-siglip2"
HF_KIND_OF_MODEL_TYPE = {"clip": HF_CLIP, "siglip": HF_SIGLIP, "siglip2": HF_SIGLIP2}
EXPECTED = ("expected an open_clip local dir (open_clip_config.json + open_clip_model.safetensors) or a transformers "
            "CLIPModel, SiglipModel or Siglip2Model save_pretrained dir (config.json with model_type clip, siglip "
            "or siglip2 + model.safetensors)")


class UnknownScorerDirError(ValueError):
    """A directory that holds no relevance scorer csr can load."""


def scorer_kind(model_dir: str | Path) -> str:
    """`open_clip` when the dir has `open_clip_config.json`, else `hf-clip`, `hf-siglip` or `hf-siglip2` from its
    `config.json`'s `model_type`; anything else raises `UnknownScorerDirError` naming the dir and what was expected."""
    root = Path(model_dir)
    if (root / "open_clip_config.json").is_file():
        return OPEN_CLIP
    config = root / "config.json"
    if not config.is_file():
        raise UnknownScorerDirError(f"no open_clip_config.json in {root} and no config.json: {EXPECTED}")
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as error:
        raise UnknownScorerDirError(f"unreadable {config} ({error}): {EXPECTED}") from None
    if model_type not in HF_KIND_OF_MODEL_TYPE:
        raise UnknownScorerDirError(f"{config} has model_type {model_type!r}, not clip, siglip or siglip2: {EXPECTED}")
    return HF_KIND_OF_MODEL_TYPE[model_type]
