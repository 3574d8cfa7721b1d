"""Prompt pools: parsing the CSR prompt format and drawing fresh prompts for each round."""
from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

IMAGE_PLACEHOLDER = "<image>"
MAX_INSTRUCTION_CHARS = 8000  # far beyond any real instruction; a cheap guard before any model sees it
WHEN_EXHAUSTED = ("stop", "reuse")  # prompts.when_exhausted: what a round beyond the pool does


class PoolExhausted(ValueError):
    """A round starts beyond the pool and `when_exhausted` is "stop"."""


@dataclass(frozen=True)
class PoolPrompt:
    prompt_id: str
    image: str  # file name relative to the pool's image directory
    instruction: str  # without the image placeholder; the VLM adapter places the image


def parse_pool(rows: Sequence[Any]) -> tuple[list[PoolPrompt], dict[str, str]]:
    """Valid prompts, and {row name: reason} for malformed rows (the rest of the pool stays usable).

    A row is named by its id. The first row with an id owns it: a later row with the same id is
    invalid under its own name (`"<id>#row<index>"`), as is a row without a usable id (`"row-<index>"`),
    so an invalid row never shares a valid prompt's id. Row indices count from 0.
    """
    claimed = {_id_text(row) for row in rows} - {None}
    first_at: dict[str, int] = {}
    names: set[str] = set()
    valid: list[PoolPrompt] = []
    invalid: dict[str, str] = {}
    for index, row in enumerate(rows):
        row_id = _id_text(row)
        if row_id is not None and row_id in first_at:
            name = _fresh_name(f"{row_id}#row{index}", index, claimed | names)
            invalid[name] = f"duplicate id (first at row {first_at[row_id]})"
            names.add(name)
            continue
        if row_id is None:
            name = _fresh_name(f"row-{index}", index, claimed | names)
        else:
            name = row_id
            first_at[row_id] = index
        names.add(name)
        reason = _row_problem(row)
        if reason:
            invalid[name] = reason
            continue
        valid.append(PoolPrompt(name, row["image"], without_image_placeholder(row["input"])))
    return valid, invalid


def without_image_placeholder(text: str) -> str:
    """The instruction without LLaVA's `<image>` placeholder: the adapter (or TRL) places the image itself."""
    return text.replace(IMAGE_PLACEHOLDER, "").strip()


def sample_round(prompt_ids: Sequence[str], n: int, round_: int, seed: int,
                 when_exhausted: str = "stop") -> list[str]:
    """The prompts of round `round_` (1-based); a round never holds a prompt twice.

    Rounds are consecutive slices of one seeded shuffle of the sorted ids (`Random(f"{seed}:0")`), so
    they draw disjoint prompts until the pool runs out. Then, with `when_exhausted`:

    - "stop": the round that reaches the end gets what is left (fewer than n); a round that would start
      beyond the pool raises `PoolExhausted`.
    - "reuse": rounds go on over further shuffles (pass c uses `Random(f"{seed}:{c}")`). A round spanning
      two passes skips the ids it already holds from the first; those move to the end of the second
      pass, so every pass still serves each prompt once. Every round holds min(n, pool) prompts.
    """
    if n <= 0 or round_ < 1:
        raise ValueError(f"need n > 0 and round >= 1, got n={n}, round={round_}")
    if when_exhausted not in WHEN_EXHAUSTED:
        raise ValueError(f"when_exhausted must be one of {WHEN_EXHAUSTED}, got {when_exhausted!r}")
    ordered = sorted(set(prompt_ids))
    start = (round_ - 1) * n
    if when_exhausted == "stop" or start + n <= len(ordered):
        if start >= len(ordered):
            raise PoolExhausted(
                f"prompts: round {round_} needs prompts {start + 1}-{start + n} but the pool has {len(ordered)} "
                "valid prompts; set prompts.when_exhausted=reuse, lower prompts.n_per_round or add prompts")
        return _shuffled(ordered, seed, 0)[start:start + n]
    if not ordered:
        raise PoolExhausted("prompts: the pool has no valid prompts to reuse")
    return _reused_round(ordered, n, round_, seed)


def _reused_round(ordered: list[str], n: int, round_: int, seed: int) -> list[str]:
    """Round `round_` of the "reuse" stream: each round takes the next min(n, pool) prompts."""
    size = min(n, len(ordered))
    current, pass_no, pos = _shuffled(ordered, seed, 0), 0, 0
    picked: list[str] = []
    for _ in range(round_):
        picked = current[pos:pos + size]
        pos += len(picked)
        if len(picked) < size:  # the pass runs out inside this round: continue in the next one
            pass_no += 1
            held = set(picked)
            following = _shuffled(ordered, seed, pass_no)
            need = size - len(picked)
            current = [pid for pid in following if pid not in held] + [pid for pid in following if pid in held]
            picked += current[:need]
            pos = need
    return picked


def _shuffled(ordered: list[str], seed: int, pass_no: int) -> list[str]:
    order = ordered[:]
    random.Random(f"{seed}:{pass_no}").shuffle(order)
    return order


def _id_text(row: Any) -> str | None:
    """A row's id as text, or None when it has none usable as a name (missing, wrong type, not UTF-8)."""
    if not isinstance(row, dict) or "id" not in row:
        return None
    value = row["id"]
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    text = str(value)
    return text if _encodable(text) else None


def _fresh_name(name: str, index: int, taken: set[str]) -> str:
    while name in taken:  # a real id happens to look like a generated name
        name = f"{name}#row{index}"
    return name


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates, as JSON's "\ud800" escapes produce
        return False
    return True


def _row_problem(row: Any) -> str | None:
    if not isinstance(row, dict):
        return f"not an object: {row!r:.60}"
    for name in ("id", "image", "input"):
        if name not in row:
            return f"missing field '{name}'"
    if isinstance(row["id"], bool) or not isinstance(row["id"], str | int):
        return f"id must be a string or an integer, got {type(row['id']).__name__}"
    for name in ("image", "input"):
        if not isinstance(row[name], str):
            return f"{name} must be a string, got {type(row[name]).__name__}"
    for name in ("id", "image", "input"):
        if isinstance(row[name], str) and not _encodable(row[name]):
            return f"{name} not encodable as UTF-8"
    instruction = without_image_placeholder(row["input"])
    if not instruction:
        return "empty instruction"
    if len(instruction) > MAX_INSTRUCTION_CHARS:
        return f"instruction of {len(instruction)} characters; longer than {MAX_INSTRUCTION_CHARS}"
    if not row["image"].strip():
        return "empty image name"
    return None
