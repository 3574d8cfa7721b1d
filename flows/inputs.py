"""Where a run's inputs live: the miniature world's files, or the user's own, checked before any work."""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from csr_core.adapters.families import family_for, model_type_of
from csr_core.adapters.relevance_dirs import OPEN_CLIP, UnknownScorerDirError, scorer_kind
from csr_core.config import COCO, WORLD
from csr_core.prompts import parse_pool
from csr_core.validation import ConfigError
from flows.config import RunConfig
from tasks.benchmarks import check_benchmark_files, vocab_file
from tasks.executors import check_ray_settings
from tasks.prompts import read_prompt_file
from tasks.world import CLIP_DIR, VLM_DIR
from training.dpo_config import num_decoder_layers
from training.launch import check_launch_settings


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
        vocab_file=str(world / "vocab.json") if cfg.eval.source == WORLD else vocab_file(cfg.eval),
    )


def check_user_inputs(cfg: RunConfig, *, need_eval: bool = True) -> Inputs:
    """Fail fast, with one clear line, on user-supplied paths that do not exist, model dirs without complete
    safetensors weights, and a CUDA device torch cannot find.

    World paths are exempt: the world stages build them.
    """
    _check_cuda(cfg)
    check_ray_settings(cfg.runtime)
    check_launch_settings(cfg.runtime.dpo_processes, cfg.runtime.accelerate_config, cfg.dpo)
    inputs = resolve_inputs(cfg)
    checks = [
        (cfg.prompts.source != WORLD, inputs.pool_file, "prompts.source", Path.is_file),
        (cfg.prompts.source != WORLD, inputs.pool_images, "prompts.image_dir", Path.is_dir),
        (cfg.model.path != WORLD, inputs.model_dir, "model.path", Path.is_dir),
        (cfg.relevance.model_dir != WORLD, inputs.scorer_dir, "relevance.model_dir", Path.is_dir),
        (need_eval and cfg.eval.source not in (WORLD, COCO), inputs.eval_file, "eval.source", Path.is_file),
        (need_eval and cfg.eval.source != WORLD, inputs.vocab_file, "eval.vocab", Path.is_file),
    ]
    for applies, path, name, exists in checks:
        if applies and not exists(Path(path)):
            raise ConfigError(name, f"not found: {path or '(empty)'}")
    if need_eval:  # COCO's files there, POPE's question files line by line, the vocabulary
        check_benchmark_files(cfg.eval, inputs.vocab_file if cfg.eval.source != WORLD else "", inputs.eval_images)
    if cfg.prompts.source != WORLD:
        read_prompt_file(inputs.pool_file)  # UTF-8 JSON, a list, a valid row at least
    _check_lora_layers(cfg, inputs.model_dir)  # needs only config.json, so it may come first
    if cfg.model.path != WORLD:
        check_vlm_dir(Path(inputs.model_dir), "model.path")
        _check_image_conditioning(cfg, inputs.model_dir)
    if cfg.relevance.model_dir != WORLD:
        check_relevance_dir(Path(inputs.scorer_dir), "relevance.model_dir")
    return inputs


def _check_image_conditioning(cfg: RunConfig, model_dir: str) -> None:
    """mDPO's terms corrupt one `pixel_values` tensor per batch: only LLaVA-1.5's processor gives just that."""
    model_type = model_type_of(model_dir)
    if cfg.dpo.image_conditioned and model_type != "llava":
        raise ConfigError("dpo.image_condition_weight", f"mDPO's terms support LLaVA-1.5 only, and {model_dir} is "
                          f"{model_type}; set dpo.image_condition_weight=0 and dpo.anchor_weight=0")


def check_rounds_fit(cfg: RunConfig, inputs: Inputs, rounds: int) -> None:
    """With prompts.when_exhausted=stop, every one of `rounds` rounds must start inside the pool."""
    if cfg.prompts.when_exhausted != "stop" or rounds < 1:
        return
    valid, _ = parse_pool(read_prompt_file(inputs.pool_file))
    needed = (rounds - 1) * cfg.prompts.n_per_round + 1
    if needed > len(valid):
        raise ConfigError("prompts.n_per_round", f"{rounds} rounds of {cfg.prompts.n_per_round} prompts need at "
                          f"least {needed} valid prompts, and {inputs.pool_file} has {len(valid)}; lower rounds or "
                          "prompts.n_per_round, or set prompts.when_exhausted=reuse")


def _check_cuda(cfg: RunConfig) -> None:
    for field, device in (("runtime.device", cfg.runtime.device), ("dpo.device", cfg.dpo.device)):
        if device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise ConfigError(field, "cuda requested but torch finds no CUDA device "
                                         "(torch.cuda.is_available() is False); use auto or cpu")


PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth")
SAFETENSORS_ONLY = "csr loads safetensors only"
MAX_SAFETENSORS_HEADER = 100_000_000  # the safetensors library refuses longer headers


def check_vlm_dir(model_dir: Path, field: str) -> None:
    """A transformers save_pretrained dir of a supported family: config.json and complete safetensors weights
    (one file or shards)."""
    if not (model_dir / "config.json").is_file():
        raise ConfigError(field, f"no config.json in {model_dir} (a transformers save_pretrained dir is expected)")
    check_save_pretrained_weights(model_dir, field)
    try:
        family_for(model_type_of(model_dir))
    except ValueError as error:  # unreadable config.json or an unsupported family
        raise ConfigError(field, f"{model_dir}: {error}") from None


def check_save_pretrained_weights(model_dir: Path, field: str) -> None:
    """Complete safetensors weights as save_pretrained writes them: model.safetensors or an index and its shards."""
    single, index = model_dir / "model.safetensors", model_dir / "model.safetensors.index.json"
    if single.is_file():
        check_safetensors(single, field)
    elif index.is_file():
        shards = _index_shards(index, field)
        missing = [shard.name for shard in shards if not shard.is_file()]
        if missing:
            raise ConfigError(field, f"missing shard {', '.join(missing)} listed in {index}")
        for shard in shards:
            check_safetensors(shard, field)
    else:
        _refuse_missing_weights(model_dir, field, "model.safetensors or model.safetensors.index.json")


def check_relevance_dir(model_dir: Path, field: str) -> None:
    """An open_clip local dir (`check_open_clip_dir`), or a transformers CLIP, SigLIP or SigLIP 2 save_pretrained
    dir: config.json with model_type clip, siglip or siglip2 and complete safetensors weights."""
    try:
        kind = scorer_kind(model_dir)
    except UnknownScorerDirError as error:
        raise ConfigError(field, str(error)) from None
    if kind == OPEN_CLIP:
        check_open_clip_dir(model_dir, field)
    else:
        check_save_pretrained_weights(model_dir, field)


def check_open_clip_dir(model_dir: Path, field: str) -> None:
    """An open_clip local dir: open_clip_config.json and complete open_clip_model.safetensors."""
    if not (model_dir / "open_clip_config.json").is_file():
        raise ConfigError(field, f"no open_clip_config.json in {model_dir} (an open_clip local dir is expected)")
    weights = model_dir / "open_clip_model.safetensors"
    if not weights.is_file():
        _refuse_missing_weights(model_dir, field, weights.name)
    check_safetensors(weights, field)


def _refuse_missing_weights(model_dir: Path, field: str, expected: str) -> None:
    pickles = sorted(p.name for pattern in PICKLE_PATTERNS for p in model_dir.glob(pattern))
    if pickles:
        raise ConfigError(field, f"{model_dir} holds pickle weights ({', '.join(pickles)}), not {expected}: "
                                 f"{SAFETENSORS_ONLY}")
    raise ConfigError(field, f"no weights in {model_dir}: expected {expected} ({SAFETENSORS_ONLY})")


def _index_shards(index: Path, field: str) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        names = sorted(set(weight_map.values()))
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ConfigError(field, f"unreadable safetensors index {index} ({error})") from None
    if not names:
        raise ConfigError(field, f"safetensors index {index} lists no shards")
    return [index.parent / name for name in names]


def check_safetensors(path: Path, field: str) -> None:
    """Raise unless `path` is a complete safetensors file: an 8-byte little-endian header length, a JSON
    header, and at least as many data bytes as the header's largest `data_offsets` end (reads the header only)."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ConfigError(field, f"truncated safetensors file {path} ({size} of at least 8 bytes)")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > MAX_SAFETENSORS_HEADER:
            raise ConfigError(field, f"not a safetensors file: {path} (header length {header_len})")
        if 8 + header_len > size:
            raise ConfigError(field, f"truncated safetensors file {path} ({size} of at least {8 + header_len} bytes)")
        try:
            header = json.loads(f.read(header_len))
            ends = [int(entry["data_offsets"][1]) for name, entry in header.items() if name != "__metadata__"]
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as error:
            raise ConfigError(field, f"not a safetensors file: {path} (bad header: {error})") from None
    expected = 8 + header_len + max(ends, default=0)
    if size < expected:
        raise ConfigError(field, f"truncated safetensors file {path} ({size} of {expected} bytes)")


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
