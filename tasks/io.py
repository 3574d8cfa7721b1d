"""Reading the user's files for the stages: images (as RGB), ground truth, eval items, DPO examples.

An unreadable prompt image becomes a recorded failure of its item, not a crash of the stage.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from csr_core.evaluation import EvalItem
from csr_core.metrics import ObjectVocab

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def load_rgb(path: str | Path) -> Image.Image:
    """An image file as 8-bit RGB; high-bit-depth images are scaled to 8 bits first, not clipped."""
    with Image.open(path) as image:
        image.load()
        if image.mode in (*SIXTEEN_BIT_MODES, "I", "F"):
            image = to_8bit(image)
        return image.convert("RGB")


def to_8bit(image: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit integer or float image as 8-bit grayscale (mode L), scaled linearly.

    16-bit modes use their range 0..65535 (65535 -> 255, 32768 -> 128). Mode I is how older Pillow opens
    16-bit PNGs and TIFFs, so it uses 0..65535 too when its values fit; mode F uses 0..1 when its
    values fit. Other values (no range of their own) are scaled from the image's minimum to its maximum.
    (Pillow's own conversion clips at 255: a 16-bit image turns almost white.)
    """
    values = np.nan_to_num(np.asarray(image).astype(np.float64))
    low, high = 0.0, {"F": 1.0}.get(image.mode, 65535.0)
    if image.mode not in SIXTEEN_BIT_MODES and values.size and (values.min() < low or values.max() > high):
        low, high = float(values.min()), float(values.max())
    scaled = (values - low) * 255.0 / (high - low) if high > low else np.zeros_like(values)
    return Image.fromarray(np.clip(np.floor(scaled + 0.5), 0, 255).astype(np.uint8))  # halves round up


def load_images(prompts: pd.DataFrame, chunk: list[str]) -> tuple[dict[str, Image.Image], dict[str, str]]:
    """RGB images of a chunk's prompts, and {prompt id: reason} for those that cannot be read."""
    images, failed = {}, {}
    for pid in chunk:
        path = prompts.loc[pid, "image_path"]
        try:
            images[pid] = load_rgb(path)
        except Exception as exc:
            failed[pid] = f"cannot read image {path}: {type(exc).__name__}: {exc}"
    return images, failed


def load_vocab(path: str) -> ObjectVocab:
    """An object vocabulary file: `{canonical: [surface forms]}`, or `{"objects": {canonical: [forms]},
    "ignore": [phrases], "drop_with": {form: [forms]}}` (the COCO table's layout, csr_core/data/coco_synonyms.json).
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if isinstance(data, dict) and isinstance(data.get("objects"), dict):
            return ObjectVocab({name: tuple(forms) for name, forms in data["objects"].items()},
                               tuple(data.get("ignore", ())),
                               {form: tuple(triggers) for form, triggers in data.get("drop_with", {}).items()})
        return ObjectVocab({name: tuple(forms) for name, forms in data.items()})
    except (ValueError, AttributeError, TypeError) as error:  # JSON, layout, or a form owned twice
        raise ValueError(f"object vocabulary {path}: {error}") from None


def pool_truth(pool_file: str) -> dict[str, list[str]]:
    """Ground-truth objects per prompt id of a pool that has them (the world's pool.json does); else {}."""
    if not Path(pool_file).is_file():
        return {}
    rows = json.loads(Path(pool_file).read_text())
    return {str(r["id"]): r["objects"] for r in rows if isinstance(r, dict) and "objects" in r}


def load_eval_items(source: str, image_dir: str, n_items: int) -> tuple[list[EvalItem], dict[str, str]]:
    """The first `n_items` eval items with their images, and {item id: reason} for images that cannot be read."""
    items, failed = [], {}
    for row in json.loads(Path(source).read_text())[:n_items]:
        path = Path(image_dir) / row["image"]
        try:
            image = load_rgb(path)
        except Exception as exc:  # PIL raises many types for corrupt files
            failed[str(row["id"])] = f"cannot read image {path}: {type(exc).__name__}: {exc}"
            continue
        items.append(EvalItem(str(row["id"]), image, frozenset(row["objects"]),
                              frozenset(row.get("theme_objects", ())), image_name=str(row["image"])))
    return items, failed


def dpo_examples(pairs: pd.DataFrame) -> list:
    """The stored pairs (`read_pairs` rows) as DPO examples with their images loaded."""
    from training.pairs import DPOExample

    return [DPOExample(load_rgb(r.image_path), r.instruction, r.chosen, r.rejected) for r in pairs.itertuples()]
