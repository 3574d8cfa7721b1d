"""Prompt pools: the paper's CSR prompt list parses, rounds draw fresh seeded prompts, images are checked."""
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from csr_core.config import PromptConfig
from csr_core.prompts import PoolExhausted, parse_pool, sample_round, without_image_placeholder
from csr_core.validation import ConfigError
from storage.artifacts import read_prompts
from storage.store import close_all, open_store
from tasks.prompts import pool_fingerprint, prompts_spec, sample_prompts

PAPER_PROMPTS = Path(__file__).resolve().parents[2] / "shared" / "data" / "CSR-Prompt-Dataset-12k.json"


@pytest.mark.skipif(not PAPER_PROMPTS.exists(), reason="../shared/data is not laid beside this checkout")
def test_the_papers_prompt_list_parses_whole():
    valid, invalid = parse_pool(json.loads(PAPER_PROMPTS.read_text()))
    assert len(valid) == 12856 and invalid == {}
    assert all("<image>" not in p.instruction for p in valid)
    assert len({p.instruction for p in valid}) == 11
    assert valid[0].image.endswith(".jpg")


def test_malformed_rows_are_named_with_their_reason():
    rows = [{"id": "a", "image": "a.jpg", "input": "<image>\nDescribe."}, {"id": "b", "image": "b.jpg"},
            {"id": "a", "image": "c.jpg", "input": "Again."}, "junk", {"id": "d", "image": "d.jpg", "input": "<image>"}]
    valid, invalid = parse_pool(rows)
    assert [p.prompt_id for p in valid] == ["a"] and valid[0].instruction == "Describe."
    assert invalid == {"b": "missing field 'input'", "a#row2": "duplicate id (first at row 0)",
                       "row-3": "not an object: 'junk'", "d": "empty instruction"}
    assert without_image_placeholder("What is this?\n<image>") == "What is this?"


def test_rounds_draw_disjoint_prompts_until_the_pool_runs_out():
    pool = [f"p{i:02d}" for i in range(10)]
    rounds = [sample_round(pool, 4, r, seed=7) for r in (1, 2)]
    assert len(set(rounds[0]) | set(rounds[1])) == 8
    assert sample_round(pool, 4, 1, seed=7) == rounds[0] and sample_round(pool, 4, 1, seed=8) != rounds[0]
    third = sample_round(pool, 4, 3, seed=7)  # stop (the default): the 2 left in the pool
    assert len(third) == 2 and set(third) == set(pool) - set(rounds[0]) - set(rounds[1])
    reused = sample_round(pool, 4, 3, seed=7, when_exhausted="reuse")  # the 2 left, then a new shuffle
    assert len(set(reused)) == 4 and reused[:2] == third


def test_the_sample_stage_records_image_hashes_and_unusable_rows(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rows = json.loads(PAPER_PROMPTS.read_text())[:6] if PAPER_PROMPTS.exists() else [
        {"id": f"{i:012d}", "image": f"{i:012d}.jpg", "input": "<image>\nDescribe the image."} for i in range(6)]
    for row in rows[:5]:  # stand-in COCO images under the dataset's names; the sixth is missing
        Image.new("RGB", (8, 8), (10 * len(row["id"]), 0, 0)).save(images / row["image"])
    pool = tmp_path / "pool.json"
    pool.write_text(json.dumps(rows))
    db = str(tmp_path / "csr.duckdb")
    key = sample_prompts.fn(db, PromptConfig(source=str(pool), n_per_round=6), 1, str(pool), str(images),
                            pool_fingerprint(str(pool)))
    frame = read_prompts(open_store(db), key, ok_only=False).set_index("prompt_id")
    assert len(frame) == 6 and (frame.status == "ok").sum() == 5
    assert frame.loc[rows[5]["id"], "error"].startswith("image not found")
    assert frame.image_sha256.dropna().str.len().eq(64).all()
    close_all()


def test_rounds_through_the_stage_stop_at_the_end_of_the_pool(tmp_path, caplog):
    images = tmp_path / "images"
    images.mkdir()
    rows = [{"id": f"p{i}", "image": f"p{i}.png", "input": "<image>\nDescribe the image."} for i in range(5)]
    for row in rows:
        Image.new("RGB", (8, 8), (40, 80, 120)).save(images / row["image"])
    rows += [{"id": "p0", "image": "p1.png", "input": "Again."}, {"id": "\ud800", "image": "p2.png", "input": "x"}]
    pool = tmp_path / "pool.json"
    pool.write_text(json.dumps(rows))
    db, fingerprint = str(tmp_path / "csr.duckdb"), pool_fingerprint(str(pool))

    def run(round_, **settings):
        cfg = PromptConfig(source=str(pool), n_per_round=3, **settings)
        return sample_prompts.fn(db, cfg, round_, str(pool), str(images), fingerprint)

    frames = [read_prompts(open_store(db), run(r), ok_only=False) for r in (1, 2)]
    ok = [set(f.prompt_id[f.status == "ok"]) for f in frames]
    assert len(ok[0]) == 3 and len(ok[1]) == 2 and ok[0] | ok[1] == {f"p{i}" for i in range(5)}
    assert "round 2 gets 2 of prompts.n_per_round=3 prompts" in caplog.text
    invalid = frames[0].set_index("prompt_id").error[frames[0].status.values == "invalid"].to_dict()
    assert invalid == {"p0#row5": "malformed prompt row: duplicate id (first at row 0)",
                       "row-6": "malformed prompt row: id not encodable as UTF-8"}

    with pytest.raises(PoolExhausted, match="round 3 needs prompts 7-9 but the pool has 5 valid prompts"):
        run(3)
    spec = prompts_spec(PromptConfig(source=str(pool), n_per_round=3), 3, str(pool), str(images), fingerprint)
    assert open_store(db).rows("SELECT status FROM stages WHERE stage_key = ?", [spec.key]) == [("failed",)]
    reused = read_prompts(open_store(db), run(3, when_exhausted="reuse"))
    assert len(set(reused.prompt_id)) == 3

    pool.write_text('[{"id": "p0"')
    expected = rf"^prompts.source: {re.escape(str(pool))}: not JSON: Expecting .* at line 1, column 13$"
    with pytest.raises(ConfigError, match=expected):
        sample_prompts.fn(db, PromptConfig(source=str(pool), n_per_round=3), 1, str(pool), str(images), "pool-x")
    close_all()
