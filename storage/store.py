"""The DuckDB artifact store: one file, one writing process, versioned schema.

All SQL of the project lives in this package. Writes replace a stage's slice (delete by stage key,
then bulk insert a DataFrame) inside one transaction, so a crash never leaves half a slice behind.
"""
from __future__ import annotations

import atexit
import fcntl
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from importlib import resources
from pathlib import Path

import duckdb
import pandas as pd

SCHEMA_VERSION = 5


# How long a writer waits for readers to let go of the file, and a reader for a write to end
# (CSR_DB_WAIT_S overrides both).
WRITER_WAIT_S = 60.0
READER_WAIT_S = 30.0


class StoreLockedError(RuntimeError):
    """Another process holds the DuckDB file (or its writer lock)."""


class Store:
    """The artifact store at `path`: a connection opened per operation, so other processes can read between.

    A writer (`read_only=False`) holds `<path>.lock` for its whole life, the one-writer rule, but holds the
    DuckDB file itself only inside `session()` (a query, a transaction, or a caller's batch of them). When the
    last session ends the connection closes, which checkpoints the WAL into the file: whenever no write is in
    flight, the `.duckdb` file alone is the complete store. Readers retry while a write holds the file.
    `sandbox` (readers only) turns off DuckDB's access to anything but this file: no COPY TO, no reading other
    files, no ATTACH, no INSTALL, and the setting cannot be changed back.
    """

    def __init__(self, path: str | Path, *, read_only: bool = False, sandbox: bool = False):
        self.path = str(path)
        self.read_only = read_only
        self.config = {"enable_external_access": False, "lock_configuration": True} if sandbox else {}
        self._lock = threading.RLock()
        self._con: duckdb.DuckDBPyConnection | None = None
        self._depth = 0
        self._writer_lock: WriterLock | None = None
        if read_only:
            if not Path(self.path).exists():
                raise FileNotFoundError(f"no csr database at {self.path} (run `csr run` first, or pass --db)")
            return
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._writer_lock = WriterLock(self.path)
        try:
            with self.session() as con:
                migrate(con)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        with self._lock:
            if self._con is not None:
                self._con.close()
                self._con, self._depth = None, 0
            if self._writer_lock is not None:
                self._writer_lock.release()
                self._writer_lock = None

    @contextmanager
    def session(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """The connection, held until the outermost session ends (then closed and checkpointed)."""
        with self._lock:
            if self._con is None:
                self._con = _connect(self.path, self.read_only, self.config)
            self._depth += 1
            try:
                yield self._con
            finally:
                self._depth -= 1
                if self._depth == 0 and self._con is not None:
                    self._con.close()
                    self._con = None

    # -- queries -----------------------------------------------------------------------------
    def df(self, sql: str, params: list | tuple | None = None) -> pd.DataFrame:
        with self.session() as con:
            return con.execute(sql, params or []).df()

    def rows(self, sql: str, params: list | tuple | None = None) -> list[tuple]:
        with self.session() as con:
            return con.execute(sql, params or []).fetchall()

    def arrow(self, sql: str, params: list | tuple | None = None):
        """The result as a pyarrow Table (list columns stay flat arrays, cheap to turn into numpy)."""
        with self.session() as con:
            return con.sql(sql, params=params or None).to_arrow_table()

    def scalar(self, sql: str, params: list | tuple | None = None):
        rows = self.rows(sql, params)
        return rows[0][0] if rows else None

    # -- writes ------------------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self.session() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def execute(self, sql: str, params: list | tuple | None = None) -> None:
        with self.session() as con:
            con.execute(sql, params or [])


class WriterLock:
    """`<db>.lock`, held with flock by the one process that writes the store; it says who holds it.

    The kernel drops the lock when the process dies, however it dies, so a killed run never wedges the next.
    """

    def __init__(self, db_path: str, wait_s: float = 2.0):
        self.path = db_path + ".lock"
        self._file = open(self.path, "a+")  # noqa: SIM115 - held for the life of the writer
        deadline = time.monotonic() + wait_s  # a reader's look at the lock (writer_running) takes an instant
        while True:
            try:
                fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    holder = lock_holder(db_path) or "another process"
                    self._file.close()
                    raise StoreLockedError(
                        f"the database {db_path} is in use by another process: {holder}. "
                        "Wait for it to finish, or pass --db to use another file.") from None
                time.sleep(0.05)
        self._file.truncate(0)
        self._file.write(f"PID {os.getpid()} ({' '.join(sys.argv)[:200]}) since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        self._file.flush()

    def release(self) -> None:
        if not self._file.closed:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()


def lock_holder(db_path: str) -> str | None:
    """Who last took the writer lock of `db_path` (the lock file's text), if anyone did."""
    with suppress(OSError):
        return Path(db_path + ".lock").read_text().strip() or None
    return None


def writer_running(db_path: str) -> bool:
    """Whether a process holds the writer lock of `db_path` now."""
    try:
        with open(db_path + ".lock", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(handle, fcntl.LOCK_UN)
            return False
    except BlockingIOError:
        return True
    except OSError:
        return False


def holder_pid(db_path: str) -> int | None:
    match = re.match(r"PID (\d+)", lock_holder(db_path) or "")
    return int(match.group(1)) if match else None


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


def _connect(path: str, read_only: bool, config: dict) -> duckdb.DuckDBPyConnection:
    """Open the file, retrying with backoff while another process's connection holds it."""
    wait_s = float(os.environ.get("CSR_DB_WAIT_S", READER_WAIT_S if read_only else WRITER_WAIT_S))
    deadline = time.monotonic() + wait_s
    delay = 0.02
    while True:
        try:
            return duckdb.connect(path, read_only=read_only, config=config)
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() or time.monotonic() + delay > deadline:
                raise StoreLockedError(_lock_message(path, str(exc))) from None
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


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
    """One read-only query (between the writer's writes, if a run is going on)."""
    store = Store(path, read_only=True)
    try:
        return store.rows(sql, params)
    finally:
        store.close()


_OPEN: dict[str, Store] = {}
_OPEN_LOCK = threading.Lock()


def open_store(path: str | Path) -> Store:
    """The process's writer of `path` (created once, then shared by tasks; closed at exit)."""
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


atexit.register(close_all)
