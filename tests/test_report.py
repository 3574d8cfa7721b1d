"""The report and the TRL export on a hand-built store: intervals over seeds, sections, plots, CLI round trip."""
from __future__ import annotations

import math

import pandas as pd
import pytest
from PIL import Image

from flows.cli import main as csr
from report.data import load_report_data, sweep_deltas, sweep_summary
from report.stats import Interval, arm_label, arm_sort_key, format_interval, mean_ci, t_quantile_975
from report.tables import markdown_table
from report.write import write_report
from storage import stages
from storage.artifacts import (
    append_training_metrics,
    register_model,
    replace_stage_rows,
    write_eval,
    write_pairs,
    write_training_run,
)
from storage.store import Store

EVAL_CONFIG = {"eval": {"n_items": 4}, "data": {"source": "abc"}}
BASE = {("sampled", "chair_i"): 0.40, ("greedy", "chair_i"): 0.30, ("sampled", "recall"): 0.50,
        ("greedy", "relevance"): 20.0, ("adversarial", "f1"): 0.70}
# Per arm and seed 0, 1, 2: sampled CHAIR_I after DPO, and preference accuracy of the arm's pairs.
ARMS = {(0.9, "rank"): ([0.30, 0.28, 0.32], [0.9, 0.8, 1.0]), (-1.0, "random"): ([0.40, 0.42, 0.38], [0.5, 0.4, 0.6])}


# -- pure helpers ----------------------------------------------------------------------------
def test_mean_ci_is_the_t_interval():
    interval = mean_ci([1.0, 2.0, 3.0])  # sd 1, t(2) = 4.303
    assert interval.mean == 2.0 and interval.n == 3
    assert interval.half_width == pytest.approx(4.303 / math.sqrt(3))
    assert not interval.excludes_zero  # 2 - 2.48 < 0
    assert mean_ci([2.0, 3.0, 4.0]).excludes_zero
    single = mean_ci([5.0, math.nan])
    assert single.mean == 5.0 and single.n == 1 and math.isnan(single.half_width) and not single.excludes_zero
    assert mean_ci([]).n == 0


def test_t_quantiles():
    assert t_quantile_975(1) == 12.706 and t_quantile_975(30) == 2.042
    assert 1.96 < t_quantile_975(120) < t_quantile_975(60) < 2.042
    with pytest.raises(ValueError):
        t_quantile_975(0)


def test_labels_and_formatting():
    assert arm_label(None, None) == "base"
    assert arm_label(0.9, "rank") == "λ=0.9" and arm_label(0.0, "value") == "λ=0 (value)"
    assert arm_label(-1.0, "random") == "random" and arm_label(-1.0, "oracle") == "oracle"
    assert format_interval(Interval(-0.1, 0.05, 3), 1, 100) == "-10.0 ± 5.0"
    assert format_interval(Interval(0.25, math.nan, 1), 2) == "+0.25"
    assert format_interval(Interval(math.nan, math.nan, 0)) == "–"
    assert format_interval(Interval(-1e-9, 0.1, 2), 1, 100) == "+0.0 ± 10.0"
    assert sorted(["oracle", "λ=0.9", "random", "λ=0", "base", "λ=0.5 (value)"], key=arm_sort_key) == \
        ["base", "λ=0", "λ=0.5 (value)", "λ=0.9", "random", "oracle"]
    assert markdown_table(["a", "b"], [["x|y", 0.5]]) == "| a | b |\n|---|---|\n| x\\|y | 0.500 |"


# -- a hand-built store ----------------------------------------------------------------------
def _stage(store, stage, key, config, upstream=None):
    stages.begin_stage(store, stage, key, config, upstream or {})
    stages.finish_stage(store, key)


def _evaluation(store, key, model_key, round_, values):
    _stage(store, "evaluate", key, EVAL_CONFIG, {"model": model_key})
    rows = pd.DataFrame([{"model_key": model_key, "round": round_, "split": split, "metric": metric, "value": value,
                          "n": 4} for (split, metric), value in values.items()])
    write_eval(store, key, rows, pd.DataFrame())


