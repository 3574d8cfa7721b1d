"""What survives a kill, what a copy of the store holds, what `csr sql` may touch, and one-line errors."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from flows.cli import main as csr
from storage.store import Store, close_all

ROOT = Path(__file__).resolve().parent.parent
CSR = str(Path(sys.executable).parent / "csr")
TINY = str(ROOT / "configs" / "tiny.yaml")
ARTIFACT_TABLES = ("stages", "prompts", "tree_nodes", "relevance_scores", "preference_pairs", "training_metrics",
                   "models", "eval_results", "eval_responses")


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_world):
    """A one-round tiny run on a private copy of the world's store."""
    from flows.pipeline import csr_pipeline

    root = tmp_path_factory.mktemp("finished")
    db = root / "csr.duckdb"
    shutil.copy(tiny_world["db"], db)
    overrides = [f"db={db}", f"data_dir={tiny_world['data_dir']}"]
    csr_pipeline(config_files=[TINY], overrides=overrides)
    close_all()
    return {"db": db, "overrides": overrides, "data_dir": tiny_world["data_dir"]}


def _counts(db: Path) -> dict[str, int]:
    store = Store(db, read_only=True)
    try:
        return {table: store.scalar(f"SELECT count(*) FROM {table}") for table in ARTIFACT_TABLES}
    finally:
        store.close()


def test_the_duckdb_file_alone_is_the_whole_store_after_a_run(finished, tmp_path):
    assert not Path(str(finished["db"]) + ".wal").exists()
    copy = tmp_path / "copy.duckdb"
    shutil.copyfile(finished["db"], copy)  # the file alone, as a user backing it up would
    counts = _counts(copy)
    assert counts == _counts(finished["db"]) and all(n > 0 for n in counts.values()), counts


def test_csr_backup_copies_a_complete_store(finished, tmp_path, capsys):
    dest = tmp_path / "backups" / "csr.duckdb"
    assert csr(["backup", str(dest), "--db", str(finished["db"])]) == 0
    assert _counts(dest) == _counts(finished["db"])
    assert csr(["backup", str(dest), "--db", str(finished["db"])]) == 2
    assert "exists" in capsys.readouterr().err


def test_csr_sql_reads_the_store_and_nothing_else(finished, tmp_path, capsys):
    db = str(finished["db"])
    other = tmp_path / "other.duckdb"
    Store(other).close()
    for query in (f"COPY stages TO '{tmp_path / 'out.csv'}'", "SELECT * FROM read_csv('/etc/passwd')",
                  f"ATTACH '{other}' AS o (READ_WRITE)", "INSTALL httpfs", "SET enable_external_access = true",
                  "SELECT nonsense FROM nowhere"):
        assert csr(["sql", query, "--db", db]) == 2, query
        err = capsys.readouterr().err
        assert err.startswith("csr: error: database:") and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out.csv").exists()
    assert csr(["sql", "SELECT count(*) AS n FROM stages", "--db", db]) == 0


def _writer_process(db: Path, script: str) -> subprocess.Popen:
    code = textwrap.dedent(f"""
        import sys, time
        from storage import stages
        from storage.store import open_store
        store = open_store({str(db)!r})
        {script}
        print("ready", flush=True)
        time.sleep(120)
    """)
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    return process


