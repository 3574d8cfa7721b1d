"""The miniature world, built as three cached stages: scenes, base VLM, relevance scorer.

Scenes land as PNG files plus their exact ground truth in DuckDB (`world_scenes`), and as the same
JSON files a user supplies for real data: a prompt pool in the CSR format (`pool.json`), held-out
evaluation items (`eval.json`) and the object vocabulary (`vocab.json`).
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from PIL import Image

from storage import stages
from storage.artifacts import replace_stage_rows, rows_for
from storage.store import open_store
from tasks.common import StageSpec, TrainingProgress, file_sha256, logger, run_whole_stage, stage_task
from world.config import WorldConfig
from world.corpus import build_corpus, instruction_for
from world.scenes import generate_scenes, render_scene
from world.vocab import OBJECTS, SYNONYMS, THEMES

VLM_DIR = "models/vlm-base"
CLIP_DIR = "models/clip"


def scenes_spec(cfg: WorldConfig) -> StageSpec:
    return StageSpec("world_scenes", {"world": cfg})


@stage_task(name="world-scenes")
def build_scenes(db: str, cfg: WorldConfig, world_dir: str) -> str:
    store = open_store(db)
    spec = scenes_spec(cfg)
    root = Path(world_dir)
    _rerun_if_missing(store, spec, [root / "pool.json", root / "eval.json", root / "vocab.json"])

    def work(key: str) -> None:
        rows = []
        scenes = generate_scenes(cfg)
        for scene in scenes:
            path = root / "images" / scene.split / f"{scene.scene_id}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            render_scene(scene, cfg).save(path, optimize=False)
            rows.append({"scene_id": scene.scene_id, "split": scene.split, "theme": scene.theme,
                         "objects": json.dumps([vars(o) for o in scene.objects]), "image_path": str(path),
                         "image_sha256": file_sha256(path)})
        _write_json(root / "pool.json", [_pool_row(s, cfg) for s in scenes if s.split == "pool"])
        _write_json(root / "eval.json", [_eval_row(s) for s in scenes if s.split == "eval"])
        _write_json(root / "vocab.json", {name: list(SYNONYMS.get(name, (name,))) for name in OBJECTS})
        replace_stage_rows(store, "world_scenes", key, pd.DataFrame(rows))

    return run_whole_stage(store, spec, work)


@stage_task(name="world-vlm")
def train_world_vlm(db: str, cfg: WorldConfig, world_dir: str, scenes_key: str, show_progress: bool = True) -> str:
    from world.vlm import train_base_vlm

    def train(scenes, images, out_dir, progress):
        return train_base_vlm(scenes, images, build_corpus(scenes, cfg), cfg, out_dir, progress=progress)

    return _train_stage(db, cfg, scenes_key, "world_vlm", Path(world_dir) / VLM_DIR, "config.json", train,
                        show_progress)


@stage_task(name="world-clip")
def train_world_clip(db: str, cfg: WorldConfig, world_dir: str, scenes_key: str, show_progress: bool = True) -> str:
    from world.clip import train_relevance_clip

    def train(scenes, images, out_dir, progress):
        return train_relevance_clip(scenes, images, cfg, out_dir, progress=progress)

    return _train_stage(db, cfg, scenes_key, "world_clip", Path(world_dir) / CLIP_DIR, "open_clip_config.json",
                        train, show_progress)


def _train_stage(db: str, cfg: WorldConfig, scenes_key: str, stage: str, out_dir: Path, marker: str, train,
                 show_progress: bool) -> str:
    """A world model trained on the train split into `out_dir`, with its training stats beside it."""
    store = open_store(db)
    spec = StageSpec(stage, {"world": cfg}, {"scenes": scenes_key})
    _rerun_if_missing(store, spec, [out_dir / marker])

    def work(key: str) -> None:
        scenes, images = _train_split(store, cfg, scenes_key)
        progress = TrainingProgress(stage, show_progress)
        stats = train(scenes, images, out_dir, progress)
        progress.close()
        (out_dir / "training_stats.json").write_text(json.dumps(stats, indent=2))
        logger().info("%s trained in %.0f s", stage, stats.get("seconds", 0))

    return run_whole_stage(store, spec, work)


def _train_split(store, cfg: WorldConfig, scenes_key: str):
    """The train scenes and their images as written to disk (the bytes the DB hashed)."""
    paths = rows_for(store, "world_scenes", scenes_key).set_index("scene_id")["image_path"]
    scenes = [s for s in generate_scenes(cfg) if s.split == "train"]
    images = {}
    for scene in scenes:
        with Image.open(paths[scene.scene_id]) as image:
            images[scene.scene_id] = image.convert("RGB")
    return scenes, images


def _rerun_if_missing(store, spec: StageSpec, outputs: list[Path]) -> None:
    """A complete stage whose files were deleted is built again rather than trusted."""
    if stages.is_complete(store, spec.key) and not all(p.exists() for p in outputs):
        logger().warning("%s %s is recorded complete but its files are missing; rebuilding", spec.stage, spec.key)
        stages.finish_stage(store, spec.key, "failed", "output files missing")


def _pool_row(scene, cfg: WorldConfig) -> dict:
    return {"id": scene.scene_id, "image": f"pool/{scene.scene_id}.png",
            "input": f"<image>\n{instruction_for(scene.scene_id, cfg.seed)}",
            "objects": sorted(set(scene.object_names))}


def _eval_row(scene) -> dict:
    return {"id": scene.scene_id, "image": f"eval/{scene.scene_id}.png", "objects": sorted(set(scene.object_names)),
            "theme": scene.theme, "theme_objects": list(THEMES[scene.theme])}


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))

