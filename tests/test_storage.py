import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from storage import stages
from storage.artifacts import write_items
from storage.store import SCHEMA_VERSION, Store, StoreLockedError

ROOT = Path(__file__).resolve().parent.parent


def _nodes(prompt_ids):
    return pd.DataFrame([{"prompt_id": p, "node_id": i, "parent_id": None if i == 0 else 0, "depth": min(i, 1),
                          "text": f"s{i}.", "token_count": 2, "logprob_sum": -1.0, "score": -0.5,
                          "cum_score": -0.5, "is_final": i == 2, "finish_reason": "eos", "kept": True}
                         for p in prompt_ids for i in range(3)])


def test_migrations_are_recorded_and_idempotent(tmp_path):
    path = tmp_path / "a.duckdb"
    Store(path).close()
    store = Store(path)
    assert store.scalar("SELECT max(version) FROM schema_version") == SCHEMA_VERSION
    assert store.scalar("SELECT count(*) FROM schema_version") == SCHEMA_VERSION
    names = {r[0] for r in store.rows("SELECT view_name FROM duckdb_views() WHERE NOT internal")}
    assert {"preference_pairs_v", "tree_v", "stages_v", "lineage_v"} <= names


def test_a_version_1_database_gains_pope_odds_and_keeps_its_rows(tmp_path):
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TIMESTAMP)")
    con.execute((ROOT / "storage" / "migrations" / "001_initial.sql").read_text())
    con.execute("INSERT INTO schema_version VALUES (1, now())")
    con.execute("INSERT INTO eval_responses VALUES ('e', 'm', 'i', 'pope_random', 0, 'Is there a cat?', true, 'Yes.')")
    con.close()
    store = Store(path)
    assert store.scalar("SELECT max(version) FROM schema_version") == SCHEMA_VERSION
    assert store.rows("SELECT response, p_yes FROM eval_responses") == [("Yes.", None)]


def test_a_version_4_database_gains_the_benchmark_tables_and_columns_and_keeps_its_rows(tmp_path):
    path = tmp_path / "v4.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TIMESTAMP)")
    for version, sql in enumerate(sorted((ROOT / "storage" / "migrations").glob("00[1-4]_*.sql")), 1):
        con.execute(sql.read_text())
        con.execute("INSERT INTO schema_version VALUES (?, now())", [version])
    con.execute("INSERT INTO eval_responses VALUES ('e', 'm', 'i', 'describe_greedy', 0, NULL, NULL, 'A dog.', NULL)")
    con.close()
    store = Store(path)
    assert store.scalar("SELECT max(version) FROM schema_version") == SCHEMA_VERSION == 5
    assert store.rows("SELECT response, position, image, mentioned, hallucinated, recall FROM eval_responses") == [
        ("A dog.", None, None, None, None, None)]
    assert store.scalar("SELECT count(*) FROM eval_items") == store.scalar("SELECT count(*) FROM eval_questions") == 0
    assert store.scalar("SELECT count(*) FROM eval_chair_v") == 0  # a row without CHAIR details is left out


def test_item_writes_replace_their_slice_and_record_progress(tmp_path):
    store = Store(tmp_path / "a.duckdb")
    stages.begin_stage(store, "generate_candidates", "k1", {"a": 1}, {}, n_items=3)
    write_items(store, "tree_nodes", "k1", _nodes(["p1", "p2"]), ["p1", "p2"])
    write_items(store, "tree_nodes", "k1", _nodes(["p2"]), ["p2"], {"p3": "bad image"})  # p2 again
    assert store.scalar("SELECT count(*) FROM tree_nodes WHERE stage_key = 'k1'") == 6
    assert stages.finished_items(store, "k1") == {"p1", "p2", "p3"}
    stages.finish_stage(store, "k1")
    record = stages.get_stage(store, "k1")
    assert (record.status, record.n_done, record.n_failed) == ("complete", 2, 1)
    assert stages.item_errors(store, "k1") == [("p3", "bad image")]


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    store = Store(tmp_path / "a.duckdb")
    bad = _nodes(["p1"]).assign(depth="not a number")
    with pytest.raises(duckdb.ConversionException):
        write_items(store, "tree_nodes", "k1", bad, ["p1"])
    assert store.scalar("SELECT count(*) FROM tree_nodes") == 0
    assert store.scalar("SELECT count(*) FROM stage_items") == 0


def test_a_locked_database_names_its_holder(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CSR_DB_WAIT_S", "0.5")  # a process outside csr holds the file and never lets go
    path = tmp_path / "locked.duckdb"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import duckdb, sys, time
        con = duckdb.connect({str(path)!r})
        print("ready", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(StoreLockedError) as info:
            Store(path)
        assert f"PID {holder.pid}" in str(info.value) and "in use by another process" in str(info.value)
        from flows.cli import main as csr

        assert csr(["status", "--db", str(path)]) == 2
        assert csr(["run", "--db", str(path), "--config", str(ROOT / "configs" / "tiny.yaml")]) == 2
        err = capsys.readouterr().err
        assert err.count(f"PID {holder.pid}") == 2 and "Traceback" not in err
    finally:
        holder.kill()
        holder.wait()


def test_read_only_store_of_a_missing_file_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="no csr database"):
        Store(tmp_path / "missing.duckdb", read_only=True)
