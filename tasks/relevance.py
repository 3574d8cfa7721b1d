"""Stage 3, score relevance: raw CLIP cosine between each prompt's image and each of its sentences."""
from __future__ import annotations

import pandas as pd

from csr_core.adapters.relevance_dirs import scorer_kind
from csr_core.config import RelevanceConfig, RuntimeConfig
from storage.artifacts import read_prompts, read_tree
from storage.store import open_store
from tasks.common import ChunkResult, StageSpec, logger, run_item_stage, stage_task
from tasks.executors import WorkerSpec
from tasks.io import load_images
from tasks.models import load_relevance

COLUMNS = ["tree_key", "prompt_id", "node_id", "scorer", "cosine"]


def relevance_spec(scorer_key: str, tree_key: str, kind: str) -> StageSpec:
    # The batch size changes speed, not scores. `kind` (open_clip, hf-clip, hf-siglip, hf-siglip2) records which
    # scorer class read the dir with the stage's config; the dir's fingerprint (`scorer_key`) already tells dirs apart.
    return StageSpec("score_relevance", {"scorer": scorer_key, "scorer_kind": kind},
                     {"tree": tree_key, "scorer": scorer_key})


@stage_task(name="score-relevance")
def score_relevance(db: str, cfg: RelevanceConfig, runtime: RuntimeConfig, scorer_key: str, scorer_dir: str,
                    tree_key: str, prompts_key: str) -> str:
    store = open_store(db)
    spec = relevance_spec(scorer_key, tree_key, scorer_kind(scorer_dir))
    prompts = read_prompts(store, prompts_key).set_index("prompt_id")
    scored = sorted(set(read_tree(store, tree_key)["prompt_id"]))
    worker = WorkerSpec(RelevanceWorker, {"scorer_dir": scorer_dir, "runtime": runtime,
                                          "batch_size": cfg.batch_size, "stage": f"{spec.stage} {spec.key}"})

    def prepare(chunk: list[str]) -> dict:
        nodes = read_tree(store, tree_key, chunk)
        return {"prompts": prompts.loc[chunk, ["image_path"]], "nodes": nodes[nodes["node_id"] != 0],
                "tree_key": tree_key, "scorer": scorer_key}

    return run_item_stage(store, spec, table="relevance_scores", items=scored, worker=worker, prepare=prepare,
                          runtime=runtime, chunk_size=max(runtime.chunk_size, 32), retry_failed=runtime.retry_failed)


class RelevanceWorker:
    """Raw cosines of one shard: its prompts' images (`image_path` by prompt id) against their tree nodes'
    sentences (the root excluded); holds the scorer."""

    def __init__(self, scorer_dir: str, runtime: RuntimeConfig, batch_size: int, stage: str):
        self.clip = load_relevance(scorer_dir, runtime)
        self.batch_size = batch_size
        logger().info("%s: scoring with %s", stage, self.clip.name)

    def __call__(self, payload: dict) -> ChunkResult:
        prompts, nodes = payload["prompts"], payload["nodes"]
        images, failed = load_images(prompts, list(prompts.index))
        nodes = nodes[nodes["prompt_id"].isin(list(images))]
        index_of = {pid: i for i, pid in enumerate(images)}
        cosines = self.clip.cosine(list(images.values()), nodes["text"].tolist(),
                                   [index_of[pid] for pid in nodes["prompt_id"]], batch_size=self.batch_size)
        rows = pd.DataFrame({"tree_key": payload["tree_key"], "prompt_id": nodes["prompt_id"].to_numpy(),
                             "node_id": nodes["node_id"].to_numpy(), "scorer": payload["scorer"], "cosine": cosines},
                            columns=COLUMNS)
        return ChunkResult(rows, list(images), failed)
