"""Build the miniature world into a data dir without Prefect: scenes, corpus, base VLM, CLIP scorer.

    python bench/build_world.py --data-dir ./csr_data --seed 0 [--set sft_steps=800 ...]

Prints each stage's seconds, the training stats and peak RSS (resource.getrusage). The pipeline's
`csr world build` runs the same functions as cached Prefect tasks.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from dataclasses import asdict
from pathlib import Path

from world.clip import train_relevance_clip
from world.config import WorldConfig
from world.corpus import build_corpus
from world.scenes import generate_scenes, render_scene
from world.vlm import train_base_vlm


def parse_overrides(pairs: list[str]) -> dict:
    overrides = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        overrides[key] = json.loads(value)
    return overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="./csr_data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", nargs="*", default=[], help="WorldConfig overrides, key=json_value")
    parser.add_argument("--skip-clip", action="store_true")
    args = parser.parse_args()
    cfg = WorldConfig(seed=args.seed, **parse_overrides(args.set))
    world = Path(args.data_dir) / "world"
    world.mkdir(parents=True, exist_ok=True)
    (world / "world_config.json").write_text(json.dumps(asdict(cfg), indent=1))
    timings, start = {}, time.perf_counter()

    scenes = generate_scenes(cfg)
    train = [s for s in scenes if s.split == "train"]
    images = {s.scene_id: render_scene(s, cfg) for s in train}
    corpus = build_corpus(train, cfg)
    timings["scenes_corpus_s"] = time.perf_counter() - start

    vlm_stats = train_base_vlm(train, images, corpus, cfg, world / "models" / "vlm-base")
    timings["vlm_s"] = vlm_stats["seconds"]
    clip_stats = {} if args.skip_clip else train_relevance_clip(train, images, cfg, world / "models" / "clip")
    timings["clip_s"] = clip_stats.get("seconds", 0.0)
    timings["total_s"] = time.perf_counter() - start
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    report = {"seed": cfg.seed, **timings, "peak_rss_gb": peak_gb, "vlm": vlm_stats, "clip": clip_stats}
    (world / "build_report.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
