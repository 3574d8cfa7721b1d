"""The λ curve: for each λ over the same stored candidates, what its pairs look like next to the paper's λ's."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from report.tables import markdown_table
from storage import reports
from storage.store import Store

CURVE_COLUMNS = ["tree", "lam", "pairs", "agreement", "reward_gap", "chosen_words", "rejected_words", "accuracy"]
REFERENCE_LAM = 0.9


def lambda_curve(store: Store, results: list[dict]) -> pd.DataFrame:
    """One row per (candidate tree, λ) of `rescore_candidates`' results."""
    frame = pd.DataFrame(results)
    if frame.empty:
        return pd.DataFrame(columns=CURVE_COLUMNS)
    summary = reports.pairs_summary(store, frame["pairs"].tolist())
    frame = frame.merge(summary, left_on="pairs", right_on="pairs_key", how="left")
    agreement = []
    for _, per_tree in frame.groupby("tree", sort=False):
        reference = per_tree.loc[per_tree["lam"] == REFERENCE_LAM, "pairs"]
        if len(reference):
            agreement.append(reports.pair_agreement(store, per_tree["pairs"].tolist(), reference.iloc[0]))
    if agreement:
        frame = frame.merge(pd.concat(agreement), left_on="pairs", right_on="pairs_key", how="left",
                            suffixes=("", "_agreement"))
    else:
        frame["agreement"] = float("nan")
    accuracy = reports.accuracy_of(store, [k for k in frame["pair_accuracy"].tolist() if k])
    frame = frame.merge(accuracy, left_on="pair_accuracy", right_on="accuracy_key", how="left")
    frame["tree"] = frame["tree"].str.slice(-16)
    frame = frame.drop(columns="pairs").rename(columns={"n_pairs": "pairs"})
    return frame[CURVE_COLUMNS].sort_values(["tree", "lam"]).reset_index(drop=True)


def curve_markdown(curve: pd.DataFrame) -> str:
    rows = [[r.tree, f"{r.lam:g}", _int(r.pairs), _pct(r.agreement), _num(r.reward_gap), _num(r.chosen_words),
             _num(r.rejected_words), _pct(r.accuracy)] for r in curve.itertuples()]
    header = ["tree", "λ", "pairs", f"same pairs as λ={REFERENCE_LAM:g}", "reward gap", "chosen words",
              "rejected words", "preference accuracy"]
    return markdown_table(header, rows)


def write_curve(curve: pd.DataFrame, out_dir: str | Path) -> dict[str, Path]:
    """lambda_curve.csv, .md and .png (agreement, accuracy and lengths against λ) under `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"csv": out / "lambda_curve.csv", "md": out / "lambda_curve.md", "png": out / "lambda_curve.png"}
    curve.to_csv(files["csv"], index=False)
    files["md"].write_text(curve_markdown(curve) + "\n")
    _plot(curve, files["png"])
    return files


def _plot(curve: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for tree, rows in curve.groupby("tree"):
        left.plot(rows["lam"], 100 * rows["agreement"], marker=".",
                  label=f"same pairs as λ={REFERENCE_LAM:g} ({tree[:6]})")
        if rows["accuracy"].notna().any():
            left.plot(rows["lam"], 100 * rows["accuracy"], marker=".", label=f"preference accuracy ({tree[:6]})")
        right.plot(rows["lam"], rows["chosen_words"], marker=".", label=f"chosen ({tree[:6]})")
        right.plot(rows["lam"], rows["rejected_words"], marker=".", linestyle="--", label=f"rejected ({tree[:6]})")
    left.set(xlabel="λ", ylabel="%", title="pairs against λ")
    right.set(xlabel="λ", ylabel="words", title="response length")
    for axis in (left, right):
        axis.legend(fontsize=7)
        axis.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pct(value) -> str:
    return "—" if pd.isna(value) else f"{100 * value:.1f}%"


def _num(value) -> str:
    return "—" if pd.isna(value) else f"{value:.2f}"


def _int(value) -> str:
    return "—" if pd.isna(value) else str(int(value))
