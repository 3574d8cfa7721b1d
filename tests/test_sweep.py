"""The λ sweep with random and oracle controls on the tiny world: shared candidates, arms, table, cached rerun."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from flows.cli import main as csr
from flows.config import load_config
from flows.sweep import check_arms, sweep
from storage.store import close_all, query_rows
from tasks.controls import has_ground_truth

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "configs" / "tiny.yaml")
L0, L09 = "λ=0 (value)", "λ=0.9 (value)"  # the world's default reward: value mode


@pytest.fixture(scope="module")
def swept(tiny_world, tmp_path_factory):
    db = tmp_path_factory.mktemp("sweep") / "csr.duckdb"
    shutil.copy(tiny_world["db"], db)
    overrides = [f"db={db}", f"data_dir={tiny_world['data_dir']}"]
    result = sweep(config_files=[TINY], overrides=overrides, lams=[0.0, 0.9], controls=["random", "oracle"],
                   seeds=[0])
    close_all()
    return {"db": db, "overrides": overrides, "result": result, "data_dir": tiny_world["data_dir"]}



def test_every_arm_trains_and_evaluates_once(swept):
    db = swept["db"]
    counts = dict(query_rows(db, "SELECT stage, count(*) FROM stages WHERE status = 'complete' GROUP BY stage"))
    assert query_rows(db, "SELECT count(*) FROM stages WHERE status != 'complete'")[0][0] == 0
    assert counts["sample_prompts"] == counts["generate_candidates"] == counts["score_relevance"] == 1
    assert counts["calibrate_select"] == 2  # the controls pick among the paths of the config's λ (0.9) arm
    assert counts["control_pairs"] == 2 and counts["dpo_finetune"] == 4
    assert counts["evaluate"] == 5  # the base model, then each arm's model
    arms = swept["result"]["arms"]
    assert [a["arm"] for a in arms] == [L0, L09, "random", "oracle"]
    assert len({a["model"] for a in arms}) == 4 and len({a["parent_eval"] for a in arms}) == 1


def test_arms_share_the_candidates_and_relevance_scores(swept):
    arms = swept["result"]["arms"]
    assert len({(a["prompts"], a["tree"], a["relevance"]) for a in arms}) == 1
    upstream = [json.loads(u) for (u,) in query_rows(swept["db"], "SELECT upstream FROM stages WHERE stage = "
                                                             "'calibrate_select'")]
    assert {(u["tree"], u["relevance"]) for u in upstream} == {(arms[0]["tree"], arms[0]["relevance"])}


def test_control_pairs_are_marked_and_drawn_from_the_scored_paths(swept):
    db = swept["db"]
    for arm in swept["result"]["arms"][2:]:
        rows = query_rows(db, "SELECT DISTINCT mode, lam FROM preference_pairs_v WHERE pairs_key = ?", [arm["pairs"]])
        assert rows == [(arm["arm"], -1.0)]
        (paths_key,) = query_rows(db, "SELECT json_extract_string(upstream, '$.paths') FROM stages WHERE stage_key = ?",
                             [arm["pairs"]])[0]
        outside = query_rows(db, "SELECT count(*) FROM preference_pairs pp WHERE pp.stage_key = ? AND ("
                            "pp.chosen NOT IN (SELECT text FROM path_rewards WHERE stage_key = ?) OR "
                            "pp.rejected NOT IN (SELECT text FROM path_rewards WHERE stage_key = ?))",
                        [arm["pairs"], paths_key, paths_key])[0][0]
        assert outside == 0
    oracle = swept["result"]["arms"][3]
    worse = query_rows(db, "SELECT value FROM eval_results WHERE stage_key = ? AND metric = 'n_worse'",
                  [oracle["pair_accuracy"]])
    assert worse == [(0.0,)]  # by ground truth, the oracle's chosen never hallucinates more


def test_the_table_has_one_row_per_arm_and_seed(swept):
    result = swept["result"]
    assert [r["arm"] for r in result["summary"]] == [L0, L09, "random", "oracle"]
    assert all(r["seeds"] == [0] and r["CHAIR_I sampled, pts"]["n"] == 1 for r in result["summary"])
    assert len(result["per_seed"]) == 4
    assert all("sampled/chair_i" in r["delta"] and "greedy/recall" in r["delta"] for r in result["per_seed"])
    summary_table, paired_table = result["markdown"].split("\n\n")
    assert len(summary_table.splitlines()) == 2 + 4
    assert [(r["arm"], r["reference"]) for r in result["paired"]] == [
        (L09, L0), ("random", L0), ("oracle", L0), (L0, "random"), (L09, "random"),
        ("oracle", "random")]
    assert len(paired_table.splitlines()) == 2 + 6


def test_the_table_is_published_as_a_prefect_artifact(swept):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        only_ours = ArtifactFilter(key=ArtifactFilterKey(any_=["csr-sweep"]))
        artifacts = client.read_artifacts(artifact_filter=only_ours)
    assert swept["result"]["markdown"] in [a.data for a in artifacts]


def test_a_rerun_from_the_cli_is_all_cache_hits(swept, monkeypatch, capsys):
    from csr_core.adapters.relevance import OpenClipRelevance
    from csr_core.adapters.vlm import VLMAdapter

    def refuse(cls, *args, **kwargs):
        raise AssertionError("a cached sweep loaded a model")

    for cls in (VLMAdapter, OpenClipRelevance):
        monkeypatch.setattr(cls, "from_pretrained", classmethod(refuse))
    before = query_rows(swept["db"], "SELECT count(*) FROM stages")[0][0]
    args = ["sweep", "--config", TINY, "--db", str(swept["db"]), "--data-dir", str(swept["data_dir"]),
            "--lam", "0,0.9", "--controls", "random,oracle", "--seeds", "0"]
    assert csr(args) == 0
    close_all()
    assert query_rows(swept["db"], "SELECT count(*) FROM stages")[0][0] == before
    assert "| 1 | oracle | 0 |" in capsys.readouterr().out


def test_the_oracle_is_skipped_without_ground_truth(swept, tmp_path):
    world = Path(swept["data_dir"]) / "world"
    rows = json.loads((world / "pool.json").read_text())
    pool = tmp_path / "pool.json"
    pool.write_text(json.dumps([{k: v for k, v in row.items() if k != "objects"} for row in rows]))
    assert has_ground_truth(str(world / "pool.json"), str(world / "vocab.json"))
    assert not has_ground_truth(str(pool), str(world / "vocab.json"))
    result = sweep(config_files=[TINY], overrides=[*swept["overrides"], f"prompts.source={pool}",
                                                   f"prompts.image_dir={world / 'images'}"],
                   lams=[], controls=["oracle"], seeds=[0])
    close_all()
    assert result["arms"] == [] and "no ground-truth 'objects'" in result["skipped"]["oracle"]


def test_bad_arms_stop_before_any_work(tmp_path, capsys):
    cfg = load_config([TINY])
    for lams, controls, seeds, round_, message in (([1.5], [], [0], 1, r"^reward\.lam: must be in \[0, 1\]"),
                                                   ([0.9], ["best"], [0], 1, "controls: unknown"),
                                                   ([], [], [0], 1, "at least one"),
                                                   ([0.9], [], [0, 0], 1, "distinct"),
                                                   ([0.9], [], [0], 0, "round must be >= 1")):
        with pytest.raises(ValueError, match=message):
            check_arms(cfg, lams, controls, seeds, round_)
    db = tmp_path / "never.duckdb"
    assert csr(["sweep", "--config", TINY, "--db", str(db), "--controls", "random,best"]) == 2
    assert "controls: unknown ['best']" in capsys.readouterr().err
    assert not db.exists()
