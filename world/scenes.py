"""Scenes of the miniature world: a seeded generator and a deterministic pillow renderer.

A scene is a grid of cells (2x2 by default), each empty or holding one coloured
object. Its object list is the exact ground truth that CHAIR and POPE score against.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass

from PIL import Image, ImageDraw

from .config import WorldConfig
from .shapes import draw_object
from .vocab import COLORS, OBJECTS, THEME_OF, THEMES

SPLITS = ("train", "pool", "eval")
BACKGROUND = (238, 236, 230)


@dataclass(frozen=True)
class SceneObject:
    name: str
    color: str
    cell: int  # row-major index into the grid
    size: int  # side of the object's bounding square, pixels
    x: int  # top-left corner of that square
    y: int


@dataclass(frozen=True)
class Scene:
    scene_id: str
    split: str
    theme: str
    objects: tuple[SceneObject, ...]  # sorted by cell, i.e. reading order

    @property
    def object_names(self) -> tuple[str, ...]:
        return tuple(obj.name for obj in self.objects)


def scene_rng(seed: int, key: str) -> random.Random:
    """An RNG that depends only on (seed, key), never on generation order."""
    return random.Random(zlib.crc32(f"{seed}:{key}".encode()))


def generate_scenes(cfg: WorldConfig) -> list[Scene]:
    """All splits (train, pool, eval), deterministic from cfg.seed, with disjoint ids."""
    counts = {"train": cfg.n_train_scenes, "pool": cfg.n_pool_scenes, "eval": cfg.n_eval_scenes}
    return [
        _generate_scene(f"{split}-{index:05d}", split, cfg)
        for split in SPLITS
        for index in range(counts[split])
    ]


def _generate_scene(scene_id: str, split: str, cfg: WorldConfig) -> Scene:
    rng = scene_rng(cfg.seed, scene_id)
    theme = rng.choice(sorted(THEMES))
    n_objects = rng.randint(cfg.min_objects, cfg.max_objects)
    names = _pick_names(rng, theme, n_objects, cfg.theme_purity)
    cells = sorted(rng.sample(range(cfg.grid**2), n_objects))
    rng.shuffle(names)
    objects = tuple(_place(rng, name, cell, cfg) for name, cell in zip(names, cells))
    return Scene(scene_id=scene_id, split=split, theme=theme, objects=objects)


def _pick_names(rng: random.Random, theme: str, n_objects: int, purity: float) -> list[str]:
    names: list[str] = []
    while len(names) < n_objects:
        from_theme = [n for n in THEMES[theme] if n not in names]
        others = [n for n in OBJECTS if THEME_OF[n] != theme and n not in names]
        pool = from_theme if from_theme and rng.random() < purity else others
        names.append(rng.choice(pool))
    return names


def _place(rng: random.Random, name: str, cell: int, cfg: WorldConfig) -> SceneObject:
    cell_px = cfg.image_size // cfg.grid
    size = rng.randint(int(cell_px * 0.7), int(cell_px * 0.875))
    slack = cell_px - size
    row, col = divmod(cell, cfg.grid)
    x = col * cell_px + rng.randint(0, slack)
    y = row * cell_px + rng.randint(0, slack)
    return SceneObject(name=name, color=rng.choice(sorted(COLORS)), cell=cell, size=size, x=x, y=y)


def render_scene(scene: Scene, cfg: WorldConfig) -> Image.Image:
    """The scene's RGB image; same scene and config, same pixels."""
    image = Image.new("RGB", (cfg.image_size, cfg.image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        draw_object(draw, obj.name, COLORS[obj.color], obj.x, obj.y, obj.size)
    return image
