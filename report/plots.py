"""The report's matplotlib plots (PNG): metrics by round per arm, arm changes with intervals, reward histograms."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from csr_core.metrics import POPE_SPLITS
from report.data import ReportData, sweep_deltas, sweep_summary, wide_metrics


def write_plots(data: ReportData, out_dir: Path) -> dict[str, str]:
    """PNG files in `out_dir`; returns {name: file name} of those drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wide = wide_metrics(data)
    drawn = {}
    for name, draw in (("by_round", _plot_by_round), ("relevance", _plot_relevance), ("arms", _plot_arms),
                       ("rewards", _plot_rewards)):
        figure = draw(plt, data, wide)
        if figure is not None:
            figure.tight_layout()
            figure.savefig(out_dir / f"{name}.png", dpi=110)
            plt.close(figure)
            drawn[name] = f"{name}.png"
    return drawn


def _round_lines(wide: pd.DataFrame, column: str) -> dict[str, tuple[list[int], list[float]]]:
    """Per arm: rounds and mean value over seeds, starting from the base model(s) at round 0."""
    if column not in wide.columns:
        return {}
    base = wide[wide["round"] == 0][column].mean()
    lines = {}
    for arm, group in wide[wide["round"] > 0].groupby("arm"):
        means = group.groupby("round")[column].mean()
        lines[arm] = ([0, *means.index.astype(int)], [base, *means.to_numpy()])
    return lines or ({"base": ([0], [base])} if not math.isnan(base) else {})


def _plot_lines(axis, wide: pd.DataFrame, column: str, title: str, scale: float) -> None:
    for arm, (rounds, values) in sorted(_round_lines(wide, column).items()):
        axis.plot(rounds, [v * scale for v in values], marker="o", label=arm)
    axis.set_title(title)
    axis.set_xlabel("round")
    axis.xaxis.get_major_locator().set_params(integer=True)


def _plot_by_round(plt, data: ReportData, wide: pd.DataFrame):
    if wide.empty:
        return None
    pope = {m: [f"{s}/{m}" for s in POPE_SPLITS if f"{s}/{m}" in wide.columns] for m in ("accuracy", "f1")}
    wide = wide.assign(**{f"pope/{m}": wide[cols].mean(axis=1) for m, cols in pope.items() if cols})
    panels = [("sampled/chair_i", "CHAIR_I sampled (%)"), ("greedy/chair_i", "CHAIR_I greedy (%)"),
              ("sampled/chair_s", "CHAIR_S sampled (%)"), ("sampled/recall", "recall sampled (%)"),
              ("pope/accuracy", "POPE accuracy (%)"), ("pope/f1", "POPE F1 (%)")]
    figure, axes = plt.subplots(2, 3, figsize=(12, 6.5))
    for axis, (column, title) in zip(axes.flat, panels):
        _plot_lines(axis, wide, column, title, 100)
    axes.flat[0].legend(fontsize=8)
    return figure


def _plot_relevance(plt, data: ReportData, wide: pd.DataFrame):
    columns = [c for c in ("greedy/relevance", "sampled/relevance") if c in wide.columns]
    if not columns:
        return None
    figure, axes = plt.subplots(1, len(columns), figsize=(5 * len(columns), 3.5), squeeze=False)
    for axis, column in zip(axes.flat, columns):
        _plot_lines(axis, wide, column, f"relevance, {column.split('/')[0]}", 1)
    axes.flat[0].legend(fontsize=8)
    return figure


def _plot_arms(plt, data: ReportData, wide: pd.DataFrame):
    summary = [r for r in sweep_summary(sweep_deltas(data), data) if r["round"] == 1] or \
        sweep_summary(sweep_deltas(data), data)
    if not summary:
        return None
    labels = [r["arm"] for r in summary]
    panels = [("CHAIR_I sampled, rel. %", 100), ("recall sampled, pts", 100), ("pair_accuracy", 100)]
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6))
    for axis, (key, scale) in zip(axes, panels):
        means = [r[key].mean * scale for r in summary]
        errors = [0 if math.isnan(r[key].half_width) else r[key].half_width * scale for r in summary]
        axis.bar(range(len(labels)), [0 if math.isnan(m) else m for m in means], yerr=errors, capsize=4)
        axis.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
        axis.axhline(0, color="black", linewidth=0.8)
        axis.set_title("preference accuracy (%)" if key == "pair_accuracy" else f"Δ {key}")
    return figure


def _plot_rewards(plt, data: ReportData, wide: pd.DataFrame):
    groups = list(data.pair_rewards.groupby(["mode", "lam"], sort=True))[:6]
    if not groups:
        return None
    figure, axes = plt.subplots(1, len(groups), figsize=(4 * len(groups), 3.3), squeeze=False)
    for axis, ((mode, lam), frame) in zip(axes.flat, groups):
        bins = 20
        axis.hist(frame["chosen_reward"], bins=bins, alpha=0.6, label="chosen")
        axis.hist(frame["rejected_reward"], bins=bins, alpha=0.6, label="rejected")
        axis.set_title(f"λ={lam:g}, {mode} ({len(frame)} pairs)")
        axis.set_xlabel("path reward")
    axes.flat[0].legend(fontsize=8)
    return figure
