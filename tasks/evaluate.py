"""Stage 6, evaluate: hallucination and relevance of one model on held-out items; pair accuracy."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from csr_core.config import COCO, EvalConfig, ModelConfig, RuntimeConfig
from csr_core.evaluation import evaluate_model
from storage.artifacts import write_eval
from storage.store import open_store
from tasks.benchmarks import EvalData, eval_set_images, load_eval_set, pope_image_dir
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
                  scorer_key: str, eval_set_key: str | None = None, db: str = "", pope_dir: str = "") -> StageSpec:
    """Keyed by the eval file's and vocabulary's content and the images' names and sizes, not their paths.

    With a stored benchmark sample (`eval_set_key`: COCO, POPE question files) that sample's key stands for the
    annotation and question files, and the images it names are fingerprinted where they are read from.
    """
    upstream = {"model": model_key, "scorer": scorer_key}
    data: dict = {"vocab": file_sha256(vocab)[:16]}
    names = eval_set_images(db, eval_set_key) if eval_set_key else {"describe": [], "pope": []}
    if eval_set_key:
        upstream["eval_set"] = eval_set_key
    if names["describe"]:
        data["images"] = images_fingerprint(image_dir, names["describe"])
    else:
        data["source"] = file_sha256(source)[:16]
        data["images"] = images_fingerprint(image_dir, [row["image"] for row in
                                                        json.loads(Path(source).read_text())[:cfg.n_items]])
    if names["pope"]:
        data["pope_images"] = images_fingerprint(pope_dir, names["pope"])
    return StageSpec("evaluate", {"eval": without_paths(cfg), "data": data}, upstream)


@stage_task(name="evaluate")
def evaluate(db: str, cfg: EvalConfig, model_cfg: ModelConfig, runtime: RuntimeConfig, model_key: str,
             model_dir: str, scorer_key: str, scorer_dir: str, source: str, image_dir: str, vocab_path: str,
             round_: int, eval_set_key: str | None = None) -> str:
    store = open_store(db)
    pope_dir = pope_image_dir(cfg, image_dir)
    spec = evaluate_spec(cfg, source, image_dir, vocab_path, model_key, scorer_key, eval_set_key, db, pope_dir)

    def work(key: str) -> None:
        vocab = load_vocab(vocab_path)  # the items, questions and vocabulary first: bad data stops before models
        data = _eval_data(db, cfg, source, image_dir, pope_dir, eval_set_key)
        for item_id, reason in data.failed.items():
            logger().warning("evaluate: item %s left out: %s", item_id, reason)
        if not data.items:
            raise ValueError(f"eval.source: no evaluation item of {source} has a readable image")
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

        out = evaluate_model(generate, clip.cosine, data.items, vocab, cfg, yes_probability, data.pope,
                             data.pope_items)
        results = pd.DataFrame([{**vars(m), "model_key": model_key, "round": round_} for m in out.metrics])
        responses = pd.DataFrame([{**vars(r), "model_key": model_key} for r in out.responses])
        items = pd.DataFrame([{"role": "describe", "position": n, "item_id": item.item_id, "image": item.image_name,
                               "objects": sorted(item.objects)} for n, item in enumerate(data.items)])
        write_eval(store, key, results, responses, data.failed, items)

    return run_whole_stage(store, spec, work)


def _eval_data(db: str, cfg: EvalConfig, source: str, image_dir: str, pope_dir: str,
               eval_set_key: str | None) -> EvalData:
    """The items to describe and the POPE questions: from the stored eval set, or from the eval JSON."""
    items, failed = (None, {}) if cfg.source == COCO else load_eval_items(source, image_dir, cfg.n_items)
    if eval_set_key:
        return load_eval_set(db, eval_set_key, cfg, image_dir, pope_dir, items, failed)
    return EvalData(items or [], None, {}, failed)
