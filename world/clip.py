"""The world's relevance scorer: a small open_clip CLIP trained contrastively on clean sentences.

Balanced sigmoid (SigLIP-style) loss with exact labels: a sentence "There is a red mug."
is positive for every image in the batch whose ground truth holds a red mug.
Each batch adds hard negatives: absent objects of the scene's theme (what the VLM
hallucinates) and present objects in the wrong colour. Saved in open_clip's
local-dir format, so ``open_clip.create_model_and_transforms("local-dir:" + dir)`` loads it.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Sequence
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from .config import WorldConfig
from .corpus import absent_objects, cooccurring_absent, object_sentence
from .scenes import Scene
from .training import Images, Progress, cell_targets, pool_cells, warmup_cosine_lr
from .vocab import COLORS

MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)


def clip_model_config(cfg: WorldConfig) -> dict:
    return {
        "embed_dim": cfg.clip_embed_dim,
        "init_logit_bias": 0.0,
        "vision_cfg": {"image_size": cfg.image_size, "layers": cfg.clip_layers, "width": cfg.clip_width,
                       "head_width": cfg.clip_width // cfg.clip_heads, "patch_size": cfg.patch_size,
                       "pool_type": "avg"},
        "text_cfg": {"context_length": cfg.clip_context_length, "vocab_size": 49408, "width": cfg.clip_width,
                     "heads": cfg.clip_heads, "layers": cfg.clip_layers},
    }


def preprocess_config(cfg: WorldConfig) -> dict:
    return {"size": cfg.image_size, "mean": list(MEAN), "std": list(STD), "interpolation": "bicubic",
            "resize_mode": "shortest"}


def train_relevance_clip(train_scenes: Sequence[Scene], images: Images, cfg: WorldConfig, out_dir: Path,
                         *, progress: Progress = None) -> dict:
    torch.set_num_threads(cfg.num_threads)
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    model = open_clip.model.CLIP(**clip_model_config(cfg))
    model.logit_scale.data.fill_(math.log(10.0))
    preprocess = open_clip.image_transform(cfg.image_size, is_train=False, mean=MEAN, std=STD)
    tokenizer = open_clip.SimpleTokenizer(context_length=cfg.clip_context_length)
    pixels = torch.stack([preprocess(images(s) if callable(images) else images[s.scene_id]) for s in train_scenes])
    pretrain = _pretrain_visual(model, pixels, train_scenes, cfg, progress)
    stats = _train(model, tokenizer, pixels, train_scenes, cfg, progress)
    save_local_dir(model, cfg, Path(out_dir))
    return {**pretrain, **stats, "seconds": time.perf_counter() - start}


def _batch_texts(scenes: Sequence[Scene], rng: random.Random) -> list[tuple[str, str, str]]:
    """(name, colour, sentence) triples: one present, one co-occurring absent, one miscoloured per scene."""
    triples = []
    for scene in scenes:
        obj = rng.choice(scene.objects)
        absent = rng.choice(cooccurring_absent(scene) or absent_objects(scene))
        absent_color = rng.choice(sorted(COLORS))
        wrong_color = rng.choice([c for c in sorted(COLORS) if c != obj.color])
        for name, color in ((obj.name, obj.color), (absent, absent_color), (obj.name, wrong_color)):
            triples.append((name, color, object_sentence(name, color, rng)))
    return triples


def _labels(scenes: Sequence[Scene], triples: Sequence[tuple[str, str, str]]) -> torch.Tensor:
    present = [{(o.name, o.color) for o in scene.objects} for scene in scenes]
    return torch.tensor([[1.0 if (n, c) in p else -1.0 for n, c, _ in triples] for p in present])


def _pretrain_visual(model, pixels: torch.Tensor, scenes: Sequence[Scene], cfg: WorldConfig,
                     progress: Progress) -> dict:
    """Cell classification warm-up of the image tower; from scratch, the contrastive loss alone
    collapses to constant features at this size (every cosine equal)."""
    names, colors, _ = cell_targets(scenes, cfg)
    heads = torch.nn.ModuleDict({"name": torch.nn.Linear(cfg.clip_width, names.max().item() + 1),
                                 "color": torch.nn.Linear(cfg.clip_width, len(COLORS))})
    optimizer = torch.optim.AdamW([*model.visual.parameters(), *heads.parameters()], lr=cfg.clip_lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(cfg.seed + 2)
    model.visual.output_tokens = True
    loss_value = float("nan")
    for step in range(cfg.clip_pretrain_steps):
        warmup_cosine_lr(optimizer, cfg.clip_lr, step, cfg.clip_pretrain_steps)
        batch = torch.randint(len(scenes), (cfg.clip_batch_size,), generator=generator)
        _, tokens = model.visual(pixels[batch])
        cells = pool_cells(tokens, cfg)
        loss = F.cross_entropy(heads["name"](cells).flatten(0, 1), names[batch].flatten())
        loss = loss + F.cross_entropy(heads["color"](cells).flatten(0, 1), colors[batch].flatten(), ignore_index=-100)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_value = loss.item()
        if progress:
            progress("clip-vision", step + 1, cfg.clip_pretrain_steps, loss_value)
    model.visual.output_tokens = False
    return {"clip_pretrain_loss": loss_value}


def _train(model, tokenizer, pixels: torch.Tensor, scenes: Sequence[Scene], cfg: WorldConfig,
           progress: Progress) -> dict:
    rng = random.Random(cfg.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.clip_lr, weight_decay=0.0)
    model.train()
    loss_value = float("nan")
    for step in range(cfg.clip_steps):
        warmup_cosine_lr(optimizer, cfg.clip_lr, step, cfg.clip_steps)
        batch = rng.sample(range(len(scenes)), min(cfg.clip_batch_size, len(scenes)))
        batch_scenes = [scenes[i] for i in batch]
        triples = _batch_texts(batch_scenes, rng)
        image_features = model.encode_image(pixels[batch], normalize=True)
        text_features = model.encode_text(tokenizer([t for _, _, t in triples]), normalize=True)
        logits = image_features @ text_features.T * model.logit_scale.exp() + model.logit_bias
        loss = _balanced_sigmoid_loss(logits, _labels(batch_scenes, triples))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_value = loss.item()
        if progress:
            progress("clip", step + 1, cfg.clip_steps, loss_value)
    model.eval()
    return {"clip_loss": loss_value}


def _balanced_sigmoid_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss, positives and negatives weighted equally: with ~3 positives
    per 100 texts the plain sum barely pulls positives apart from the crowd at this batch size."""
    positive = labels > 0
    return F.softplus(-logits[positive]).mean() + F.softplus(logits[~positive]).mean()


def save_local_dir(model: torch.nn.Module, cfg: WorldConfig, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": clip_model_config(cfg), "preprocess_cfg": preprocess_config(cfg)}
    (out_dir / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / "open_clip_model.safetensors"))
