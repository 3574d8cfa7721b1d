"""The run report: Markdown tables and matplotlib plots from the artifact store, and a Prefect artifact.

Every trained model is an *arm* (what picked its pairs: λ, random or oracle) at a round with a seed; its
change is measured against its parent's evaluation under the same evaluation settings. Over seeds, the
sweep table reports the mean change and its 95% t-interval.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from prefect import task

from csr_core.report import arm_label, arm_sort_key, format_interval, markdown_table, mean_ci
from storage import reports
from storage.store import Store, open_store
from tasks.common import TASK_OPTIONS

POPE_SPLITS = ("random", "popular", "adversarial")
# (column label, split, metric, scale): fractions are shown in points (x100).
ROUND_COLUMNS = (("CHAIR_S greedy", "greedy", "chair_s", 100), ("CHAIR_I greedy", "greedy", "chair_i", 100),
                 ("CHAIR_S sampled", "sampled", "chair_s", 100), ("CHAIR_I sampled", "sampled", "chair_i", 100),
                 ("recall greedy", "greedy", "recall", 100), ("recall sampled", "sampled", "recall", 100),
                 ("theme share", "sampled", "theme_share", 100), ("relevance", "greedy", "relevance", 1),
                 ("words", "greedy", "mean_words", 1))
POPE_COLUMNS = tuple((f"POPE {label} {s}", s, m, 100) for s in POPE_SPLITS
                     for label, m in (("accuracy", "accuracy"), ("F1", "f1"), ("expected F1", "expected_f1")))
# Sweep headline: (label, split, metric, relative?): relative = change / parent value, in %.
SWEEP_COLUMNS = (("CHAIR_I sampled, rel. %", "sampled", "chair_i", True),
                 ("CHAIR_I sampled, pts", "sampled", "chair_i", False),
                 ("CHAIR_S sampled, pts", "sampled", "chair_s", False),
                 ("CHAIR_I greedy, rel. %", "greedy", "chair_i", True),
                 ("recall sampled, pts", "sampled", "recall", False),
                 ("relevance", "greedy", "relevance", False),
                 ("POPE F1 adversarial, pts", "adversarial", "f1", False),
                 ("POPE expected F1 adversarial, pts", "adversarial", "expected_f1", False))


@dataclass
class ReportData:
    metrics: pd.DataFrame  # eval_metrics under the main evaluation settings
    arms: pd.DataFrame  # model_arms with `arm` and `seed`
    pair_accuracy: pd.DataFrame
    pair_rewards: pd.DataFrame
    training: pd.DataFrame
    n_other_evals: int  # evaluations under other settings, left out


def load_report_data(store: Store, model_keys: list[str] | None = None) -> ReportData:
    """Everything the report shows, under the evaluation settings used most (by `model_keys`, if given)."""
    metrics = reports.eval_metrics(store)
    n_other = 0
    if not metrics.empty:
        counted = metrics if model_keys is None else metrics[metrics["model_key"].isin(model_keys)]
        per_config = (counted if not counted.empty else metrics).groupby("eval_config")["eval_key"].nunique()
        main = per_config.idxmax()
        per_config = metrics.groupby("eval_config")["eval_key"].nunique()
        n_other = int(per_config.sum() - per_config[main])
        metrics = metrics[metrics["eval_config"] == main]
    arms = reports.model_arms(store)
    arms["arm"] = [arm_label(_num(lam), _str(mode)) for lam, mode in zip(arms["lam"], arms["mode"])]
    arms["seed"] = arms["dpo_seed"]
    accuracy = reports.pair_accuracies(store)
    accuracy["arm"] = [arm_label(_num(lam), _str(mode)) for lam, mode in zip(accuracy["lam"], accuracy["mode"])]
    accuracy = accuracy.sort_values(["round", "arm", "pairs_key"], key=_arm_order).reset_index(drop=True)
    return ReportData(metrics, arms, accuracy, reports.pair_rewards(store), reports.training_summary(store), n_other)


# -- tables ----------------------------------------------------------------------------------
def wide_metrics(data: ReportData) -> pd.DataFrame:
    """One row per evaluated model: round, arm, seed, and a column per (split, metric)."""
    if data.metrics.empty:
        return pd.DataFrame()
    wide = data.metrics.pivot_table(index="model_key", columns=["split", "metric"], values="value", aggfunc="first")
    wide.columns = [f"{split}/{metric}" for split, metric in wide.columns]
    info = data.arms.set_index("model_key")[["round", "arm", "seed", "parent_key", "pairs_key"]]
    wide = info.join(wide, how="inner").reset_index()
    wide["order"] = wide["arm"].map(arm_sort_key)
    return wide.sort_values(["round", "order", "seed", "model_key"]).drop(columns="order")


def sweep_deltas(data: ReportData, model_keys: list[str] | None = None) -> pd.DataFrame:
    """Per trained model and (split, metric): its value, its parent's, the change and the relative change."""
    wide = wide_metrics(data)
    if wide.empty:
        return pd.DataFrame(columns=["round", "arm", "seed", "model_key", "split", "metric", "parent", "value",
                                     "delta", "relative"])
    by_key = wide.set_index("model_key")
    trained = wide[wide["parent_key"].isin(by_key.index)]
    if model_keys is not None:
        trained = trained[trained["model_key"].isin(model_keys)]
    metric_columns = [c for c in wide.columns if "/" in c]
    rows = []
    for model in trained.itertuples(index=False):
        parent = by_key.loc[model.parent_key]
        values = by_key.loc[model.model_key]
        for column in metric_columns:
            split, metric = column.split("/", 1)
            before, after = parent[column], values[column]
            if pd.isna(before) or pd.isna(after):
                continue
            rows.append({"round": model.round, "arm": model.arm, "seed": model.seed, "model_key": model.model_key,
                         "split": split, "metric": metric, "parent": before, "value": after,
                         "delta": after - before, "relative": (after - before) / before if before else math.nan})
    return pd.DataFrame(rows)


