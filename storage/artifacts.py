"""Reads and writes of stage artifacts. Each write replaces a slice in one transaction."""
from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from storage.stages import record_items
from storage.store import Store, insert_df, replace_slice


def write_items(
    store: Store,
    table: str,
    key: str,
    frame: pd.DataFrame,
    done: list[str],
    failed: dict[str, str] | None = None,
    item_column: str = "prompt_id",
) -> int:
    """Replace the rows of items `done + failed` in `table` for stage `key`, mark them finished.

    Used by the item-wise stages (generation, relevance): a chunk of items lands whole or not at all,
    so a rerun after a crash resumes exactly at the first unfinished item, with no duplicates.
    """
    ids = list(done) + list(failed or {})
    with store.transaction() as con:
        con.execute(
            f"DELETE FROM {table} WHERE stage_key = ? AND {item_column} IN (SELECT unnest(?))", [key, ids]
        )
        n = insert_df(con, table, frame.assign(stage_key=key) if not frame.empty else frame)
        record_items(con, key, done, failed)
    return n


def replace_stage_rows(store: Store, table: str, key: str, frame: pd.DataFrame) -> int:
    """Replace everything stage `key` wrote to `table`."""
    frame = _portable_column(store, frame, "image_path")
    with store.transaction() as con:
        return replace_slice(con, table, frame.assign(stage_key=key), {"stage_key": key})


def rows_for(store: Store, table: str, key: str, order_by: str = "") -> pd.DataFrame:
    order = f" ORDER BY {order_by}" if order_by else ""
    return _located_column(store, store.df(f"SELECT * FROM {table} WHERE stage_key = ?{order}", [key]), "image_path")


# -- paths -----------------------------------------------------------------------------------
# A file inside the store's folder (the world's images, trained models) is stored relative to that folder,
# so a project moved or copied with its DuckDB file keeps working; files elsewhere keep their absolute path.
def portable_path(store: Store, path: str) -> str:
    return _portable(Path(_store_root(store)), path)


def located_path(store: Store, path: str | None) -> str | None:
    return _located(_store_root(store), path)


def _store_root(store: Store) -> str:
    return str(Path(store.path).resolve().parent)


def _portable(root: Path, path: str) -> str:
    if not path:
        return path
    absolute = Path(path).resolve()
    return str(absolute.relative_to(root)) if absolute.is_relative_to(root) else str(absolute)


def _located(root: str, path: str | None) -> str | None:
    if not path or os.path.isabs(path):
        return path
    return os.path.join(root, path)


def _portable_column(store: Store, frame: pd.DataFrame, column: str) -> pd.DataFrame:
    if column not in frame.columns or frame.empty:
        return frame
    root = Path(_store_root(store))
    return frame.assign(**{column: [_portable(root, p) if isinstance(p, str) else p for p in frame[column]]})


def _located_column(store: Store, frame: pd.DataFrame, column: str) -> pd.DataFrame:
    if column not in frame.columns or frame.empty:
        return frame
    root = _store_root(store)
    return frame.assign(**{column: [_located(root, p) if isinstance(p, str) else p for p in frame[column]]})


# -- prompts ---------------------------------------------------------------------------------
def read_prompts(store: Store, key: str, ok_only: bool = True) -> pd.DataFrame:
    where = " AND status = 'ok'" if ok_only else ""
    frame = store.df(f"SELECT * FROM prompts WHERE stage_key = ?{where} ORDER BY prompt_id", [key])
    return _located_column(store, frame, "image_path")


# -- tree and relevance ----------------------------------------------------------------------
def read_tree(store: Store, key: str, prompt_ids: list[str] | None = None) -> pd.DataFrame:
    sql = "SELECT * FROM tree_nodes WHERE stage_key = ?"
    params: list = [key]
    if prompt_ids is not None:
        sql += " AND prompt_id IN (SELECT unnest(?))"
        params.append(list(prompt_ids))
    return store.df(sql + " ORDER BY prompt_id, node_id", params)


