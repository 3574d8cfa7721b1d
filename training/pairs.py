"""Preference pairs as TRL's conversational vision preference rows (images, prompt, chosen, rejected)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from csr_core.prompts import without_image_placeholder


@dataclass(frozen=True)
class DPOExample:
    """One DPO training example from a selected pair: image, instruction, chosen and rejected responses."""

    image: Image.Image
    prompt: str
    chosen: str
    rejected: str


def trl_row(pair: DPOExample, eos_token: str = "") -> dict:
    """TRL's conversational vision preference format: string contents; TRL puts the image before the text.

    `eos_token` closes both responses. TRL adds no EOS to conversational rows and llava-1.5's chat template
    ends an assistant turn with a space, not `</s>`; without it DPO never sees where the chosen response
    stops and the rejected one goes on, which is exactly where an appended hallucination starts.
    """
    return {
        "images": [pair.image.convert("RGB")],
        "prompt": [{"role": "user", "content": without_image_placeholder(pair.prompt)}],
        "chosen": [{"role": "assistant", "content": _closed(pair.chosen, eos_token)}],
        "rejected": [{"role": "assistant", "content": _closed(pair.rejected, eos_token)}],
    }


def _closed(response: str, eos_token: str) -> str:
    return response if not eos_token or response.endswith(eos_token) else response + eos_token


def trl_dataset(pairs: Sequence[DPOExample], eos_token: str = "", crop_boxes: Sequence[list[float]] = ()):
    """A `datasets.Dataset` of TRL rows, with images typed as the `Image` feature; `crop_boxes` (one per pair)
    add a `crop_box` column for the image-conditional DPO term."""
    from datasets import Dataset, List
    from datasets import Image as ImageFeature

    if not pairs:
        raise ValueError("pairs: need at least one preference pair")
    rows = [trl_row(p, eos_token) for p in pairs]
    if crop_boxes:
        rows = [{**row, "crop_box": box} for row, box in zip(rows, crop_boxes, strict=True)]
    dataset = Dataset.from_list(rows)
    return dataset.cast_column("images", List(ImageFeature()))