def test_status_and_sql_work_while_a_stage_runs_and_a_dead_run_shows_interrupted(tmp_path, capsys):
    db = tmp_path / "csr.duckdb"
    writer = _writer_process(db, """
        stages.begin_stage(store, "generate_candidates", "generate_candidates-k", {}, {}, 10)
        with store.transaction() as con:
            stages.record_items(con, "generate_candidates-k", ["p1", "p2"], {"p3": "cannot read image"})
    """)
    try:
        assert csr(["status", "--db", str(db)]) == 0
        out = capsys.readouterr().out
        assert "running" in out and "interrupted" not in out
        assert csr(["sql", "SELECT n_done FROM stages", "--db", str(db), "--format", "csv"]) == 0
        capsys.readouterr()
        assert csr(["run", "--db", str(db), "--config", TINY]) == 2  # a second writer: one line, its holder
        assert f"PID {writer.pid}" in capsys.readouterr().err
    finally:
        writer.kill()
        writer.wait()
    assert csr(["status", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if "generate_candidates-k" in line)
    assert "interrupted" in row and " 2 " in row and " 1 " in row  # its real counts: 2 done, 1 failed


def _children(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        found |= {int(c) for c in (task / "children").read_text().split()}
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, IndexError):
        return False


LOGS_TO_THE_END = textwrap.dedent("""
    from prefect import flow, get_run_logger
    from flows.server import prefect_api

    @flow
    def chatty():
        for i in range(300):
            get_run_logger().info("line %d %s", i, "x" * 200)

    with prefect_api():
        chatty()
""")


def test_a_temporary_server_takes_the_last_logs_before_it_stops():
    env = {**{k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}, "PREFECT_LOGGING_LEVEL": "INFO"}
    done = subprocess.run([sys.executable, "-c", LOGS_TO_THE_END], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "line 299" in done.stderr and "Error logging to API" not in done.stderr


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_killed_run_leaves_no_prefect_server(finished, tmp_path, sig):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    db = tmp_path / "csr.duckdb"
    shutil.copy(finished["db"], db)
    run = subprocess.Popen([CSR, "run", "--config", TINY, "--db", str(db), "--data-dir", str(finished["data_dir"]),
                            "--set", "rounds=3"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline, server = time.time() + 120, None
    while time.time() < deadline and server is None and run.poll() is None:
        server = next(iter(_children(run.pid)), None)
        time.sleep(0.2)
    assert server is not None, "no temporary Prefect server started"
    time.sleep(3)  # let the flow get going
    run.send_signal(sig)
    _, err = run.communicate(timeout=60)
    deadline = time.time() + 20
    while time.time() < deadline and _alive(server):
        time.sleep(0.2)
    assert not _alive(server), f"the Prefect server (PID {server}) outlived csr"
    if sig == signal.SIGTERM:
        assert run.returncode == 143 and "rerun the same command to resume" in err and "Traceback" not in err


def test_bad_yaml_and_an_unreachable_prefect_server_are_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    db = tmp_path / "never.duckdb"
    bad = tmp_path / "bad.yaml"
    bad.write_text("reward: {lam: [0.5\n")
    for args, message in ((["--config", str(bad)], f"config file {bad}: not valid YAML"),
                          (["--set", "reward.lam=[1,"], "reward.lam: --set value '[1,' is not valid YAML")):
        assert csr(["run", "--db", str(db), *args]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    assert csr(["rescore", "--db", str(db), "--config", TINY]) == 2
    err = capsys.readouterr().err
    assert "PREFECT_API_URL=http://127.0.0.1:9/api does not answer" in err and len(err.strip().splitlines()) == 1


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs to mount a small tmpfs (root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_one_line(finished, small_disk, capsys):
    assert csr(["backup", str(small_disk / "csr.duckdb"), "--db", str(finished["db"])]) == 2
    err = capsys.readouterr().err
    assert err.startswith("csr: error: disk full") and err.count("disk full") == 1, err
    assert len(err.strip().splitlines()) == 1, err


def test_a_prompt_longer_than_the_models_context_is_a_failed_item_and_the_rest_go_on(tiny_run, tmp_path):
    import json

    from flows.stages import generate_flow
    from storage.store import query_rows

    world = tiny_run["data_dir"] / "world"
    pool = json.loads((world / "pool.json").read_text())[:2]
    pool.append({**pool[0], "id": "too-long", "input": "<image>\nDescribe " + "the red mug and " * 80})
    path = tmp_path / "pool.json"
    path.write_text(json.dumps(pool))
    generate_flow(config_files=[TINY], overrides=[*tiny_run["overrides"], f"prompts.source={path}",
                                                  f"prompts.image_dir={world / 'images'}", "prompts.n_per_round=3"])
    close_all()
    db = tiny_run["db"]
    (error,) = query_rows(db, "SELECT error FROM stage_items WHERE status = 'failed' AND item_id = 'too-long'")[0]
    assert "exceeds the model's context of 256 positions" in error
    assert query_rows(db, "SELECT count(DISTINCT prompt_id) FROM tree_nodes")[0][0] == 2


def test_a_moved_project_gets_cache_hits(tiny_world, tmp_path, monkeypatch):
    """Absolute paths everywhere, then the project folder moves: every stage is a cache hit, no model loads."""
    from csr_testing.load_counter import LoadCounter
    from flows.pipeline import csr_pipeline

    def run(project: Path) -> dict:
        summary = csr_pipeline(config_files=[TINY], overrides=[f"db={project / 'csr.duckdb'}",
                                                               f"data_dir={project / 'csr_data'}"])
        close_all()
        return summary

    project = tmp_path / "project"
    shutil.copytree(tiny_world["data_dir"], project / "csr_data")
    shutil.copy(tiny_world["db"], project / "csr.duckdb")
    first = run(project)
    moved = tmp_path / "moved"
    project.rename(moved)
    counter = LoadCounter(monkeypatch)
    assert run(moved) == first
    assert counter.calls == {"vlm": 0, "clip": 0}


def _world_rows_with_own_images(tiny_run, tmp_path, name: str, n: int) -> tuple[list[dict], Path, Path]:
    """The first `n` rows of the world's `name` (pool.json, eval.json) in a file of their own, with copies of
    their images in a folder of their own: (rows, the file, the image folder)."""
    import json

    world = tiny_run["data_dir"] / "world"
    rows = json.loads((world / name).read_text())[:n]
    images = tmp_path / "images"
    images.mkdir()
    for row in rows:
        shutil.copy(world / "images" / row["image"], images / Path(row["image"]).name)
        row["image"] = Path(row["image"]).name
    path = tmp_path / name
    path.write_text(json.dumps(rows))
    return rows, path, images


def test_an_unreadable_eval_image_is_recorded_and_the_evaluation_goes_on(tiny_run, tmp_path):
    from flows.stages import evaluate_flow
    from storage.store import query_rows

    world = tiny_run["data_dir"] / "world"
    items, source, images = _world_rows_with_own_images(tiny_run, tmp_path, "eval.json", 3)
    (images / items[1]["image"]).write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    evaluate_flow(config_files=[TINY], overrides=[*tiny_run["overrides"], f"eval.source={source}",
                                                  f"eval.image_dir={images}", f"eval.vocab={world / 'vocab.json'}"])
    close_all()
    db = tiny_run["db"]
    (status,) = query_rows(db, "SELECT status FROM stages WHERE stage = 'evaluate'")[0]
    failed = query_rows(db, "SELECT item_id, error FROM stage_items WHERE status = 'failed'")
    assert status == "complete" and [f[0] for f in failed] == [str(items[1]["id"])]
    assert "cannot read image" in failed[0][1]
    greedy = query_rows(db, "SELECT n FROM eval_results WHERE split = 'greedy' AND metric = 'chair_i'")
    assert greedy == [(2,)]


def test_retry_failed_runs_the_failed_items_of_a_complete_stage_again(tiny_run, tmp_path):
    from flows.stages import generate_flow, sample_prompts_flow
    from storage.store import query_rows

    pool, path, images = _world_rows_with_own_images(tiny_run, tmp_path, "pool.json", 3)
    overrides = [*tiny_run["overrides"], f"prompts.source={path}", f"prompts.image_dir={images}",
                 "prompts.n_per_round=3"]

    def generate(*extra):
        generate_flow(config_files=[TINY], overrides=[*overrides, *extra])
        close_all()
        return dict(query_rows(tiny_run["db"], "SELECT item_id, i.status FROM stage_items i JOIN stages s "
                                               "USING (stage_key) WHERE s.stage = 'generate_candidates'"))

    sample_prompts_flow(config_files=[TINY], overrides=overrides)
    close_all()
    flaky = images / pool[2]["image"]
    good = flaky.read_bytes()
    flaky.write_bytes(bytes(len(good)))  # unreadable between sampling and the search, same size (same keys)
    assert generate()[str(pool[2]["id"])] == "failed"
    flaky.write_bytes(good)
    assert generate()[str(pool[2]["id"])] == "failed"  # a complete stage is a cache hit
    assert set(generate("runtime.retry_failed=true").values()) == {"done"}
    assert query_rows(tiny_run["db"], "SELECT count(DISTINCT prompt_id) FROM tree_nodes")[0][0] == 3


def test_a_prompt_file_that_is_not_json_stops_the_run_before_any_work(tmp_path, capsys):
    db = tmp_path / "never.duckdb"
    pool = tmp_path / "pool.json"
    pool.write_text('[{"id": "a", "image": "a.png", "input": "Describe."},\n {"id": "b" "image"}]')
    assert csr(["run", "--db", str(db), "--set", f"prompts.source={pool}", "--set",
                f"prompts.image_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert f"prompts.source: {pool}: not JSON" in err and "line 2" in err and len(err.strip().splitlines()) == 1
    assert not db.exists()