def read_scored_tree(store: Store, tree_key: str, relevance_key: str) -> pd.DataFrame:
    """Tree nodes with their raw relevance cosine (NULL for the root)."""
    return store.df(
        "SELECT n.*, r.cosine FROM tree_nodes n LEFT JOIN relevance_scores r "
        "ON r.stage_key = ? AND r.prompt_id = n.prompt_id AND r.node_id = n.node_id "
        "WHERE n.stage_key = ? ORDER BY n.prompt_id, n.node_id",
        [relevance_key, tree_key],
    )


# -- pairs -----------------------------------------------------------------------------------
def write_path_parts(store: Store, key: str, parts: pd.DataFrame) -> int:
    with store.transaction() as con:
        return replace_slice(con, "path_parts", parts.assign(stage_key=key), {"stage_key": key})


def read_path_parts(store: Store, key: str):
    """The stage's path parts as an Arrow table, ordered by prompt and path (the order pairs are picked in)."""
    return store.arrow("SELECT prompt_id, path_index, n_sentences, self_parts, relevance_parts FROM path_parts "
                       "WHERE stage_key = ? ORDER BY prompt_id, path_index", [key])


def write_rescored(store: Store, key: str, parts_key: str, rewards: pd.DataFrame, pairs: pd.DataFrame) -> int:
    """One λ's path rewards and pairs, joined in SQL to the stored paths (their texts and node ids).

    `rewards`: prompt_id, path_index, self_term, relevance_term, reward; `pairs`: prompts_key, prompt_id, round,
    lam, mode, chosen_index, rejected_index.
    """
    with store.transaction() as con:
        con.register("_csr_rewards", rewards)
        con.register("_csr_pairs", pairs)
        try:
            con.execute("DELETE FROM path_rewards WHERE stage_key = ?", [key])
            con.execute(
                "INSERT INTO path_rewards SELECT ?, p.prompt_id, p.leaf_id, p.node_ids, p.text, p.n_sentences, "
                "r.self_term, r.relevance_term, r.reward FROM path_parts p JOIN _csr_rewards r "
                "ON p.prompt_id = r.prompt_id AND p.path_index = r.path_index WHERE p.stage_key = ?", [key, parts_key])
            con.execute("DELETE FROM preference_pairs WHERE stage_key = ?", [key])
            con.execute(
                "INSERT INTO preference_pairs SELECT ?, x.prompts_key, x.prompt_id, x.round, x.lam, x.mode, c.text, "
                "r.text, cr.reward, rr.reward, c.node_ids, r.node_ids FROM _csr_pairs x "
                "JOIN path_parts c ON c.stage_key = ? AND c.prompt_id = x.prompt_id AND c.path_index = x.chosen_index "
                "JOIN path_parts r ON r.stage_key = ? AND r.prompt_id = x.prompt_id "
                "AND r.path_index = x.rejected_index "
                "JOIN _csr_rewards cr ON cr.prompt_id = x.prompt_id AND cr.path_index = x.chosen_index "
                "JOIN _csr_rewards rr ON rr.prompt_id = x.prompt_id AND rr.path_index = x.rejected_index",
                [key, parts_key, parts_key])
        finally:
            con.unregister("_csr_rewards")
            con.unregister("_csr_pairs")
    return len(pairs)


def write_pairs(store: Store, key: str, paths: pd.DataFrame, pairs: pd.DataFrame) -> int:
    with store.transaction() as con:
        replace_slice(con, "path_rewards", paths.assign(stage_key=key), {"stage_key": key})
        return replace_slice(con, "preference_pairs", pairs.assign(stage_key=key), {"stage_key": key})


def prompt_rounds(store: Store, key: str) -> pd.Series:
    """prompt id -> round, for the valid prompts of a sampling stage."""
    frame = store.df("SELECT prompt_id, round FROM prompts WHERE stage_key = ? AND status = 'ok'", [key])
    return frame.set_index("prompt_id")["round"]


