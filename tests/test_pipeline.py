"""The tiny pipeline end to end, in process: stages, caching, rescoring, lineage, the CLI on its database."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from csr_testing.load_counter import LoadCounter
from flows.cli import main as csr
from flows.pipeline import csr_pipeline
from flows.rescore import rescore
from storage.store import close_all, query_rows

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def finished_run(tiny_world, tmp_path_factory):
    import shutil

    db = tmp_path_factory.mktemp("run") / "csr.duckdb"
    shutil.copy(tiny_world["db"], db)
    run = {"config_files": [str(ROOT / "configs" / "tiny.yaml")],
           "overrides": [f"db={db}", f"data_dir={tiny_world['data_dir']}"], "db": db}
    run["summary"] = csr_pipeline(config_files=run["config_files"], overrides=run["overrides"])
    close_all()
    return run



def test_every_stage_completes_and_writes_its_artifacts(finished_run):
    db = finished_run["db"]
    stages = dict(query_rows(db, "SELECT stage, count(*) FROM stages WHERE status = 'complete' GROUP BY stage"))
    for stage in ("world_scenes", "world_vlm", "world_clip", "sample_prompts", "generate_candidates",
                  "score_relevance", "calibrate_select", "dpo_finetune", "evaluate"):
        assert stages.get(stage, 0) >= 1, stage
    assert query_rows(db, "SELECT count(*) FROM stages WHERE status != 'complete'")[0][0] == 0
    n_nodes, n_scored = query_rows(db, "SELECT count(*), count(cosine) FROM tree_v WHERE node_id > 0")[0]
    assert n_nodes > 0 and n_scored == n_nodes
    assert query_rows(db, "SELECT count(*) FROM preference_pairs_v WHERE chosen != rejected")[0][0] >= 1
    rounds = {r[0] for r in query_rows(db, "SELECT DISTINCT round FROM eval_results WHERE split = 'greedy'")}
    assert rounds == {0, 1}
    assert query_rows(db, "SELECT count(*) FROM training_metrics WHERE name = 'loss'")[0][0] >= 1


def test_pope_is_stored_greedy_and_over_the_answer_odds(finished_run):
    db = finished_run["db"]
    n_pope, n_odds, n_valid = query_rows(db, "SELECT count(*), count(p_yes), count(*) FILTER (p_yes BETWEEN 0 AND 1) "
                                             "FROM eval_responses WHERE task LIKE 'pope_%'")[0]
    assert n_pope > 0 and n_odds == n_pope == n_valid
    assert query_rows(db, "SELECT count(p_yes) FROM eval_responses WHERE task LIKE 'describe_%'")[0][0] == 0
    metrics = query_rows(db, "SELECT DISTINCT metric FROM eval_results WHERE split = 'adversarial'")
    assert {"f1", "expected_f1", "expected_yes_ratio"} <= {m for (m,) in metrics}


def test_lineage_links_the_round_model_to_its_parent_and_pairs(finished_run):
    sql = "SELECT round, parent_key, pairs_key, n_pairs FROM lineage_v WHERE round = 1"
    (row,) = query_rows(finished_run["db"], sql)
    assert row[1].startswith("model-") and row[2].startswith("calibrate_select-") and row[3] >= 1


def test_a_rerun_is_all_cache_hits(finished_run, monkeypatch):
    counter = LoadCounter(monkeypatch)
    before = query_rows(finished_run["db"], "SELECT count(*) FROM stages")[0][0]
    summary = csr_pipeline(config_files=finished_run["config_files"], overrides=finished_run["overrides"])
    close_all()
    assert summary == finished_run["summary"]
    assert counter.calls == {"vlm": 0, "clip": 0}
    assert query_rows(finished_run["db"], "SELECT count(*) FROM stages")[0][0] == before


def test_rescore_with_a_new_lambda_calls_neither_vlm_nor_clip(finished_run, monkeypatch):
    counter = LoadCounter(monkeypatch)
    (original,) = finished_run["summary"]["rounds"]
    results = rescore(config_files=finished_run["config_files"],
                      overrides=[*finished_run["overrides"], "reward.lam=0.0"])
    close_all()
    assert counter.calls == {"vlm": 0, "clip": 0}
    (result,) = results
    assert result["tree"] == original["tree"] and result["relevance"] == original["relevance"]
    assert result["pairs"] != original["pairs"]
    lams = {r[0] for r in query_rows(finished_run["db"], "SELECT DISTINCT lam FROM preference_pairs_v")}
    assert lams == {0.0, 0.9}


def test_cli_sql_and_status_read_the_store(finished_run, capsys):
    db = str(finished_run["db"])
    assert csr(["sql", "SELECT count(*) AS n FROM preference_pairs_v", "--db", db, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["n"] >= 1
    assert csr(["sql", "SELECT stage FROM stages ORDER BY stage LIMIT 1", "--db", db, "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "stage"
    assert csr(["status", "--db", db]) == 0
    out = capsys.readouterr().out
    assert "generate_candidates" in out and "complete" in out


def test_cli_rejects_bad_settings_before_any_work(tmp_path, capsys):
    db = tmp_path / "never.duckdb"
    assert csr(["run", "--db", str(db), "--set", "reward.lam=1.5"]) == 2
    assert "reward.lam: must be in [0, 1]" in capsys.readouterr().err
    assert csr(["run", "--db", str(db), "--set", "model.path=/no/such/model"]) == 2
    assert "model.path: not found: /no/such/model" in capsys.readouterr().err
    assert csr(["run", "--db", str(db), "--set", "search.bogus=1"]) == 2
    assert csr(["run", "--db", str(db), "--set", "dpo.lora_layers=[3]"]) == 2  # the world's VLM has 3 layers
    assert "dpo.lora_layers: [3] out of range for a language model of 3 layers" in capsys.readouterr().err
    model = tmp_path / "my-llava"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"text_config": {"num_hidden_layers": 2}}))
    assert csr(["run", "--db", str(db), "--set", f"model.path={model}", "--set", "dpo.lora_layers=[-3]"]) == 2
    assert f"lora_layers: [-3] out of range for a language model of 2 layers ({model})" in capsys.readouterr().err
    assert not db.exists()


def test_the_cli_loads_the_config_once(finished_run, monkeypatch):
    import flows.config

    reads = []
    real = flows.config.read_yaml  # every load reads configs/default.yaml first, whoever calls it
    monkeypatch.setattr(flows.config, "read_yaml", lambda path: reads.append(path.name) or real(path))
    args = ["rescore", "--db", str(finished_run["db"]), "--lam", "0.3"]
    for path in finished_run["config_files"]:
        args += ["--config", path]
    for item in finished_run["overrides"]:
        args += ["--set", item]
    assert csr(args) == 0
    close_all()
    assert reads.count("default.yaml") == 1
