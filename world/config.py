"""WorldConfig: every knob of the miniature world build (scenes, corpus, both models)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from csr_core.validation import ConfigError, require


@dataclass(frozen=True)
class WorldConfig:
    seed: int = 0
    # Scenes: a grid of cells, at most one object per cell.
    image_size: int = 64
    grid: int = 2
    min_objects: int = 1
    max_objects: int = 4
    theme_purity: float = 0.9  # chance that each object comes from the scene's theme
    n_train_scenes: int = 6000
    n_pool_scenes: int = 1000
    n_eval_scenes: int = 300
    # Corpus noise: the language prior the base model inherits.
    caption_noise: float = 0.75  # chance a caption ends with a sentence naming an absent same-theme object
    yesno_noise: float = 0.6  # chance a question about the theme's most typical absent object is answered "Yes."
    yesno_per_scene: int = 2  # yes/no questions per train scene (balanced yes/no)
    describe_per_scene: int = 1
    # Vision tower (CLIP-style ViT).
    patch_size: int = 16
    vision_hidden: int = 128
    vision_layers: int = 3
    vision_heads: int = 4
    vision_pretrain_steps: int = 300
    vision_pretrain_lr: float = 2e-3
    # Language model (Llama decoder).
    llm_hidden: int = 128
    llm_layers: int = 3
    llm_heads: int = 4
    sft_steps: int = 2000
    sft_lr: float = 2e-3
    yesno_loss_weight: float = 3.0  # per-token weight of yes/no answers (they are 3 tokens, captions ~25)
    answer_probe_weight: float = 1.0  # auxiliary probes at a yes/no answer position (see vlm.py); 0: off
    batch_size: int = 32
    # Relevance scorer (open_clip).
    clip_embed_dim: int = 64
    clip_width: int = 128
    clip_layers: int = 2
    clip_heads: int = 4
    clip_context_length: int = 16
    clip_pretrain_steps: int = 200
    clip_steps: int = 600
    clip_lr: float = 2e-3
    clip_batch_size: int = 64
    num_threads: int = 1  # the models are too small to gain from a second thread; 1 keeps a busy machine fast

    def __post_init__(self) -> None:
        positive = [
            "image_size", "grid", "min_objects", "max_objects", "n_train_scenes", "n_pool_scenes",
            "n_eval_scenes", "patch_size", "vision_hidden", "vision_layers", "vision_heads",
            "llm_hidden", "llm_layers", "llm_heads", "batch_size", "clip_embed_dim", "clip_width",
            "clip_layers", "clip_heads", "clip_context_length", "clip_batch_size", "num_threads",
            "describe_per_scene",
        ]
        for name in positive:
            _require(self, name, getattr(self, name) > 0, "must be > 0")
        for name in ("vision_pretrain_steps", "sft_steps", "clip_pretrain_steps", "clip_steps", "yesno_per_scene",
                     "answer_probe_weight"):
            _require(self, name, getattr(self, name) >= 0, "must be >= 0")
        for name in ("theme_purity", "caption_noise", "yesno_noise"):
            _require(self, name, 0.0 <= getattr(self, name) <= 1.0, "must be in [0, 1]")
        for name in ("vision_pretrain_lr", "sft_lr", "clip_lr", "yesno_loss_weight"):
            _require(self, name, getattr(self, name) > 0, "must be > 0")
        _require(self, "max_objects", self.max_objects >= self.min_objects,
                 f"must be >= min_objects={self.min_objects}")
        _require(self, "max_objects", self.max_objects <= self.grid**2, f"must be <= grid**2={self.grid**2}")
        _require(self, "image_size", self.image_size % (self.grid * self.patch_size) == 0,
                 f"must be a multiple of grid*patch_size={self.grid * self.patch_size}")
        _require(self, "vision_hidden", self.vision_hidden % self.vision_heads == 0, "must divide by vision_heads")
        _require(self, "llm_hidden", self.llm_hidden % self.llm_heads == 0, "must divide by llm_heads")
        _require(self, "clip_width", self.clip_width % self.clip_heads == 0, "must divide by clip_heads")

    @classmethod
    def tiny(cls, **overrides) -> WorldConfig:
        """A few-second build for integration tests; the models learn little."""
        small = {
            "n_train_scenes": 64, "n_pool_scenes": 8, "n_eval_scenes": 8, "vision_hidden": 32, "vision_layers": 1,
            "vision_heads": 2, "vision_pretrain_steps": 5, "llm_hidden": 32, "llm_layers": 1, "llm_heads": 2,
            "sft_steps": 5, "batch_size": 8, "clip_embed_dim": 16, "clip_width": 32, "clip_layers": 1, "clip_heads": 2,
            "clip_pretrain_steps": 5, "clip_steps": 5, "clip_batch_size": 8,
        }
        small.update(overrides)
        return cls(**small)

    def with_overrides(self, **overrides) -> WorldConfig:
        unknown = set(overrides) - {f.name for f in fields(self)}
        if unknown:
            raise ConfigError(", ".join(sorted(unknown)), "no such field in WorldConfig")
        return replace(self, **overrides)


def _require(cfg: WorldConfig, field_name: str, ok: bool, message: str) -> None:
    require(ok, field_name, f"{message}, got {getattr(cfg, field_name)!r}")
