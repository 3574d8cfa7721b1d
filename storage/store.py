"""The DuckDB artifact store: one file, one writing process, versioned schema.

All SQL of the project lives in this package. Writes replace a stage's slice (delete by stage key,
then bulk insert a DataFrame) inside one transaction, so a crash never leaves half a slice behind.
"""
from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from importlib import resources
from pathlib import Path

import duckdb
import pandas as pd

SCHEMA_VERSION = 2


class StoreLockedError(RuntimeError):
    """Another process holds the DuckDB file."""


class Store:
    """A connection to the artifact store. Thread-safe for the writes of one process."""

    def __init__(self, path: str | Path, *, read_only: bool = False):
        self.path = str(path)
        self.read_only = read_only
        self._lock = threading.RLock()
        self.con = _connect(self.path, read_only)
        if not read_only:
            migrate(self.con)

    def close(self) -> None:
        self.con.close()

    # -- queries -----------------------------------------------------------------------------
    def df(self, sql: str, params: list | tuple | None = None) -> pd.DataFrame:
        with self._lock:
            return self.con.execute(sql, params or []).df()

    def rows(self, sql: str, params: list | tuple | None = None) -> list[tuple]:
        with self._lock:
            return self.con.execute(sql, params or []).fetchall()

    def scalar(self, sql: str, params: list | tuple | None = None):
        rows = self.rows(sql, params)
        return rows[0][0] if rows else None

    # -- writes ------------------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self._lock:
            self.con.execute("BEGIN TRANSACTION")
            try:
                yield self.con
            except BaseException:
                self.con.execute("ROLLBACK")
                raise
            self.con.execute("COMMIT")

    def execute(self, sql: str, params: list | tuple | None = None) -> None:
        with self._lock:
            self.con.execute(sql, params or [])


def insert_df(con: duckdb.DuckDBPyConnection, table: str, frame: pd.DataFrame) -> int:
    """Bulk-insert a DataFrame by column name (DuckDB scans it as Arrow, not row by row)."""
    if frame.empty:
        return 0
    _check_identifier(table)
    cols = ", ".join(f'"{c}"' for c in frame.columns)
    con.register("_csr_frame", frame)
    try:
        con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM _csr_frame")
    finally:
        with suppress(duckdb.Error):  # in an aborted transaction; the insert's own error is the one to see
            con.unregister("_csr_frame")
    return len(frame)


def replace_slice(con, table: str, frame: pd.DataFrame, where: dict[str, object]) -> int:
    """Delete the rows matching `where` (column = value, bound), then insert `frame`."""
    _check_identifier(table)
    clause = " AND ".join(f'"{_check_identifier(c)}" = ?' for c in where)
    con.execute(f"DELETE FROM {table} WHERE {clause}", list(where.values()))
    return insert_df(con, table, frame)


def migrate(con: duckdb.DuckDBPyConnection) -> int:
    """Apply the numbered migrations not yet recorded in schema_version; recreate views."""
    con.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at TIMESTAMP)")
    current = con.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]
    if current > SCHEMA_VERSION:
        raise RuntimeError(
            f"the database has schema version {current}, newer than this csr ({SCHEMA_VERSION}); upgrade csr"
        )
    for version, sql in _migrations():
        if version > current:
            con.execute("BEGIN TRANSACTION")
            con.execute(sql)
            con.execute("INSERT INTO schema_version VALUES (?, now())", [version])
            con.execute("COMMIT")
    con.execute(resources.files("storage").joinpath("views.sql").read_text())
    return SCHEMA_VERSION


def _migrations() -> list[tuple[int, str]]:
    folder = resources.files("storage").joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        match = re.match(r"(\d+)_.*\.sql$", entry.name)
        if match:
            found.append((int(match.group(1)), entry.read_text()))
    return sorted(found)


def _connect(path: str, read_only: bool) -> duckdb.DuckDBPyConnection:
    if read_only and not Path(path).exists():
        raise FileNotFoundError(f"no csr database at {path} (run `csr run` first, or pass --db)")
    if not read_only:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        return duckdb.connect(path, read_only=read_only)
    except duckdb.IOException as exc:
        raise StoreLockedError(_lock_message(path, str(exc))) from None


def _lock_message(path: str, error: str) -> str:
    holder = re.search(r"held in (.+?) \(PID (\d+)\)", error)
    if holder:
        return (
            f"the database {path} is in use by another process: {holder.group(1)} (PID {holder.group(2)}). "
            "Wait for it to finish, or pass --db to use another file."
        )
    return f"cannot open the database {path}: {error.splitlines()[0]}"


def _check_identifier(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"not a plain SQL identifier: {name!r}")
    return name


def query_rows(path: str | Path, sql: str, params: list | tuple | None = None) -> list[tuple]:
    """One read-only query against a database file that no process is writing."""
    store = Store(path, read_only=True)
    try:
        return store.rows(sql, params)
    finally:
        store.close()


_OPEN: dict[str, Store] = {}
_OPEN_LOCK = threading.Lock()


def open_store(path: str | Path) -> Store:
    """The process's single writing connection to `path` (opened once, then shared by tasks)."""
    key = str(Path(path).resolve())
    with _OPEN_LOCK:
        if key not in _OPEN:
            _OPEN[key] = Store(path)
        return _OPEN[key]


def close_all() -> None:
    with _OPEN_LOCK:
        for store in _OPEN.values():
            store.close()
        _OPEN.clear()
