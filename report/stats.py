"""Small pure helpers of the report: a mean with its 95% t-interval, arm labels and their order, intervals as text."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# Student t 0.975 quantiles for 1..30 degrees of freedom (two-sided 95%); beyond 30, interpolated to 1.96.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)


def t_quantile_975(df: int) -> float:
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    return 1.960 + (_T975[-1] - 1.960) * len(_T975) / df  # t_q(df) - z_q shrinks like 1/df


@dataclass(frozen=True)
class Interval:
    """Mean of n values and its two-sided 95% t-interval (half_width NaN for n < 2)."""

    mean: float
    half_width: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    @property
    def excludes_zero(self) -> bool:
        return self.n >= 2 and (self.low > 0 or self.high < 0)


def mean_ci(values: Sequence[float]) -> Interval:
    """Mean and 95% t-interval over seeds, ignoring NaN (missing) values."""
    kept = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n = len(kept)
    if n == 0:
        return Interval(math.nan, math.nan, 0)
    mean = sum(kept) / n
    if n < 2:
        return Interval(mean, math.nan, 1)
    sd = math.sqrt(sum((v - mean) ** 2 for v in kept) / (n - 1))
    return Interval(mean, t_quantile_975(n - 1) * sd / math.sqrt(n), n)


def arm_label(lam: float | None, mode: str | None) -> str:
    """What selected a model's training pairs: "base", "random", "oracle", "λ=0.9" ("λ=0.9 (value)" in value mode)."""
    if mode is None or (isinstance(mode, float) and math.isnan(mode)):
        return "base"
    if mode in ("random", "oracle"):
        return mode
    return f"λ={lam:g}" + ("" if mode == "rank" else f" ({mode})")


def arm_sort_key(label: str) -> tuple[int, float, str]:
    """Order of arms in tables: base, λ arms by λ, then the controls."""
    if label.startswith("λ="):
        return (1, float(label[2:].split(" ")[0]), label)
    return ({"base": 0, "random": 2, "oracle": 3}.get(label, 4), 0.0, label)


def format_interval(interval: Interval, digits: int = 1, scale: float = 1.0, suffix: str = "") -> str:
    """`-12.3 ± 4.5` (scaled), `-12.3` for one value, `–` for none."""
    if interval.n == 0:
        return "–"
    mean = interval.mean * scale
    text = f"{0.0 if abs(mean) < 0.5 * 10 ** -digits else mean:+.{digits}f}"  # no "-0.0"
    if interval.n >= 2:
        text += f" ± {interval.half_width * scale:.{digits}f}"
    return text + suffix

