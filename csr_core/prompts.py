"""Prompt pools: parsing the CSR prompt format and drawing fresh prompts for each round."""
from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

IMAGE_PLACEHOLDER = "<image>"


@dataclass(frozen=True)
class PoolPrompt:
    prompt_id: str
    image: str  # file name relative to the pool's image directory
    instruction: str  # without the image placeholder; the VLM adapter places the image


def parse_pool(rows: Sequence[Any]) -> tuple[list[PoolPrompt], dict[str, str]]:
    """Valid prompts, and {row id: reason} for malformed rows (the rest of the pool stays usable)."""
    valid: list[PoolPrompt] = []
    invalid: dict[str, str] = {}
    seen: set[str] = set()
    for index, row in enumerate(rows):
        row_id = str(row.get("id", f"row-{index}")) if isinstance(row, dict) else f"row-{index}"
        reason = _row_problem(row, seen)
        if reason:
            invalid[row_id] = reason
            continue
        seen.add(row_id)
        valid.append(PoolPrompt(row_id, str(row["image"]), without_image_placeholder(row["input"])))
    return valid, invalid


def without_image_placeholder(text: str) -> str:
    """The instruction without LLaVA's `<image>` placeholder: the adapter (or TRL) places the image itself."""
    return text.replace(IMAGE_PLACEHOLDER, "").strip()


def sample_round(prompt_ids: Sequence[str], n: int, round_: int, seed: int) -> list[str]:
    """The prompts of round `round_` (1-based): consecutive slices of one seeded shuffle of the pool.

    Rounds therefore see disjoint prompts until the pool runs out; after that a new shuffle
    (seed + pass number) continues, so a small pool still serves every round.
    """
    if n <= 0 or round_ < 1:
        raise ValueError(f"need n > 0 and round >= 1, got n={n}, round={round_}")
    if not prompt_ids:
        return []
    ordered = sorted(prompt_ids)
    start = (round_ - 1) * n
    picked: list[str] = []
    while len(picked) < min(n, len(ordered)):
        cycle, offset = divmod(start + len(picked), len(ordered))
        order = ordered[:]
        random.Random(f"{seed}:{cycle}").shuffle(order)
        picked.append(order[offset])
    return picked


def _row_problem(row: Any, seen: set[str]) -> str | None:
    if not isinstance(row, dict):
        return f"not an object: {row!r:.60}"
    for name in ("id", "image", "input"):
        if name not in row:
            return f"missing field '{name}'"
    if not isinstance(row["input"], str) or not without_image_placeholder(row["input"]):
        return "empty instruction"
    if not isinstance(row["image"], str) or not row["image"].strip():
        return "empty image name"
    if str(row["id"]) in seen:
        return "duplicate id"
    return None
