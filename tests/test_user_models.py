"""`csr run` on a user's own files, as with LLaVA-1.5 + CLIP on COCO, but with tiny models built from config.

Everything the world would provide comes from the user here: a `save_pretrained` dir of each supported VLM
family, a relevance scorer (an open_clip local dir for LLaVA-1.5, a transformers CLIP dir, as the paper's code
uses, for Qwen2.5-VL, a SigLIP 2 dir for Gemma 3; transformers CLIP for the rest), a CSR-format prompt list with
its images (of several sizes and aspect ratios), and an eval set with an object vocabulary. The run uses the
paper's DPO preset and rank calibration, and must not build the miniature world.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from csr_testing.tiny_families import FAMILIES, make_tiny_vlm
from csr_testing.tiny_models import make_tiny_clip, make_tiny_hf_clip, make_tiny_siglip
from flows.pipeline import csr_pipeline
from storage.store import close_all, query_rows

ROOT = Path(__file__).resolve().parent.parent
OBJECTS = {"dog": ["dog", "dogs"], "cat": ["cat"], "car": ["car", "cars"], "table": ["table"], "cup": ["cup"]}
COLOURS = [(200, 10, 10), (10, 10, 230), (20, 180, 20), (240, 240, 240), (90, 60, 30), (0, 0, 0)]
SIZES = [(48, 40), (32, 80), (80, 32)]
SCORERS = {"llava": make_tiny_clip, "gemma3": lambda d: make_tiny_siglip(d, model_type="siglip2")}


def _scorer(family: str, out_dir: Path) -> Path:
    return SCORERS.get(family, make_tiny_hf_clip)(out_dir)


def _user_files(root: Path) -> dict[str, Path]:
    images = root / "images"
    images.mkdir(parents=True)
    for i, colour in enumerate(COLOURS):
        Image.new("RGB", SIZES[i % len(SIZES)], colour).save(images / f"{i:012d}.jpg")
    instruction = "What do you see happening in this image?\n<image>"
    prompts = [{"id": f"{i:012d}", "image": f"{i:012d}.jpg", "input": instruction} for i in range(4)]
    names = list(OBJECTS)
    evals = [{"id": f"e{i}", "image": f"{i:012d}.jpg", "objects": [names[i % 5], names[(i + 1) % 5]]}
             for i in range(4, 6)]
    files = {"prompts": root / "prompts.json", "eval": root / "eval.json", "vocab": root / "vocab.json"}
    files["prompts"].write_text(json.dumps(prompts))
    files["eval"].write_text(json.dumps(evals))
    files["vocab"].write_text(json.dumps(OBJECTS))
    return {**files, "images": images}


@pytest.fixture(scope="module", params=FAMILIES)
def user_run(request, tmp_path_factory, prefect_harness):
    family = request.param
    root = tmp_path_factory.mktemp(f"user-{family}")
    files = _user_files(root)
    overrides = [
        f"db={root / 'csr.duckdb'}", f"data_dir={root / 'data'}",
        f"model.path={make_tiny_vlm(family, root / family)}", f"relevance.model_dir={_scorer(family, root / 'clip')}",
        f"prompts.source={files['prompts']}", f"prompts.image_dir={files['images']}",
        f"eval.source={files['eval']}", f"eval.image_dir={files['images']}", f"eval.vocab={files['vocab']}",
        "dpo.preset=paper", "reward.mode=rank",
    ]
    csr_pipeline(config_files=[str(ROOT / "configs" / "tiny.yaml")], overrides=overrides)
    close_all()
    return root / "csr.duckdb", family


def test_every_stage_completes_without_building_the_world(user_run):
    user_run, _ = user_run
    stages = dict(query_rows(user_run, "SELECT stage, count(*) FROM stages WHERE status = 'complete' GROUP BY 1"))
    for stage in ("sample_prompts", "generate_candidates", "score_relevance", "calibrate_select", "dpo_finetune",
                  "evaluate"):
        assert stages.get(stage, 0) >= 1, stage
    assert not [s for s in stages if s.startswith("world")]
    assert query_rows(user_run, "SELECT count(*) FROM stages WHERE status != 'complete'")[0][0] == 0


def test_the_user_files_reach_every_table(user_run):
    user_run, _ = user_run
    prompts = {r[0] for r in query_rows(user_run, "SELECT DISTINCT prompt_id FROM tree_v")}
    assert prompts == {f"{i:012d}" for i in range(4)}
    n_nodes, n_scored = query_rows(user_run, "SELECT count(*), count(cosine) FROM tree_v WHERE node_id > 0")[0]
    assert n_nodes > 0 and n_scored == n_nodes
    assert query_rows(user_run, "SELECT count(*) FROM preference_pairs_v")[0][0] >= 1
    rounds = {r[0] for r in query_rows(user_run, "SELECT DISTINCT round FROM eval_results_v WHERE metric = 'chair_i'")}
    assert rounds == {0, 1}


def test_the_paper_preset_trained_the_round_from_the_user_model(user_run):
    user_run, family = user_run
    (config,) = query_rows(user_run, "SELECT config FROM stages WHERE stage = 'dpo_finetune'")[0]
    dpo = json.loads(config)["dpo"]
    assert (dpo["lora_r"], dpo["lora_alpha"], dpo["learning_rate"]) == (128, 256, 1e-7)
    (row,) = query_rows(user_run, "SELECT parent_path, path, n_pairs FROM lineage_v WHERE round = 1")
    merged = Path(user_run).parent / row[1]  # paths inside the store's folder are stored relative to it
    assert row[0].endswith(family) and (merged / "config.json").is_file() and row[2] >= 1
    assert json.loads((merged / "config.json").read_text())["model_type"] == family