def sweep_summary(deltas: pd.DataFrame, data: ReportData) -> list[dict]:
    """Per (round, arm): seeds, preference accuracy and the headline changes, as mean and 95% interval."""
    if deltas.empty:
        return []
    accuracy = data.pair_accuracy.set_index("pairs_key")["accuracy"]
    pairs_of = data.arms.set_index("model_key")["pairs_key"]
    rows = []
    groups = sorted(deltas.groupby(["round", "arm"]), key=lambda item: (item[0][0], arm_sort_key(item[0][1])))
    for (round_, arm), group in groups:
        models = group["model_key"].unique()
        row = {"round": int(round_), "arm": arm, "seeds": sorted({int(s) for s in group["seed"].dropna()}),
               "pair_accuracy": mean_ci([accuracy.get(pairs_of[m], math.nan) for m in models])}
        for label, split, metric, relative in SWEEP_COLUMNS:
            cells = group[(group["split"] == split) & (group["metric"] == metric)]
            row[label] = mean_ci(cells["relative" if relative else "delta"].tolist())
        rows.append(row)
    return rows


def paired_differences(deltas: pd.DataFrame, split: str = "sampled", metric: str = "chair_i",
                       references: tuple[str, ...] = ("λ=0", "random")) -> list[dict]:
    """Arm minus reference arm on one metric, paired by seed (same parent, same candidates), mean and 95% CI.

    A reference "λ=0" also matches the self-reward-only arm of another reward mode ("λ=0 (value)").
    """
    cells = deltas[(deltas["split"] == split) & (deltas["metric"] == metric)] if not deltas.empty else deltas
    rows = []
    for round_, frame in (cells.groupby("round") if not cells.empty else ()):
        by_arm = {arm: group.groupby("seed")["value"].mean() for arm, group in frame.groupby("arm")}
        for reference in (arm for r in references for arm in sorted(by_arm) if _same_arm(arm, r)):
            for arm in sorted((a for a in by_arm if a != reference), key=arm_sort_key):
                seeds = by_arm[arm].index.intersection(by_arm[reference].index)
                differences = (by_arm[arm][seeds] - by_arm[reference][seeds]).tolist()
                rows.append({"round": int(round_), "arm": arm, "reference": reference,
                             "difference": mean_ci(differences)})
    return rows


def _same_arm(arm: str, reference: str) -> bool:
    return arm == reference or arm.startswith(reference + " (")


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


# -- plots -----------------------------------------------------------------------------------
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


# -- entry points ----------------------------------------------------------------------------
def write_report(db: str, out_dir: str | Path, *, read_only: bool = True, html: bool = False) -> Path:
    """Write `report.md` (and `report.html` with `html`), `sweep.csv` and the PNG plots into `out_dir`.

    Returns the report file. `read_only=False` reads through the process's shared writing connection
    (inside a pipeline run).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    store = Store(db, read_only=True) if read_only else open_store(db)
    try:
        data = load_report_data(store)
    finally:
        if read_only:
            store.close()
    sweep_deltas(data).to_csv(out / "sweep.csv", index=False)
    markdown = summary_markdown(data, write_plots(data, out))
    (out / "report.md").write_text(markdown)
    if not html:
        return out / "report.md"
    (out / "report.html").write_text(markdown_to_html(markdown))
    return out / "report.html"


def markdown_to_html(markdown: str) -> str:
    """A standalone HTML page of the report (markdown-it-py, which Prefect's `rich` already installs)."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark").enable("table").render(markdown)
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}img{max-width:100%}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>CSR report</title>"
            f"<style>{style}</style></head><body>\n{body}</body></html>\n")


@task(name="publish-report", **TASK_OPTIONS)
def publish_report(db: str, out_dir: str | None = None) -> str:
    """Publish the report's tables as the run's Prefect markdown artifact (and write the files if asked)."""
    from prefect.artifacts import create_markdown_artifact

    if out_dir is not None:
        write_report(db, out_dir, read_only=False)
    markdown = summary_markdown(load_report_data(open_store(db)))
    create_markdown_artifact(markdown=markdown, key="csr-report", description="CSR evaluation summary")
    return markdown


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


def _arm_order(column: pd.Series) -> pd.Series:
    return column.map(arm_sort_key) if column.name == "arm" else column


def _num(value):
    return None if value is None or pd.isna(value) else float(value)


def _str(value):
    return None if value is None or (not isinstance(value, str) and pd.isna(value)) else str(value)
