"""Config dataclasses of the stages that are not algorithm-specific.

The algorithm stages keep theirs next to their code: `SearchConfig` (csr_core.tree), `RewardConfig`
(csr_core.reward), `WorldConfig` (world.config), `DPOConfig` (training.dpo_config).
Every field is a plain JSON type so a config can be hashed into a stage key and stored.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from csr_core.metrics import POPE_SPLITS
from csr_core.prompts import WHEN_EXHAUSTED
from csr_core.validation import require, require_choice

WORLD = "world"  # stands for "the miniature world's artifact" in path-like fields

DEVICES = ("auto", "cpu", "cuda")  # runtime.device and dpo.device
DTYPES = ("float32", "bfloat16", "float16")
COCO = "coco"  # eval.source: COCO's own annotation files (EvalConfig says how)
CHAIR_MENTIONS = ("every", "unique")


@dataclass(frozen=True)
class PromptConfig:
    """Where prompts come from and how many each round samples.

    `source` is "world" (the miniature world's prompt pool) or a JSON file in the CSR prompt format
    (`[{"id", "image", "input"}]`), with images under `image_dir`. Rounds draw disjoint prompts; when
    the pool runs out, `when_exhausted` says what happens: "stop" (the default) gives the round that
    reaches the end what is left and fails a round that would start beyond it; "reuse" draws further
    seeded shuffles of the pool (`csr_core.prompts.sample_round`).
    """

    source: str = WORLD
    image_dir: str = ""
    n_per_round: int = 200
    seed: int = 0
    when_exhausted: str = "stop"

    def __post_init__(self):
        require(self.n_per_round > 0, "n_per_round", f"must be positive, got {self.n_per_round}")
        require_choice(self.when_exhausted, "when_exhausted", WHEN_EXHAUSTED)
        require(bool(self.source), "source", "must be 'world' or a path to a prompt JSON file")


@dataclass(frozen=True)
class ModelConfig:
    """The VLM to improve: "world" or a local `save_pretrained` directory of a supported family
    (`csr_core/adapters/families.py`)."""

    path: str = WORLD
    dtype: str = "float32"
    trust_remote_code: bool = False

    def __post_init__(self):
        require_choice(self.dtype, "dtype", DTYPES)


@dataclass(frozen=True)
class RelevanceConfig:
    """The image-relevance scorer: "world", an open_clip local-dir model or a transformers CLIP/SigLIP/SigLIP 2 dir."""

    model_dir: str = WORLD
    batch_size: int = 256

    def __post_init__(self):
        require(self.batch_size > 0, "batch_size", f"must be positive, got {self.batch_size}")


@dataclass(frozen=True)
class EvalConfig:
    """Held-out evaluation: CHAIR on descriptions (greedy and sampled), POPE, relevance.

    `source` is "world", "coco", or a JSON file `[{"id", "image", "objects": [...], "theme"?}]` with images
    under `image_dir` and an object vocabulary (`{canonical: [surface forms]}`) in `vocab`.

    `coco` reads COCO's own annotation files from `coco_dir` (`instances_<split>.json` and
    `captions_<split>.json` of each of `coco_splits`, merged as the CHAIR tool merges them) and evaluates
    `n_items` images of `coco_sample_split` drawn with `image_seed` (images under `image_dir`). An image's
    ground truth is its segmentation labels plus the objects its reference captions name, through `vocab`
    (default: the COCO synonym table shipped in csr_core/data/coco_synonyms.json). POPE questions come from
    `pope_files` (`{split: question file}`, POPE's JSONL `{"question_id", "image", "text", "label"}`, images
    under `pope_image_dir`, default `image_dir`) with any source, or else are built from the items: for COCO,
    from the segmentation labels of `n_items` images with at least `pope_per_item` objects, as the POPE paper
    builds them. `chair_mentions`: "every" counts each mention for CHAIR_I as the CHAIR tool does, "unique"
    counts an object once per response.
    """

    source: str = WORLD
    image_dir: str = ""
    vocab: str = ""
    n_items: int = 200
    n_samples: int = 3
    temperature: float = 1.0
    max_new_tokens: int = 96
    instruction: str = "Describe the image."
    pope_splits: tuple[str, ...] = POPE_SPLITS
    pope_per_item: int = 2
    pope_expected: bool = True  # also POPE over the answer odds (metrics "expected_*"); greedy POPE always
    batch_size: int = 32
    seed: int = 0
    coco_dir: str = ""
    coco_splits: tuple[str, ...] = ("train2014", "val2014")
    coco_sample_split: str = "val2014"
    image_seed: int = 0
    pope_files: dict[str, str] = field(default_factory=dict)
    pope_image_dir: str = ""
    chair_mentions: str = "every"

    def __post_init__(self):
        require(self.n_items > 0, "n_items", f"must be positive, got {self.n_items}")
        require(self.n_samples >= 0, "n_samples", f"must be >= 0, got {self.n_samples}")
        require(self.temperature > 0, "temperature", f"must be positive, got {self.temperature}")
        require(self.max_new_tokens > 0, "max_new_tokens", f"must be positive, got {self.max_new_tokens}")
        bad = set(self.pope_splits) - set(POPE_SPLITS)
        require(not bad, "pope_splits", f"unknown split(s) {sorted(bad)}, known: {POPE_SPLITS}")
        require(self.pope_per_item >= 0, "pope_per_item", f"must be >= 0, got {self.pope_per_item}")
        require(bool(self.source), "source", "must be 'world', 'coco' or a path to an eval JSON file")
        require_choice(self.chair_mentions, "chair_mentions", CHAIR_MENTIONS)
        require(bool(self.coco_splits), "coco_splits", "must name at least one split, e.g. [val2014]")
        require(self.coco_sample_split in self.coco_splits, "coco_sample_split",
                f"must be one of coco_splits {list(self.coco_splits)}, got {self.coco_sample_split!r}")
        bad = set(self.pope_files) - set(POPE_SPLITS)
        require(not bad, "pope_files", f"unknown split(s) {sorted(bad)}, known: {POPE_SPLITS}")
        missing = [s for s in self.pope_splits if self.pope_per_item and not self.pope_files.get(s, "").strip()]
        require(not self.pope_files or not missing, "pope_files",
                f"no question file for split(s) {missing} of pope_splits {list(self.pope_splits)}: give one per "
                "split, or narrow eval.pope_splits")

    @property
    def pope_from_files(self) -> bool:
        return bool(self.pope_files) and bool(self.pope_per_item) and bool(self.pope_splits)


EXECUTORS = ("local", "ray")
# runtime.accelerate_config: the files shipped in configs/accelerate/ (TRL's examples/accelerate_configs)
ACCELERATE_CONFIGS = ("ddp", "zero2", "zero3")
ACCELERATE_CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass(frozen=True)
class RuntimeConfig:
    """How to run, not what to compute: excluded from stage keys."""

    device: str = "cpu"
    chunk_size: int = 8  # prompts per batch and per committed write
    threads: int = 0  # torch threads; 0 keeps torch's default
    progress: bool = True
    retry_failed: bool = False  # run the failed items of item-wise stages again (`csr run --retry-failed`)
    # generation, relevance and evaluation: in this process ("local") or on Ray actors, one chunk a shard
    executor: str = "local"
    ray_address: str = ""  # "": start a local Ray; "auto" or "host:port": join that cluster
    workers: int = 2  # Ray actors, each holding the stage's models
    gpus_per_worker: float = 0.0  # 0: CPU actors
    # DPO: processes under `accelerate launch` (1: in this process), each with dpo.batch_size / N pairs a step,
    # so the global batch is dpo.batch_size whatever N; "" plain DDP, a shipped name or an accelerate config file
    dpo_processes: int = 1
    accelerate_config: str = ""
    # generation: GiB (2^30 bytes) of KV cache the sentence search may hold. 0: decode each step's live nodes in
    # batches of search.max_batch_nodes, all of a chunk's prompts in flight at once. > 0: a chunk's prompts enter
    # the search in waves, as many as their prefixes and node tails fit, and each step's live nodes decode in
    # batches packed to the budget (the adapter's byte count of the shared-prefix engine); trees are the same.
    # The budget, not chunk_size, then bounds the prompts in flight: raise chunk_size (e.g. 256 on a GPU), which
    # stays the commit and Ray shard unit. KV only: weights and activations need their own headroom.
    kv_budget_gb: float = 0.0

    def __post_init__(self):
        require_choice(self.device, "device", DEVICES)
        require(self.chunk_size > 0, "chunk_size", f"must be positive, got {self.chunk_size}")
        require(self.threads >= 0, "threads", f"must be >= 0, got {self.threads}")
        require_choice(self.executor, "executor", EXECUTORS)
        require(self.workers >= 1, "workers", f"must be >= 1, got {self.workers}")
        require(self.gpus_per_worker >= 0, "gpus_per_worker", f"must be >= 0, got {self.gpus_per_worker}")
        require(math.isfinite(self.kv_budget_gb) and self.kv_budget_gb >= 0, "kv_budget_gb",
                f"must be >= 0, got {self.kv_budget_gb:g}")
        require(self.dpo_processes >= 1, "dpo_processes", f"must be >= 1, got {self.dpo_processes}")
        require(self.accelerate_config in ("", *ACCELERATE_CONFIGS)
                or self.accelerate_config.endswith(ACCELERATE_CONFIG_SUFFIXES), "accelerate_config",
                f"unknown {self.accelerate_config!r}: expected '' (plain DDP), one of "
                f"{', '.join(ACCELERATE_CONFIGS)} (configs/accelerate/NAME.yaml) or an accelerate config file "
                f"({', '.join(ACCELERATE_CONFIG_SUFFIXES)})")
        require(self.dpo_processes > 1 or not self.accelerate_config, "accelerate_config",
                f"{self.accelerate_config!r} needs runtime.dpo_processes > 1 (one process trains without "
                "accelerate launch)")

    @property
    def kv_budget_bytes(self) -> int | None:
        """`kv_budget_gb` in bytes; None when there is no budget."""
        return int(self.kv_budget_gb * 2**30) or None
