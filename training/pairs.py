"""Preference pairs as TRL's conversational vision preference rows (images, prompt, chosen, rejected)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

IMAGE_PLACEHOLDER = "<image>"


@dataclass(frozen=True)
class PreferencePair:
    """One selected pair: the image, the user's instruction, and the chosen and rejected responses."""

    image: Image.Image
    prompt: str
    chosen: str
    rejected: str


def instruction_text(prompt: str) -> str:
    """The instruction without LLaVA's `<image>` placeholder: TRL inserts the image itself."""
    return prompt.replace(IMAGE_PLACEHOLDER, "").strip()


def trl_row(pair: PreferencePair) -> dict:
    """TRL's conversational vision preference format: string contents; TRL puts the image before the text."""
    return {
        "images": [pair.image.convert("RGB")],
        "prompt": [{"role": "user", "content": instruction_text(pair.prompt)}],
        "chosen": [{"role": "assistant", "content": pair.chosen}],
        "rejected": [{"role": "assistant", "content": pair.rejected}],
    }


def trl_dataset(pairs: Sequence[PreferencePair]):
    """A `datasets.Dataset` of TRL rows, with images typed as the `Image` feature."""
    from datasets import Dataset, List
    from datasets import Image as ImageFeature

    if not pairs:
        raise ValueError("pairs: need at least one preference pair")
    dataset = Dataset.from_list([trl_row(p) for p in pairs])
    return dataset.cast_column("images", List(ImageFeature()))
