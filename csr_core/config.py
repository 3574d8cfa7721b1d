"""Config dataclasses of the stages that are not algorithm-specific.

The algorithm stages keep theirs next to their code: `SearchConfig` (csr_core.tree), `RewardConfig`
(csr_core.reward), `WorldConfig` (world.config), `DPOConfig` (training.dpo_config).
Every field is a plain JSON type so a config can be hashed into a stage key and stored.
"""
from __future__ import annotations

from dataclasses import dataclass

from csr_core.metrics import POPE_SPLITS
from csr_core.prompts import WHEN_EXHAUSTED
from csr_core.validation import require, require_choice

WORLD = "world"  # stands for "the miniature world's artifact" in path-like fields

DEVICES = ("auto", "cpu", "cuda")  # runtime.device and dpo.device
DTYPES = ("float32", "bfloat16", "float16")


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
    """The VLM to improve: "world" or a local `save_pretrained` directory of a LLaVA-family model."""

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

    `source` is "world" or a JSON file `[{"id", "image", "objects": [...], "theme"?}]` with images under
    `image_dir` and an object vocabulary (`{canonical: [surface forms]}`) in `vocab`.
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

    def __post_init__(self):
        require(self.n_items > 0, "n_items", f"must be positive, got {self.n_items}")
        require(self.n_samples >= 0, "n_samples", f"must be >= 0, got {self.n_samples}")
        require(self.temperature > 0, "temperature", f"must be positive, got {self.temperature}")
        require(self.max_new_tokens > 0, "max_new_tokens", f"must be positive, got {self.max_new_tokens}")
        bad = set(self.pope_splits) - set(POPE_SPLITS)
        require(not bad, "pope_splits", f"unknown split(s) {sorted(bad)}, known: {POPE_SPLITS}")
        require(self.pope_per_item >= 0, "pope_per_item", f"must be >= 0, got {self.pope_per_item}")


@dataclass(frozen=True)
class RuntimeConfig:
    """How to run, not what to compute: excluded from stage keys."""

    device: str = "cpu"
    chunk_size: int = 8  # prompts per batch and per committed write
    threads: int = 0  # torch threads; 0 keeps torch's default
    progress: bool = True
    retry_failed: bool = False  # run the failed items of item-wise stages again (`csr run --retry-failed`)

    def __post_init__(self):
        require_choice(self.device, "device", DEVICES)
        require(self.chunk_size > 0, "chunk_size", f"must be positive, got {self.chunk_size}")
        require(self.threads >= 0, "threads", f"must be >= 0, got {self.threads}")
