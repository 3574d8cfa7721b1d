"""Stored preference pairs out of DuckDB, as a dataset other tools train on."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from storage.artifacts import read_pairs
from storage.reports import newest_pairs_key
from storage.store import Store
from tasks.io import dpo_examples

FORMATS = ("trl",)


@dataclass(frozen=True)
class Exported:
    path: Path
    pairs_key: str
    n_pairs: int


def export_pairs(db: str, out_path: str | Path, pairs_key: str | None = None, fmt: str = "trl") -> Exported:
    """Write the pairs of `pairs_key` (default: the newest pairs stage) as a TRL preference dataset (Parquet)."""
    from training.export import export_trl

    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    store = Store(db, read_only=True)
    try:
        key = pairs_key or newest_pairs_key(store)
        if key is None:
            raise LookupError(f"no preference pairs stored in {db} (run `csr run` first)")
        rows = read_pairs(store, key)
    finally:
        store.close()
    if rows.empty:
        raise LookupError(f"no preference pairs under {key} in {db}")
    pairs = dpo_examples(rows)
    return Exported(export_trl(pairs, out_path), key, len(pairs))