def build_store(db, image_dir):
    store = Store(db)
    register_model(store, "model-base", "/models/base", 0)
    _evaluation(store, "evaluate-base", "model-base", 0, BASE)
    for seed in range(3):
        prompts = f"sample_prompts-{seed}"
        _stage(store, "sample_prompts", prompts, {"prompts": {"seed": seed}, "round": 1})
        image = image_dir / f"scene{seed}.png"
        Image.new("RGB", (24, 16), (40 * seed, 100, 200)).save(image)
        replace_stage_rows(store, "prompts", prompts, pd.DataFrame([{
            "prompt_id": f"p{seed}", "round": 1, "image_path": str(image), "image_sha256": "x",
            "instruction": "<image>\nDescribe the image.", "status": "ok", "error": None}]))
        for (lam, mode), (chair_i, accuracy) in ARMS.items():
            pairs, model = f"pairs-{mode}{seed}", f"dpo_finetune-{mode}{seed}"
            _stage(store, "calibrate_select", pairs, {"reward": {"lam": lam}}, {"prompts": prompts})
            write_pairs(store, pairs, pd.DataFrame(), pd.DataFrame([{
                "prompts_key": prompts, "prompt_id": f"p{seed}", "round": 1, "lam": lam, "mode": mode,
                "chosen": f"A cat {seed}.", "rejected": "A dog.", "chosen_reward": 0.2, "rejected_reward": 0.8,
                "chosen_nodes": [0, 1], "rejected_nodes": [0, 2]}]))
            _stage(store, "pair_accuracy", f"pair_accuracy-{mode}{seed}", {}, {"pairs": pairs})
            replace_stage_rows(store, "eval_results", f"pair_accuracy-{mode}{seed}", pd.DataFrame([
                {"model_key": "", "round": 1, "split": "pairs", "metric": "accuracy", "value": accuracy[seed],
                 "n": 1}]))
            _stage(store, "dpo_finetune", model, {"dpo": {"seed": seed}}, {"model": "model-base", "pairs": pairs})
            register_model(store, model, f"/runs/{model}", 1, parent_key="model-base", pairs_key=pairs)
            write_training_run(store, model, {"base_key": "model-base", "pairs_key": pairs, "adapter_dir": "a",
                                              "merged_dir": "m", "n_pairs": 1, "steps": 2, "seconds": 3.0})
            append_training_metrics(store, model, 1, {"loss": 0.69, "rewards/accuracies": 0.0})
            append_training_metrics(store, model, 2, {"loss": 0.60, "rewards/accuracies": 1.0})
            _evaluation(store, f"evaluate-{mode}{seed}", model, 1, {**BASE, ("sampled", "chair_i"): chair_i[seed]})
    # An evaluation under other settings: left out of every table.
    _stage(store, "evaluate", "evaluate-other", {"eval": {"n_items": 99}}, {"model": "model-base"})
    write_eval(store, "evaluate-other", pd.DataFrame([{"model_key": "model-base", "round": 0, "split": "sampled",
                                                       "metric": "chair_i", "value": 0.99, "n": 1}]), pd.DataFrame())
    store.close()


@pytest.fixture
def store_db(tmp_path):
    db = tmp_path / "csr.duckdb"
    build_store(db, tmp_path)
    return db


def test_arms_summarise_changes_over_seeds(store_db):
    store = Store(store_db, read_only=True)
    data = load_report_data(store)
    store.close()
    assert data.n_other_evals == 1
    deltas = sweep_deltas(data)
    assert set(deltas["arm"]) == {"λ=0.9", "random"} and set(deltas["seed"]) == {0, 1, 2}
    by_arm = {row["arm"]: row for row in sweep_summary(deltas, data)}
    csr_arm, random_arm = by_arm["λ=0.9"], by_arm["random"]
    assert csr_arm["seeds"] == [0, 1, 2]
    # λ=0.9: CHAIR_I 0.40 -> 0.30, 0.28, 0.32: changes -0.10, -0.12, -0.08 (sd 0.02), relative -25, -30, -20 %.
    points = csr_arm["CHAIR_I sampled, pts"]
    assert points.mean == pytest.approx(-0.10) and points.half_width == pytest.approx(4.303 * 0.02 / math.sqrt(3))
    relative = csr_arm["CHAIR_I sampled, rel. %"]
    assert relative.mean == pytest.approx(-0.25) and relative.excludes_zero
    assert random_arm["CHAIR_I sampled, pts"].mean == pytest.approx(0.0)
    assert not random_arm["CHAIR_I sampled, rel. %"].excludes_zero
    assert csr_arm["pair_accuracy"].mean == pytest.approx(0.9)
    assert csr_arm["recall sampled, pts"].mean == 0.0


