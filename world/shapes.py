"""Pillow glyphs for the object classes, each drawn inside an (x, y, size) square.

Every class has a distinct silhouette so that a small vision tower can tell them
apart at ~24 px; colour fills the main part, details are dark.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from PIL import ImageDraw

DARK = (50, 50, 50)
BROWN = (120, 80, 40)
Color = tuple[int, int, int]


def draw_object(draw: ImageDraw.ImageDraw, name: str, color: Color, x: int, y: int, size: int) -> None:
    if name not in _GLYPHS:
        raise ValueError(f"no glyph for object {name!r}")
    _GLYPHS[name](_Box(draw, x, y, size), color)


class _Box:
    """Maps unit coordinates (0..1 inside the object's square) to pixels."""

    def __init__(self, draw: ImageDraw.ImageDraw, x: int, y: int, size: int):
        self.draw, self.x, self.y, self.size = draw, x, y, size

    def p(self, u: float, v: float) -> tuple[float, float]:
        return (self.x + u * (self.size - 1), self.y + v * (self.size - 1))

    def rect(self, u0, v0, u1, v1, fill, outline=None):
        self.draw.rectangle([self.p(u0, v0), self.p(u1, v1)], fill=fill, outline=outline)

    def ellipse(self, u0, v0, u1, v1, fill, outline=None, width=1):
        self.draw.ellipse([self.p(u0, v0), self.p(u1, v1)], fill=fill, outline=outline, width=width)

    def poly(self, points, fill, outline=None):
        self.draw.polygon([self.p(u, v) for u, v in points], fill=fill, outline=outline)

    def line(self, points, fill, width=1):
        self.draw.line([self.p(u, v) for u, v in points], fill=fill, width=width)

    def pie(self, u0, v0, u1, v1, start, end, fill):
        self.draw.pieslice([self.p(u0, v0), self.p(u1, v1)], start, end, fill=fill)


def _mug(b: _Box, c: Color) -> None:
    b.ellipse(0.55, 0.35, 0.95, 0.75, fill=None, outline=DARK, width=2)
    b.rect(0.1, 0.2, 0.7, 0.95, fill=c, outline=DARK)


def _plate(b: _Box, c: Color) -> None:
    b.ellipse(0.0, 0.2, 1.0, 0.8, fill=c, outline=DARK)
    b.ellipse(0.25, 0.35, 0.75, 0.65, fill=None, outline=DARK)


def _bottle(b: _Box, c: Color) -> None:
    b.rect(0.42, 0.0, 0.58, 0.4, fill=DARK)
    b.rect(0.28, 0.35, 0.72, 1.0, fill=c, outline=DARK)


def _fork(b: _Box, c: Color) -> None:
    b.rect(0.44, 0.45, 0.56, 1.0, fill=c)
    b.rect(0.22, 0.35, 0.78, 0.48, fill=c)
    for u in (0.22, 0.44, 0.66):
        b.rect(u, 0.0, u + 0.12, 0.4, fill=c)


def _flower(b: _Box, c: Color) -> None:
    for du, dv in ((0, -1), (1, 0), (0, 1), (-1, 0)):
        cu, cv = 0.5 + 0.27 * du, 0.5 + 0.27 * dv
        b.ellipse(cu - 0.23, cv - 0.23, cu + 0.23, cv + 0.23, fill=c)
    b.ellipse(0.36, 0.36, 0.64, 0.64, fill=DARK)


def _tree(b: _Box, c: Color) -> None:
    b.rect(0.4, 0.65, 0.6, 1.0, fill=BROWN)
    b.poly([(0.5, 0.0), (0.95, 0.7), (0.05, 0.7)], fill=c, outline=DARK)


def _leaf(b: _Box, c: Color) -> None:
    b.poly([(0.1, 0.9), (0.25, 0.35), (0.9, 0.1), (0.7, 0.7)], fill=c, outline=DARK)
    b.line([(0.1, 0.9), (0.9, 0.1)], fill=DARK)


def _mushroom(b: _Box, c: Color) -> None:
    b.rect(0.38, 0.45, 0.62, 1.0, fill=(230, 220, 190), outline=DARK)
    b.pie(0.0, 0.05, 1.0, 0.85, 180, 360, fill=c)


def _book(b: _Box, c: Color) -> None:
    b.rect(0.15, 0.05, 0.85, 0.95, fill=c, outline=DARK)
    b.rect(0.15, 0.05, 0.3, 0.95, fill=DARK)
    b.line([(0.4, 0.25), (0.75, 0.25)], fill=DARK)


def _lamp(b: _Box, c: Color) -> None:
    b.poly([(0.3, 0.0), (0.7, 0.0), (0.95, 0.45), (0.05, 0.45)], fill=c, outline=DARK)
    b.rect(0.46, 0.45, 0.54, 0.9, fill=DARK)
    b.rect(0.2, 0.88, 0.8, 1.0, fill=DARK)


def _clock(b: _Box, c: Color) -> None:
    b.ellipse(0.0, 0.0, 1.0, 1.0, fill=c, outline=DARK, width=2)
    b.line([(0.5, 0.5), (0.5, 0.12)], fill=DARK, width=2)
    b.line([(0.5, 0.5), (0.78, 0.5)], fill=DARK, width=2)


def _pencil(b: _Box, c: Color) -> None:
    b.poly([(0.1, 0.75), (0.75, 0.1), (0.9, 0.25), (0.25, 0.9)], fill=c, outline=DARK)
    b.poly([(0.1, 0.75), (0.25, 0.9), (0.0, 1.0)], fill=DARK)


def _ball(b: _Box, c: Color) -> None:
    b.ellipse(0.1, 0.1, 0.9, 0.9, fill=c)
    b.rect(0.12, 0.44, 0.88, 0.56, fill=(250, 250, 250))


def _umbrella(b: _Box, c: Color) -> None:
    b.line([(0.5, 0.45), (0.5, 0.95), (0.35, 0.95)], fill=DARK, width=2)
    b.pie(0.0, 0.05, 1.0, 0.85, 180, 360, fill=c)
    b.line([(0.0, 0.45), (1.0, 0.45)], fill=DARK)


def _boat(b: _Box, c: Color) -> None:
    b.poly([(0.0, 0.65), (1.0, 0.65), (0.8, 0.95), (0.2, 0.95)], fill=DARK)
    b.rect(0.47, 0.05, 0.53, 0.65, fill=DARK)
    b.poly([(0.55, 0.05), (0.55, 0.58), (0.95, 0.58)], fill=c)


def _star(b: _Box, c: Color) -> None:
    points = []
    for k in range(10):
        radius = 0.5 if k % 2 == 0 else 0.2
        angle = -math.pi / 2 + k * math.pi / 5
        points.append((0.5 + radius * math.cos(angle), 0.52 + radius * math.sin(angle)))
    b.poly(points, fill=c, outline=DARK)


_GLYPHS: dict[str, Callable[[_Box, Color], None]] = {
    "mug": _mug, "plate": _plate, "bottle": _bottle, "fork": _fork,
    "flower": _flower, "tree": _tree, "leaf": _leaf, "mushroom": _mushroom,
    "book": _book, "lamp": _lamp, "clock": _clock, "pencil": _pencil,
    "ball": _ball, "umbrella": _umbrella, "boat": _boat, "star": _star,
}
