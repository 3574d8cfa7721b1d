"""The stages table: which stage keys exist, their status, and per-item progress."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime

import pandas as pd

from csr_core import __version__
from csr_core.keys import canonical_json
from storage.store import Store, insert_df


@dataclass(frozen=True)
class StageRecord:
    stage_key: str
    stage: str
    status: str
    config: dict
    upstream: dict
    n_items: int | None
    n_done: int
    n_failed: int
    error: str | None


def get_stage(store: Store, key: str) -> StageRecord | None:
    rows = store.rows(
        "SELECT stage_key, stage, status, config, upstream, n_items, n_done, n_failed, error "
        "FROM stages WHERE stage_key = ?",
        [key],
    )
    if not rows:
        return None
    key_, stage, status, config, upstream, n_items, n_done, n_failed, error = rows[0]
    return StageRecord(key_, stage, status, json.loads(config), json.loads(upstream),
                       n_items, n_done or 0, n_failed or 0, error)


def is_complete(store: Store, key: str) -> bool:
    record = get_stage(store, key)
    return record is not None and record.status == "complete"


def begin_stage(store: Store, stage: str, key: str, config, upstream: dict, n_items: int | None = None) -> None:
    """Mark a stage running (a rerun keeps its finished items, which is how it resumes)."""
    now = _now()
    with store.transaction() as con:
        con.execute(
            "INSERT INTO stages (stage_key, stage, config, upstream, csr_version, status, n_items, started_at, pid) "
            "VALUES (?, ?, ?, ?, ?, 'running', ?, ?, ?) "
            "ON CONFLICT (stage_key) DO UPDATE SET status = 'running', n_items = excluded.n_items, "
            "started_at = excluded.started_at, ended_at = NULL, error = NULL, pid = excluded.pid",
            [key, stage, canonical_json(config), canonical_json(upstream), __version__, n_items, now, os.getpid()],
        )


def finished_items(store: Store, key: str, *, retry_failed: bool = False) -> set[str]:
    """Items already done or failed; with `retry_failed`, only the done ones (failed ones run again)."""
    sql = "SELECT item_id FROM stage_items WHERE stage_key = ?" + (" AND status = 'done'" if retry_failed else "")
    return {row[0] for row in store.rows(sql, [key])}


def n_failed_items(store: Store, key: str) -> int:
    return int(store.scalar("SELECT count(*) FROM stage_items WHERE stage_key = ? AND status = 'failed'", [key]))


def record_items(con, key: str, done: list[str], failed: dict[str, str] | None = None) -> None:
    """Within the caller's transaction: mark items done or failed (with the reason)."""
    failed = failed or {}
    ids = list(done) + list(failed)
    if not ids:
        return
    con.execute("DELETE FROM stage_items WHERE stage_key = ? AND item_id IN (SELECT unnest(?))", [key, ids])
    now = _now()
    frame = pd.DataFrame({
        "stage_key": key,
        "item_id": ids,
        "status": ["done"] * len(done) + ["failed"] * len(failed),
        "error": [None] * len(done) + list(failed.values()),
        "updated_at": now,
    })
    insert_df(con, "stage_items", frame)


def item_errors(store: Store, key: str) -> list[tuple[str, str]]:
    return store.rows(
        "SELECT item_id, error FROM stage_items WHERE stage_key = ? AND status = 'failed' ORDER BY item_id", [key]
    )


def finish_stage(store: Store, key: str, status: str = "complete", error: str | None = None) -> None:
    with store.transaction() as con:
        con.execute(
            "UPDATE stages SET status = ?, error = ?, ended_at = ?, "
            "seconds = date_diff('millisecond', started_at, ?) / 1000.0, "
            "n_done = (SELECT count(*) FROM stage_items i WHERE i.stage_key = ? AND i.status = 'done'), "
            "n_failed = (SELECT count(*) FROM stage_items i WHERE i.stage_key = ? AND i.status = 'failed') "
            "WHERE stage_key = ?",
            [status, error, _now(), _now(), key, key, key],
        )


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def find_stages(store: Store, stage: str, *, status: str = "complete", **upstream: str) -> list[StageRecord]:
    """Stage records of one kind, newest first, optionally matching upstream keys (e.g. tree=KEY)."""
    sql = "SELECT stage_key FROM stages WHERE stage = ? AND status = ?"
    params: list = [stage, status]
    for name, value in upstream.items():
        sql += " AND json_extract_string(upstream, ?) = ?"
        params += [f"$.{name}", value]
    keys = [row[0] for row in store.rows(sql + " ORDER BY started_at DESC", params)]
    return [record for record in (get_stage(store, key) for key in keys) if record is not None]


def scored_candidates(store: Store, round_: int | None = None, tree_key: str | None = None) -> list[dict[str, str]]:
    """The complete (tree, relevance, prompts) key triples stored, newest first, optionally filtered."""
    found = []
    for relevance in find_stages(store, "score_relevance"):
        tree = get_stage(store, relevance.upstream["tree"])
        if tree is None or tree.status != "complete" or (tree_key and tree.stage_key != tree_key):
            continue
        prompts = get_stage(store, tree.upstream["prompts"])
        if round_ is not None and (prompts is None or prompts.config.get("round") != round_):
            continue
        found.append({"tree": tree.stage_key, "relevance": relevance.stage_key, "prompts": tree.upstream["prompts"]})
    return found
