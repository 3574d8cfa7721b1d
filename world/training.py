"""Training-loop pieces the world's VLM and CLIP share: targets per grid cell, cell pooling, the LR schedule."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from .config import WorldConfig
from .scenes import Scene
from .vocab import COLORS, OBJECTS

Images = Mapping[str, Image.Image] | Callable[[Scene], Image.Image]
Progress = Callable[[str, int, int, float], None] | None


def cell_targets(scenes: Sequence[Scene], cfg: WorldConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per cell: object class (len(OBJECTS) = empty) and colour (-100 where empty), and the
    per-image multi-hot presence of each class."""
    cells = cfg.grid**2
    names = torch.full((len(scenes), cells), len(OBJECTS), dtype=torch.long)
    colors = torch.full((len(scenes), cells), -100, dtype=torch.long)
    color_ids = {c: i for i, c in enumerate(COLORS)}
    for i, scene in enumerate(scenes):
        for obj in scene.objects:
            names[i, obj.cell] = OBJECTS.index(obj.name)
            colors[i, obj.cell] = color_ids[obj.color]
    present = F.one_hot(names, len(OBJECTS) + 1)[..., :-1].amax(dim=1).float()
    return names, colors, present


def pool_cells(patches: torch.Tensor, cfg: WorldConfig) -> torch.Tensor:
    """Mean of each grid cell's patch features: (batch, patches, d) -> (batch, cells, d)."""
    side = cfg.image_size // cfg.patch_size
    per_cell = side // cfg.grid
    b, _, d = patches.shape
    grid = patches.reshape(b, cfg.grid, per_cell, cfg.grid, per_cell, d)
    return grid.mean(dim=(2, 4)).reshape(b, cfg.grid**2, d)


def warmup_cosine_lr(optimizer: torch.optim.Optimizer, peak: float, step: int, total: int) -> None:
    """Linear warmup over the first 5% of steps, then cosine decay to 10% of peak."""
    warmup = max(1, total // 20)
    if step < warmup:
        lr = peak * (step + 1) / warmup
    else:
        progress = (step - warmup) / max(1, total - warmup)
        lr = peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
    for group in optimizer.param_groups:
        group["lr"] = lr
