"""Measure a built miniature world: the base VLM's hallucination and perception, the CLIP scorer's ranking.

    python bench/world_quality.py --data-dir ./csr_data [--seed 0] [--n-eval 300]

On the held-out eval scenes: CHAIR_S/CHAIR_I and recall (greedy and sampled at T=1), the share of
hallucinated objects from the scene's theme (the co-occurrence prior), POPE accuracy per split, and how
often the CLIP scorer rates a sentence naming a present object above one naming an absent object.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import asdict
from pathlib import Path

import torch

from csr_core.adapters.relevance import OpenClipRelevance
from csr_core.adapters.vlm import VLMAdapter
from csr_core.metrics import (
    POPE_SPLITS,
    ObjectVocab,
    PopeItem,
    chair,
    pope_metrics,
    pope_questions,
    theme_share,
)
from world.config import WorldConfig
from world.corpus import absent_objects, cooccurring_absent, instruction_for, object_sentence
from world.scenes import generate_scenes, render_scene
from world.vocab import COLORS, OBJECTS, SYNONYMS, THEMES


def load_config(world: Path, seed: int) -> WorldConfig:
    path = world / "world_config.json"
    if path.exists():
        data = json.loads(path.read_text())
        return WorldConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
    return WorldConfig(seed=seed)


def describe(adapter, scenes, images, cfg, **sampling) -> list[str]:
    instructions = [instruction_for(s.scene_id, cfg.seed) for s in scenes]
    return [outs[0] for outs in adapter.generate(images, instructions, max_new_tokens=64, **sampling)]


def chair_report(responses, scenes, vocab) -> dict:
    truths = [set(s.object_names) for s in scenes]
    result = chair(responses, truths, vocab)
    share = theme_share(responses, truths, [THEMES[s.theme] for s in scenes], vocab)
    return {"chair_s": result.chair_s, "chair_i": result.chair_i, "recall": result.recall, "theme_share": share}


def pope_report(adapter, scenes, images, seed: int) -> dict:
    items = [PopeItem(s.scene_id, frozenset(s.object_names)) for s in scenes]
    image_of = {s.scene_id: im for s, im in zip(scenes, images)}
    report = {}
    for split in POPE_SPLITS:
        questions = pope_questions(items, OBJECTS, split, n_per_item=3, seed=seed)
        answers = adapter.generate([image_of[q.item_id] for q in questions], [q.text() for q in questions],
                                   max_new_tokens=4)
        result = pope_metrics([a[0] for a in answers], [q.label for q in questions])
        report[split] = {"accuracy": result.accuracy, "yes_ratio": result.yes_ratio, "n": result.n}
    return report


def clip_pair_accuracy(scorer, scenes, images, seed: int) -> dict:
    """Per present object: its sentence vs the same template naming an absent (any / same-theme) object."""
    rng = random.Random(seed)
    wins = {"any": [], "theme": []}
    for scene, image in zip(scenes, images):
        for obj in scene.objects:
            template_seed = rng.random()
            for kind, pool in (("any", absent_objects(scene)), ("theme", cooccurring_absent(scene))):
                if not pool:
                    continue
                present = object_sentence(obj.name, obj.color, random.Random(template_seed))
                absent = object_sentence(rng.choice(pool), rng.choice(sorted(COLORS)), random.Random(template_seed))
                score_present, score_absent = scorer.cosine([image], [present, absent], [0, 0])
                wins[kind].append(score_present > score_absent)
    return {f"pair_accuracy_{k}": sum(v) / len(v) for k, v in wins.items() if v}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="./csr_data")
    parser.add_argument("--seed", type=int, default=0, help="world seed when the data dir has no world_config.json")
    parser.add_argument("--n-eval", type=int, default=None, help="first N eval scenes (default: all)")
    parser.add_argument("--examples", type=int, default=5, help="greedy descriptions to print")
    args = parser.parse_args()
    torch.set_num_threads(2)
    world = Path(args.data_dir) / "world"
    cfg = load_config(world, args.seed)
    scenes = [s for s in generate_scenes(cfg) if s.split == "eval"][: args.n_eval]
    images = [render_scene(s, cfg) for s in scenes]
    vocab = ObjectVocab(SYNONYMS)
    report: dict = {"world": {"seed": cfg.seed, "n_eval": len(scenes)}}

    vlm_dir = world / "models" / "vlm-base"
    if vlm_dir.exists():
        adapter = VLMAdapter.from_pretrained(vlm_dir)
        greedy = describe(adapter, scenes, images, cfg, do_sample=False)
        sampled = describe(adapter, scenes, images, cfg, do_sample=True, temperature=1.0, seed=cfg.seed)
        report["greedy"] = chair_report(greedy, scenes, vocab)
        report["sampled"] = chair_report(sampled, scenes, vocab)
        report["mean_words_greedy"] = sum(len(r.split()) for r in greedy) / len(greedy)
        report["pope"] = pope_report(adapter, scenes, images, cfg.seed)
        report["examples"] = [{"truth": [asdict(o)["color"] + " " + o.name for o in s.objects], "greedy": g,
                               "sampled": x} for s, g, x in list(zip(scenes, greedy, sampled))[: args.examples]]
    clip_dir = world / "models" / "clip"
    if clip_dir.exists():
        report["clip"] = clip_pair_accuracy(OpenClipRelevance.from_pretrained(clip_dir), scenes, images, cfg.seed)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
