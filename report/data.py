"""The report's data, from the artifact store: metrics per model, changes vs the parent, intervals over seeds.

Every trained model is an *arm* (what picked its pairs: λ, random or oracle) at a round with a seed; its
change is measured against its parent's evaluation under the same evaluation settings. Over seeds, the
sweep summary reports the mean change and its 95% t-interval.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from csr_core.metrics import POPE_SPLITS
from report.stats import arm_label, arm_sort_key, mean_ci
from storage import reports
from storage.store import Store

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


def _arm_order(column: pd.Series) -> pd.Series:
    return column.map(arm_sort_key) if column.name == "arm" else column


def _num(value):
    return None if value is None or pd.isna(value) else float(value)


def _str(value):
    return None if value is None or (not isinstance(value, str) and pd.isna(value)) else str(value)
