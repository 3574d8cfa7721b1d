"""Prompt pools: the paper's CSR prompt list parses, rounds draw fresh seeded prompts, images are checked."""
import json
from pathlib import Path

import pytest
from PIL import Image

from csr_core.config import PromptConfig
from csr_core.prompts import parse_pool, sample_round, without_image_placeholder
from storage.artifacts import read_prompts
from storage.store import close_all, open_store
from tasks.prompts import pool_fingerprint, sample_prompts

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
    assert invalid == {"b": "missing field 'input'", "a": "duplicate id", "row-3": "not an object: 'junk'",
                       "d": "empty instruction"}
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
