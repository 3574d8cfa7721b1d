"""Crash safety and bad input: SIGKILL mid-stage then rerun; corrupt images and malformed rows."""
from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

from csr_testing.subprocess_runs import run_generate
from flows.cli import main as csr
from flows.stages import calibrate_flow
from storage.store import close_all, query_rows

ROOT = Path(__file__).resolve().parent.parent

def _generate(run, extra, kill_after_commits: int | None = None) -> int:
    return run_generate(run["config_files"], [*run["overrides"], *extra], kill_after_commits)


def test_sigkill_mid_generation_then_rerun_loses_and_duplicates_nothing(tiny_run, tmp_path):
    extra = ["prompts.n_per_round=6", "runtime.chunk_size=1"]
    assert _generate(tiny_run, extra, kill_after_commits=2) == -signal.SIGKILL
    db = tiny_run["db"]
    status, done = query_rows(db, "SELECT status, (SELECT count(*) FROM stage_items i WHERE i.stage_key = s.stage_key) "
                             "FROM stages s WHERE stage = 'generate_candidates'")[0]
    assert status == "running" and 2 <= done < 6

    assert _generate(tiny_run, extra) == 0
    reference = tmp_path / "reference.duckdb"
    shutil.copy(tiny_run["world_db"], reference)
    uninterrupted = {**tiny_run, "overrides": [f"db={reference}", f"data_dir={tiny_run['data_dir']}"]}
    assert _generate(uninterrupted, extra) == 0

    query = ("SELECT prompt_id, node_id, parent_id, text, token_count, round(logprob_sum, 4), is_final "
             "FROM tree_nodes ORDER BY ALL")
    resumed, clean = query_rows(db, query), query_rows(reference, query)
    assert resumed == clean and len(resumed) > 6
    assert len({(r[0], r[1]) for r in resumed}) == len(resumed)
    assert query_rows(db, "SELECT status, n_done FROM stages WHERE stage = 'generate_candidates'") == [("complete", 6)]


def _bad_pool(tmp_path: Path, data_dir: Path) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    pool = json.loads((data_dir / "world" / "pool.json").read_text())[:4]
    for row in pool:
        shutil.copy(data_dir / "world" / "images" / row["image"], images / Path(row["image"]).name)
        row["image"] = Path(row["image"]).name
    (images / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not an image")
    pool += [{"id": "corrupt", "image": "corrupt.png", "input": "Describe the image."},
             {"id": "missing", "image": "nowhere.png", "input": "Describe the image."},
             {"id": "malformed", "image": "x.png"}]
    path = tmp_path / "pool.json"
    path.write_text(json.dumps(pool))
    return path


def test_bad_images_and_rows_are_recorded_and_the_run_goes_on(tiny_run, tmp_path, capsys):
    pool = _bad_pool(tmp_path, tiny_run["data_dir"])
    overrides = [*tiny_run["overrides"], f"prompts.source={pool}", f"prompts.image_dir={tmp_path / 'images'}",
                 "prompts.n_per_round=6"]
    calibrate_flow(config_files=tiny_run["config_files"], overrides=overrides)
    close_all()
    db = tiny_run["db"]
    errors = dict(query_rows(db, "SELECT prompt_id, error FROM prompts WHERE status = 'invalid'"))
    assert "unreadable image" in errors["corrupt"] and "image not found" in errors["missing"]
    assert "missing field 'input'" in errors["malformed"]
    assert query_rows(db, "SELECT count(DISTINCT prompt_id) FROM tree_nodes")[0][0] == 4
    assert query_rows(db, "SELECT status FROM stages WHERE stage = 'calibrate_select'") == [("complete",)]
    assert csr(["status", "--db", str(db)]) == 0
    assert "3 invalid prompt rows" in capsys.readouterr().out