def read_pair_texts(store: Store, pairs_key: str) -> pd.DataFrame:
    """prompt_id, round, chosen, rejected of a pairs stage (no images, no join)."""
    return store.df("SELECT prompt_id, round, chosen, rejected FROM preference_pairs WHERE stage_key = ? "
                    "ORDER BY prompt_id", [pairs_key])


def read_pairs(store: Store, pairs_key: str) -> pd.DataFrame:
    frame = store.df("SELECT * FROM preference_pairs_v WHERE pairs_key = ? ORDER BY prompt_id", [pairs_key])
    return _located_column(store, frame, "image_path")


# -- models and training ---------------------------------------------------------------------
def register_model(store: Store, model_key: str, path: str, round_: int,
                   parent_key: str | None = None, pairs_key: str | None = None) -> None:
    now = datetime.now(UTC).replace(tzinfo=None)
    with store.transaction() as con:
        con.execute(
            "INSERT INTO models VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (model_key) DO UPDATE SET "
            "path = excluded.path, parent_key = excluded.parent_key, pairs_key = excluded.pairs_key, "
            "round = excluded.round",
            [model_key, portable_path(store, path), parent_key, pairs_key, round_, now],
        )


def model_path(store: Store, model_key: str) -> str | None:
    return located_path(store, store.scalar("SELECT path FROM models WHERE model_key = ?", [model_key]))


def append_training_metrics(store: Store, key: str, step: int, metrics: dict[str, float]) -> None:
    """Idempotent per step: a resumed training that logs a step again replaces it."""
    frame = pd.DataFrame({"stage_key": key, "step": step, "name": list(metrics),
                          "value": [float(v) for v in metrics.values()]})
    with store.transaction() as con:
        con.execute("DELETE FROM training_metrics WHERE stage_key = ? AND step = ?", [key, step])
        insert_df(con, "training_metrics", frame)


def write_training_run(store: Store, key: str, record: dict) -> None:
    with store.transaction() as con:
        replace_slice(con, "training_runs", pd.DataFrame([{**record, "stage_key": key}]), {"stage_key": key})


# -- evaluation ------------------------------------------------------------------------------
def write_eval(store: Store, key: str, results: pd.DataFrame, responses: pd.DataFrame,
               failed: dict[str, str] | None = None, items: pd.DataFrame | None = None) -> None:
    """An evaluation's metrics and responses, the items it described (`eval_items`, role describe), and the
    items left out (`stage_items`, status failed)."""
    with store.transaction() as con:
        replace_slice(con, "eval_results", results.assign(stage_key=key), {"stage_key": key})
        replace_slice(con, "eval_responses", responses.assign(stage_key=key), {"stage_key": key})
        replace_slice(con, "eval_items", _with_key(items, key), {"stage_key": key})
        con.execute("DELETE FROM stage_items WHERE stage_key = ?", [key])
        record_items(con, key, [], failed or {})


def write_eval_set(store: Store, key: str, items: pd.DataFrame, questions: pd.DataFrame) -> None:
    """A benchmark's exact sample: its items (`eval_items`) and POPE questions (`eval_questions`)."""
    with store.transaction() as con:
        replace_slice(con, "eval_items", _with_key(items, key), {"stage_key": key})
        replace_slice(con, "eval_questions", _with_key(questions, key), {"stage_key": key})


def read_eval_items(store: Store, key: str, role: str = "describe") -> pd.DataFrame:
    return store.df("SELECT item_id, image, objects FROM eval_items WHERE stage_key = ? AND role = ? "
                    "ORDER BY position", [key, role])


def read_eval_questions(store: Store, key: str) -> pd.DataFrame:
    return store.df("SELECT split, question_id, item_id, image, question, object, label FROM eval_questions "
                    "WHERE stage_key = ? ORDER BY split, position", [key])


def _with_key(frame: pd.DataFrame | None, key: str) -> pd.DataFrame:
    return frame.assign(stage_key=key) if frame is not None and not frame.empty else pd.DataFrame()
