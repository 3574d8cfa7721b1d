"""`csr backup`: a consistent copy of the store, also while a run writes it.

A read-only connection takes DuckDB's shared lock, so the writer waits (it retries) while the bytes are
copied; between writes the file holds everything (the writer checkpoints as its connection closes). A WAL
left by a writer that died mid-write is copied beside it, so the copy replays it as the original would.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from storage.store import Store


@dataclass(frozen=True)
class Backup:
    path: Path
    n_stages: int
    bytes: int


def backup(db: str | Path, dest: str | Path) -> Backup:
    source, target = Path(db), Path(dest)
    if target.resolve() == source.resolve():
        raise ValueError(f"backup: the destination is the store itself: {target}")
    if target.exists():
        raise ValueError(f"backup: {target} exists; choose a new file")
    target.parent.mkdir(parents=True, exist_ok=True)
    store = Store(source, read_only=True)
    try:
        with store.session():
            partial = target.with_name(target.name + ".partial")
            shutil.copyfile(source, partial)
            wal = source.with_name(source.name + ".wal")
            if wal.exists():
                shutil.copyfile(wal, partial.with_name(target.name + ".wal"))
            partial.rename(target)
    finally:
        store.close()
    copy = Store(target, read_only=True)
    try:
        n_stages = int(copy.scalar("SELECT count(*) FROM stages"))
    finally:
        copy.close()
    return Backup(target, n_stages, target.stat().st_size)
