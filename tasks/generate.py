"""Stage 2, generate candidates: one sentence-level beam tree per prompt, all raw scores kept."""
from __future__ import annotations

from dataclasses import asdict

import pandas as pd

from csr_core.config import ModelConfig, RuntimeConfig
from csr_core.reward import RewardConfig
from csr_core.tree import PromptInput, SearchConfig, build_trees
from storage.artifacts import read_prompts
from storage.store import open_store
from tasks.common import ChunkResult, StageSpec, run_item_stage, stage_task
from tasks.executors import WorkerSpec
from tasks.io import load_images
from tasks.models import load_relevance, load_vlm

NODE_COLUMNS = ["prompt_id", "node_id", "parent_id", "depth", "text", "token_count", "logprob_sum", "score",
                "cum_score", "is_final", "finish_reason", "kept"]


def generate_spec(search: SearchConfig, reward: RewardConfig, model_key: str, prompts_key: str,
                  relevance_key: str | None) -> StageSpec:
    """The reward settings enter the key only when they steer the search (prune_by="calibrated")."""
    config: dict = {"search": search}
    upstream = {"model": model_key, "prompts": prompts_key}
    if search.prune_by == "calibrated":
        config["reward"] = reward
        upstream["relevance_model"] = relevance_key or ""
    return StageSpec("generate_candidates", config, upstream)


@stage_task(name="generate-candidates")
def generate_candidates(db: str, search: SearchConfig, reward: RewardConfig, model_cfg: ModelConfig,
                        runtime: RuntimeConfig, model_key: str, model_dir: str, prompts_key: str,
                        relevance_dir: str = "", relevance_key: str | None = None) -> str:
    store = open_store(db)
    spec = generate_spec(search, reward, model_key, prompts_key, relevance_key)
    prompts = read_prompts(store, prompts_key).set_index("prompt_id")
    worker = WorkerSpec(TreeWorker, {"model_dir": model_dir, "model_cfg": model_cfg, "runtime": runtime,
                                     "search": search, "reward": reward, "relevance_dir": relevance_dir})
    return run_item_stage(store, spec, table="tree_nodes", items=list(prompts.index), worker=worker,
                          prepare=lambda chunk: prompts.loc[chunk, ["image_path", "instruction"]],
                          runtime=runtime, retry_failed=runtime.retry_failed)


class TreeWorker:
    """The trees of one shard of prompts (`image_path`, `instruction` by prompt id) as node rows; holds the VLM
    (and, for `prune_by="calibrated"`, the relevance scorer)."""

    def __init__(self, model_dir: str, model_cfg: ModelConfig, runtime: RuntimeConfig, search: SearchConfig,
                 reward: RewardConfig, relevance_dir: str = ""):
        self.search, self.reward = search, reward
        self.kv_budget_bytes = runtime.kv_budget_bytes  # a speed setting: trees are the same, keys too
        self.vlm = load_vlm(model_dir, model_cfg, runtime, search.delimiters, search.stop_at_eos)
        self.clip = load_relevance(relevance_dir, runtime) if search.prune_by == "calibrated" else None

    def __call__(self, prompts: pd.DataFrame) -> ChunkResult:
        inputs, failed = _load_inputs(prompts, list(prompts.index))
        inputs, too_long = _fitting_context(self.vlm, inputs, self.search.max_response_tokens)
        failed.update(too_long)
        relevance = _relevance_fn(self.clip, inputs)
        trees = build_trees(self.vlm, inputs, self.search, relevance=relevance, reward_cfg=self.reward,
                            kv_budget_bytes=self.kv_budget_bytes)
        rows = [{"prompt_id": pid, **_node_row(node)} for pid, nodes in trees.items() for node in nodes]
        return ChunkResult(pd.DataFrame(rows, columns=NODE_COLUMNS), [p.prompt_id for p in inputs], failed)


def _load_inputs(prompts: pd.DataFrame, chunk: list[str]) -> tuple[list[PromptInput], dict[str, str]]:
    images, failed = load_images(prompts, chunk)
    inputs = [PromptInput(pid, images[pid], prompts.loc[pid, "instruction"]) for pid in chunk if pid in images]
    return inputs, failed


def _fitting_context(vlm, inputs: list[PromptInput], max_response_tokens: int
                     ) -> tuple[list[PromptInput], dict[str, str]]:
    """The prompts whose response fits the model's context; the others, with the reason."""
    limit = vlm.context_length
    if limit is None:
        return inputs, {}
    fitting, failed = [], {}
    for item in inputs:
        n = vlm.prompt_length(item.image, item.instruction)
        if n + max_response_tokens > limit:
            failed[item.prompt_id] = (f"prompt of {n} tokens plus search.max_response_tokens ({max_response_tokens}) "
                                      f"exceeds the model's context of {limit} positions")
        else:
            fitting.append(item)
    return fitting, failed


def _relevance_fn(clip, inputs: list[PromptInput]):
    if clip is None:
        return None
    images = [p.image for p in inputs]
    index_of = {p.prompt_id: i for i, p in enumerate(inputs)}

    def relevance(prompt_ids: list[str], texts: list[str]) -> list[float]:
        return clip.cosine(images, texts, [index_of[pid] for pid in prompt_ids])

    return relevance


def _node_row(node) -> dict:
    row = asdict(node)
    row.pop("token_ids", None)
    return {name: row[name] for name in NODE_COLUMNS if name != "prompt_id"}
