"""Stage 6, evaluate: hallucination and relevance of one model on held-out items; pair accuracy."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from csr_core.config import EvalConfig, ModelConfig, RuntimeConfig
from csr_core.evaluation import evaluate_model
from storage.artifacts import write_eval
from storage.store import open_store
from tasks.common import (
    StageSpec,
    file_sha256,
    images_fingerprint,
    logger,
    run_whole_stage,
    stage_task,
    without_paths,
)
from tasks.io import load_eval_items, load_vocab
from tasks.models import load_relevance, load_vlm


def evaluate_spec(cfg: EvalConfig, source: str, image_dir: str, vocab: str, model_key: str,
                  scorer_key: str) -> StageSpec:
    """Keyed by the eval file's and vocabulary's content and the images' names and sizes, not their paths."""
    names = [row["image"] for row in json.loads(Path(source).read_text())[:cfg.n_items]]
    data = {"source": file_sha256(source)[:16], "vocab": file_sha256(vocab)[:16],
            "images": images_fingerprint(image_dir, names)}
    return StageSpec("evaluate", {"eval": without_paths(cfg), "data": data}, {"model": model_key, "scorer": scorer_key})


@stage_task(name="evaluate")
def evaluate(db: str, cfg: EvalConfig, model_cfg: ModelConfig, runtime: RuntimeConfig, model_key: str,
             model_dir: str, scorer_key: str, scorer_dir: str, source: str, image_dir: str, vocab_path: str,
             round_: int) -> str:
    store = open_store(db)
    spec = evaluate_spec(cfg, source, image_dir, vocab_path, model_key, scorer_key)

    def work(key: str) -> None:
        vlm = load_vlm(model_dir, model_cfg, runtime)
        clip = load_relevance(scorer_dir, runtime)

        def generate(images, prompts, **kwargs):
            return vlm.generate(images, prompts, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                                batch_size=cfg.batch_size, **kwargs)

        def yes_probability(images, prompts):
            try:
                return vlm.yes_probability(images, prompts, batch_size=cfg.batch_size)
            except ValueError as error:
                raise ValueError(f"POPE's expected metrics: {error}; --set eval.pope_expected=false skips them") \
                    from error

        items, failed = load_eval_items(source, image_dir, cfg.n_items)
        for item_id, reason in failed.items():
            logger().warning("evaluate: item %s left out: %s", item_id, reason)
        if not items:
            raise ValueError(f"eval.source: no evaluation item of {source} has a readable image")
        out = evaluate_model(generate, clip.cosine, items, load_vocab(vocab_path), cfg, yes_probability)
        results = pd.DataFrame([{**vars(m), "model_key": model_key, "round": round_} for m in out.metrics])
        responses = pd.DataFrame([{**vars(r), "model_key": model_key} for r in out.responses])
        write_eval(store, key, results, responses, failed)

    return run_whole_stage(store, spec, work)