def test_report_has_its_sections_tables_and_plots(store_db, tmp_path):
    out = tmp_path / "report"
    assert csr(["report", "--db", str(store_db), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    for section in ("## Evaluation by round", "## POPE by round", "## Arms: change vs the parent model",
                    "## Preference accuracy", "## Rewards of chosen and rejected responses", "## DPO runs"):
        assert section in text, section
    assert "| 1 | λ=0.9 | 0,1,2 | 90.0 ± 24.8 | -25.0 ± 12.4 | -10.0 ± 5.0 |" in text
    assert "| 1 | random | 0,1,2 |" in text
    # paired by seed: (0.30 - 0.40, 0.28 - 0.42, 0.32 - 0.38) = (-0.10, -0.14, -0.06): sd 0.04
    assert "| 1 | λ=0.9 | random | -10.0 ± 9.9 | 3 |" in text
    assert "99.0" not in text  # the evaluation under other settings
    for name in ("by_round", "relevance", "arms", "rewards"):
        assert (out / f"{name}.png").stat().st_size > 1000 and f"({name}.png)" in text
    assert len(pd.read_csv(out / "sweep.csv")) == 6 * len(BASE)

    assert csr(["report", "--db", str(store_db), "--out", str(out), "--format", "html"]) == 0
    page = (out / "report.html").read_text()
    assert "<h2>Arms: change vs the parent model</h2>" in page and '<img src="arms.png"' in page
    assert "<td>λ=0.9</td>" in page


def test_report_of_an_empty_store_says_so(tmp_path):
    Store(tmp_path / "empty.duckdb").close()
    text = write_report(str(tmp_path / "empty.duckdb"), tmp_path / "out").read_text()
    assert "No evaluations stored yet" in text


def test_export_trl_round_trip(store_db, tmp_path, capsys):
    from datasets import load_dataset

    out = tmp_path / "pairs.parquet"
    assert csr(["export", "--format", "trl", "--db", str(store_db), "--out", str(out), "--pairs", "pairs-rank1"]) == 0
    assert "1 pairs of pairs-rank1" in capsys.readouterr().out
    rows = load_dataset("parquet", data_files=str(out), split="train")
    assert rows.column_names == ["images", "prompt", "chosen", "rejected"]
    (row,) = rows
    assert row["prompt"] == [{"role": "user", "content": "Describe the image."}]
    assert row["chosen"] == [{"role": "assistant", "content": "A cat 1."}]
    assert row["rejected"] == [{"role": "assistant", "content": "A dog."}]
    assert row["images"][0].size == (24, 16) and row["images"][0].getpixel((0, 0)) == (40, 100, 200)

    assert csr(["export", "--db", str(store_db), "--out", str(tmp_path / "newest.parquet")]) == 0
    assert "pairs of pairs-random2" in capsys.readouterr().out  # the newest pairs stage
    assert csr(["export", "--db", str(store_db), "--out", str(tmp_path / "x.parquet"), "--pairs", "nope"]) == 2
    assert "no preference pairs under nope" in capsys.readouterr().err


def test_the_summary_is_published_as_a_prefect_artifact(store_db, prefect_harness):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.publish import publish_report
    from storage.store import close_all

    @flow
    def publishing(db: str) -> str:
        return publish_report(db)

    markdown = publishing(str(store_db))
    close_all()
    with get_client(sync_client=True) as client:
        only_ours = ArtifactFilter(key=ArtifactFilterKey(any_=["csr-report"]))
        (artifact, *_) = client.read_artifacts(artifact_filter=only_ours, sort="CREATED_DESC")
    assert artifact.type == "markdown" and artifact.data == markdown
    assert "## Arms: change vs the parent model" in markdown and "| 1 | λ=0.9 | 0,1,2 |" in markdown
