"""The report's Markdown: generic tables, one table per section, the whole report, and its standalone HTML page."""
from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from report.data import (
    POPE_COLUMNS,
    ROUND_COLUMNS,
    SWEEP_COLUMNS,
    ReportData,
    paired_differences,
    sweep_deltas,
    sweep_summary,
    wide_metrics,
)
from report.stats import format_interval


def format_value(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A GitHub Markdown table; cells are formatted with `format_value` unless already strings."""
    cells = [[c if isinstance(c, str) else format_value(c) for c in row] for row in rows]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
    return "\n".join(lines)


def paired_markdown(rows: list[dict], label: str = "CHAIR_I sampled, pts") -> str:
    return markdown_table(["round", "arm", "minus", label, "seeds"],
                          [[str(r["round"]), r["arm"], r["reference"], format_interval(r["difference"], 1, 100),
                            str(r["difference"].n)] for r in rows])


def sweep_markdown(summary: list[dict]) -> str:
    headers = ["round", "arm", "seeds", "pref. acc. %", *(label for label, *_ in SWEEP_COLUMNS)]
    scales = {label: (100 if relative or metric != "relevance" else 1) for label, _, metric, relative in SWEEP_COLUMNS}
    rows = [[str(r["round"]), r["arm"], ",".join(map(str, r["seeds"])) or "–",
             _plain(r["pair_accuracy"], 100), *(format_interval(r[label], 1, scales[label])
                                                 for label, *_ in SWEEP_COLUMNS)] for r in summary]
    return markdown_table(headers, rows)


def rounds_markdown(wide: pd.DataFrame, columns) -> str:
    shown = [(label, f"{split}/{metric}", scale) for label, split, metric, scale in columns
             if f"{split}/{metric}" in wide.columns]
    headers = ["round", "arm", "seed", "model", *(label for label, *_ in shown)]
    rows = [[str(r["round"]), r["arm"], _int(r["seed"]), _short(r["model_key"]),
             *(_scaled(r[column], scale) for _, column, scale in shown)] for _, r in wide.iterrows()]
    return markdown_table(headers, rows)


def accuracy_markdown(data: ReportData) -> str:
    rows = [[str(r.round), r.arm, _short(r.pairs_key), _int(r.n_pairs), _scaled(r.accuracy, 100), _int(r.n_tied)]
            for r in data.pair_accuracy.itertuples()]
    return markdown_table(["round", "arm", "pairs", "n pairs", "accuracy %", "ties"], rows)


def training_markdown(data: ReportData) -> str:
    rows = [[_short(r.model_key), _short(r.pairs_key), str(r.n_pairs), str(r.steps), f"{r.seconds:.0f}",
             _scaled(r.final_loss, 1), _scaled(r.final_reward_accuracy, 100)] for r in data.training.itertuples()]
    return markdown_table(["model", "pairs", "n pairs", "steps", "seconds", "final loss", "reward acc. %"], rows)


def summary_markdown(data: ReportData, plots: dict[str, str] | None = None) -> str:
    """The report's text: every table, and the plots when their file names are given."""
    plots = plots or {}
    wide = wide_metrics(data)
    deltas = sweep_deltas(data)
    parts = ["# CSR report", ""]
    if wide.empty:
        parts += ["No evaluations stored yet: run `csr run` first.", ""]
    else:
        parts += ["## Evaluation by round", "",
                  ("CHAIR, recall and theme share in %, relevance = mean max(100 cos, 0) per sentence; "
                   "greedy and sampled descriptions of held-out images."), "",
                  rounds_markdown(wide, ROUND_COLUMNS), "", "## POPE by round (%)", "",
                  ("Greedy answers, and the expected F1 over the model's odds of \"Yes\" against \"No\", "
                   "which a near-even question cannot swing by a whole answer."), "",
                  rounds_markdown(wide, POPE_COLUMNS), ""]
        if data.n_other_evals:
            parts += [f"({data.n_other_evals} evaluations under other evaluation settings are not shown.)", ""]
    parts += _plot_links(plots, ("by_round", "relevance"))
    if not deltas.empty:
        parts += ["## Arms: change vs the parent model", "",
                  ("Mean over seeds ± half-width of the 95% t-interval; CHAIR/recall/POPE changes in points, "
                   "'rel. %' = change relative to the parent. Negative CHAIR is better."), "",
                  sweep_markdown(sweep_summary(deltas, data)), ""]
        paired = paired_differences(deltas)
        if paired:
            parts += ["### Arms against each other, paired by seed", "",
                      "Sampled CHAIR_I of the arm minus that of the reference arm trained from the same candidates.",
                      "", paired_markdown(paired), ""]
        parts += _plot_links(plots, ("arms",))
    if not data.pair_accuracy.empty:
        parts += ["## Preference accuracy", "",
                  "Share of pairs whose chosen response names fewer absent objects than the rejected one.", "",
                  accuracy_markdown(data), ""]
    if not data.pair_rewards.empty:
        parts += ["## Rewards of chosen and rejected responses", "",
                  "rank mode: lower is better; value mode: higher is better.", ""]
        parts += _plot_links(plots, ("rewards",))
    if not data.training.empty:
        parts += ["## DPO runs", "", training_markdown(data), ""]
    return "\n".join(parts)


def markdown_to_html(markdown: str) -> str:
    """A standalone HTML page of the report (markdown-it-py, which Prefect's `rich` already installs)."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark").enable("table").render(markdown)
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}img{max-width:100%}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>CSR report</title>"
            f"<style>{style}</style></head><body>\n{body}</body></html>\n")


def _plot_links(plots: dict[str, str], names: tuple[str, ...]) -> list[str]:
    return [line for name in names if name in plots for line in (f"![{name}]({plots[name]})", "")]


def _plain(interval, scale: float) -> str:
    return format_interval(interval, 1, scale).lstrip("+")


def _scaled(value, scale: float) -> str:
    return "–" if value is None or pd.isna(value) else f"{value * scale:.1f}" if scale != 1 else f"{value:.3g}"


def _int(value) -> str:
    return "–" if value is None or pd.isna(value) else str(int(value))


def _short(key) -> str:
    return "–" if not isinstance(key, str) else key.rsplit("-", 1)[-1][:8]
