"""Where a run's inputs live: the miniature world's files, or the user's own, checked before any work."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from csr_core.config import WORLD
from csr_core.validation import ConfigError
from flows.config import RunConfig
from tasks.world import CLIP_DIR, VLM_DIR
from training.dpo_config import num_decoder_layers


@dataclass(frozen=True)
class Inputs:
    pool_file: str
    pool_images: str
    model_dir: str
    scorer_dir: str
    eval_file: str
    eval_images: str
    vocab_file: str


def resolve_inputs(cfg: RunConfig) -> Inputs:
    world = cfg.world_dir
    images = str(world / "images")
    pool = str(world / "pool.json") if cfg.prompts.source == WORLD else cfg.prompts.source
    return Inputs(
        pool_file=pool,
        pool_images=images if cfg.prompts.source == WORLD else (cfg.prompts.image_dir or str(Path(pool).parent)),
        model_dir=str(world / VLM_DIR) if cfg.model.path == WORLD else cfg.model.path,
        scorer_dir=str(world / CLIP_DIR) if cfg.relevance.model_dir == WORLD else cfg.relevance.model_dir,
        eval_file=str(world / "eval.json") if cfg.eval.source == WORLD else cfg.eval.source,
        eval_images=images if cfg.eval.source == WORLD else (cfg.eval.image_dir or str(Path(cfg.eval.source).parent)),
        vocab_file=str(world / "vocab.json") if cfg.eval.source == WORLD else cfg.eval.vocab,
    )


def check_user_inputs(cfg: RunConfig, *, need_eval: bool = True) -> Inputs:
    """Fail fast, with one clear line, on user-supplied paths that do not exist.

    World paths are exempt: the world stages build them.
    """
    inputs = resolve_inputs(cfg)
    checks = [
        (cfg.prompts.source != WORLD, inputs.pool_file, "prompts.source", Path.is_file),
        (cfg.prompts.source != WORLD, inputs.pool_images, "prompts.image_dir", Path.is_dir),
        (cfg.model.path != WORLD, inputs.model_dir, "model.path", Path.is_dir),
        (cfg.relevance.model_dir != WORLD, inputs.scorer_dir, "relevance.model_dir", Path.is_dir),
        (need_eval and cfg.eval.source != WORLD, inputs.eval_file, "eval.source", Path.is_file),
        (need_eval and cfg.eval.source != WORLD, inputs.vocab_file, "eval.vocab", Path.is_file),
    ]
    for applies, path, name, exists in checks:
        if applies and not exists(Path(path)):
            raise ConfigError(name, f"not found: {path or '(empty)'}")
    _check_lora_layers(cfg, inputs.model_dir)
    return inputs


def _check_lora_layers(cfg: RunConfig, model_dir: str) -> None:
    """dpo.lora_layers against the policy's decoder-layer count, so a bad index stops the run before
    candidate generation rather than at the first DPO round."""
    if not cfg.dpo.lora_layers:
        return
    num_layers = cfg.world.llm_layers if cfg.model.path == WORLD else _model_decoder_layers(Path(model_dir))
    if num_layers is not None:
        try:
            cfg.dpo.resolve_lora_layers(num_layers)
        except ConfigError as error:
            raise ConfigError(f"dpo.{error.field}", f"{error.why} ({model_dir})") from None


def _model_decoder_layers(model_dir: Path) -> int | None:
    config_file = model_dir / "config.json"
    return num_decoder_layers(json.loads(config_file.read_text())) if config_file.is_file() else None
