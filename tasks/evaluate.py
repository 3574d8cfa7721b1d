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
from tasks.executors import WorkerSpec, executor_for
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
        worker = WorkerSpec(EvalWorker, {"model_dir": model_dir, "model_cfg": model_cfg, "runtime": runtime,
                                         "scorer_dir": scorer_dir, "cfg": cfg})
        with executor_for(worker, runtime, "evaluate") as executor:
            models = ShardedEval(executor, cfg.batch_size, runtime.workers if runtime.executor == "ray" else 1)
            out = evaluate_model(models.generate, models.cosine, data.items, vocab, cfg, models.yes_probability,
                                 data.pope, data.pope_items)
        results = pd.DataFrame([{**vars(m), "model_key": model_key, "round": round_} for m in out.metrics])
        responses = pd.DataFrame([{**vars(r), "model_key": model_key} for r in out.responses])
        items = pd.DataFrame([{"role": "describe", "position": n, "item_id": item.item_id, "image": item.image_name,
                               "objects": sorted(item.objects)} for n, item in enumerate(data.items)])
        write_eval(store, key, results, responses, data.failed, items)

    return run_whole_stage(store, spec, work)


class EvalWorker:
    """The VLM and the scorer of one evaluation, answering a shard of `generate`, yes-odds or cosine calls."""

    def __init__(self, model_dir: str, model_cfg: ModelConfig, runtime: RuntimeConfig, scorer_dir: str,
                 cfg: EvalConfig):
        self.vlm = load_vlm(model_dir, model_cfg, runtime)
        self.clip = load_relevance(scorer_dir, runtime)
        self.cfg = cfg

    def __call__(self, call: dict):
        cfg = self.cfg
        if call["op"] == "generate":
            return self.vlm.generate(call["images"], call["prompts"], temperature=cfg.temperature,
                                     max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, **call["kwargs"])
        if call["op"] == "yes_probability":
            try:
                return self.vlm.yes_probability(call["images"], call["prompts"], batch_size=cfg.batch_size)
            except ValueError as error:
                raise ValueError(f"POPE's expected metrics: {error}; --set eval.pope_expected=false skips them") \
                    from error
        return self.clip.cosine(call["images"], call["texts"], call["image_index"])


class ShardedEval:
    """`evaluate_model`'s callables over an executor's workers: a call's items split into shards of whole
    batches, each sampled from the seed its first item would have had in one call, so the answers are those of
    one worker. Cosines go to one worker in one piece, so the scorer batches its texts as it would locally."""

    def __init__(self, executor, batch_size: int, n_workers: int):
        self.executor, self.batch_size, self.n_workers = executor, batch_size, n_workers

    def generate(self, images, prompts, **kwargs) -> list[list[str]]:
        seed = kwargs.pop("seed", 0)
        return self._in_order([{"op": "generate", "images": images[a:b], "prompts": prompts[a:b],
                                "kwargs": {**kwargs, "seed": seed + a}} for a, b in self._ranges(len(prompts))])

    def yes_probability(self, images, prompts) -> list[float]:
        return self._in_order([{"op": "yes_probability", "images": images[a:b], "prompts": prompts[a:b]}
                               for a, b in self._ranges(len(prompts))])

    def cosine(self, images, texts, image_index) -> list[float]:
        return self._in_order([{"op": "cosine", "images": list(images), "texts": list(texts),
                                "image_index": list(image_index)}])

    def _ranges(self, n: int) -> list[tuple[int, int]]:
        batches = -(-n // self.batch_size)
        per_shard = max(1, -(-batches // self.n_workers)) * self.batch_size
        return [(a, min(a + per_shard, n)) for a in range(0, n, per_shard)] or [(0, 0)]

    def _in_order(self, calls: list[dict]) -> list:
        shards = [([str(i)], call) for i, call in enumerate(calls)]
        results = dict((int(items[0]), result) for items, result in self.executor.run(shards))
        return [value for i in range(len(calls)) for value in results[i]]


def _eval_data(db: str, cfg: EvalConfig, source: str, image_dir: str, pope_dir: str,
               eval_set_key: str | None) -> EvalData:
    """The items to describe and the POPE questions: from the stored eval set, or from the eval JSON."""
    items, failed = (None, {}) if cfg.source == COCO else load_eval_items(source, image_dir, cfg.n_items)
    if eval_set_key:
        return load_eval_set(db, eval_set_key, cfg, image_dir, pope_dir, items, failed)
    return EvalData(items or [], None, {}, failed)
