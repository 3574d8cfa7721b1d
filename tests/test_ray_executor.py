"""The Ray executor: a local Ray on 127.0.0.1 with 2 CPU workers gives the local executor's rows exactly, a
worker SIGKILLed mid-shard costs nothing, a SIGKILLed flow resumes from its committed shards, and a bad
address stops the run before any work."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pytest

from csr_testing.subprocess_runs import run_generate
from csr_testing.workers import DiesOnceTreeWorker
from flows.cli import main as csr
from flows.config import load_config
from storage.artifacts import read_prompts
from storage.store import close_all, open_store, query_rows
from tasks.common import StageSpec, run_item_stage
from tasks.executors import WorkerSpec
from tasks.generate import TreeWorker

ROOT = Path(__file__).resolve().parent.parent
RAY = ["runtime.executor=ray", "runtime.workers=2", "prompts.n_per_round=6", "runtime.chunk_size=2"]
LOCAL = ["prompts.n_per_round=6", "runtime.chunk_size=2"]
TREES = ("SELECT prompt_id, node_id, parent_id, text, token_count, logprob_sum, score, is_final, kept "
         "FROM tree_nodes ORDER BY ALL")
COSINES = "SELECT prompt_id, node_id, cosine FROM relevance_scores ORDER BY ALL"


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield
    ray.shutdown()


def _copy_run(run, tmp_path, name):
    db = tmp_path / f"{name}.duckdb"
    shutil.copy(run["world_db"], db)
    return {**run, "db": db, "overrides": [f"db={db}", f"data_dir={run['data_dir']}"]}


def test_trees_and_cosines_on_ray_equal_the_local_executors(tiny_run, tmp_path, local_ray):
    from flows.stages import relevance_flow

    on_ray = _copy_run(tiny_run, tmp_path, "ray")
    relevance_flow(config_files=tiny_run["config_files"], overrides=tiny_run["overrides"] + LOCAL)
    relevance_flow(config_files=on_ray["config_files"], overrides=on_ray["overrides"] + RAY)
    close_all()
    local_trees, ray_trees = query_rows(tiny_run["db"], TREES), query_rows(on_ray["db"], TREES)
    assert local_trees == ray_trees and len({r[0] for r in ray_trees}) == 6
    assert query_rows(tiny_run["db"], COSINES) == query_rows(on_ray["db"], COSINES)
    keys = "SELECT stage, stage_key, status FROM stages ORDER BY ALL"
    assert query_rows(tiny_run["db"], keys) == query_rows(on_ray["db"], keys)  # the executor is in no key


def test_evaluation_on_ray_equals_the_local_executors(tiny_run, tmp_path, local_ray):
    from flows.stages import evaluate_flow

    # 6 items in batches of 2: the greedy, sampled and POPE calls each split into shards on both workers
    settings = ["eval.n_items=6", "eval.batch_size=2", "eval.n_samples=2", "eval.pope_per_item=1"]
    on_ray = _copy_run(tiny_run, tmp_path, "ray")
    evaluate_flow(config_files=tiny_run["config_files"], overrides=tiny_run["overrides"] + settings)
    evaluate_flow(config_files=on_ray["config_files"], overrides=on_ray["overrides"] + settings + RAY)
    close_all()
    for query in ("SELECT split, metric, value, n FROM eval_results ORDER BY ALL",
                  "SELECT * EXCLUDE (stage_key) FROM eval_responses ORDER BY ALL"):
        local, ray_rows = query_rows(tiny_run["db"], query), query_rows(on_ray["db"], query)
        assert local == ray_rows and local
    sampled = query_rows(on_ray["db"], "SELECT count(*) FROM eval_responses WHERE task = 'describe_sampled'")[0][0]
    assert sampled == 12


def test_a_worker_sigkilled_mid_shard_loses_and_duplicates_nothing(tiny_run, tmp_path, local_ray):
    from flows.stages import sample_prompts_flow

    cfg = load_config(tiny_run["config_files"], tiny_run["overrides"] + RAY)
    prompts_key = sample_prompts_flow(config_files=tiny_run["config_files"], overrides=tiny_run["overrides"] + RAY)
    store = open_store(cfg.db)
    prompts = read_prompts(store, prompts_key).set_index("prompt_id")
    kwargs = {"model_dir": str(cfg.world_dir / "models" / "vlm-base"), "model_cfg": cfg.model,
              "runtime": cfg.runtime, "search": cfg.search, "reward": cfg.reward}
    prepare = lambda chunk: prompts.loc[chunk, ["image_path", "instruction"]]  # noqa: E731

    def run(name, worker):
        spec = StageSpec(name, {"test": name})
        run_item_stage(store, spec, table="tree_nodes", items=list(prompts.index), worker=worker,
                       prepare=prepare, runtime=cfg.runtime)
        return spec.key

    dying = WorkerSpec(DiesOnceTreeWorker,
                       {"marker": str(tmp_path / "died"), **kwargs})
    killed, clean = run("with_a_death", dying), run("without", WorkerSpec(TreeWorker, kwargs))
    close_all()
    assert (tmp_path / "died").exists()  # a worker did die
    rows = "SELECT prompt_id, node_id, text, logprob_sum, kept FROM tree_nodes WHERE stage_key = ? ORDER BY ALL"
    after_death, reference = query_rows(cfg.db, rows, [killed]), query_rows(cfg.db, rows, [clean])
    assert after_death == reference and len({r[0] for r in after_death}) == 6
    assert len({(r[0], r[1]) for r in after_death}) == len(after_death)
    assert query_rows(cfg.db, "SELECT status, n_done FROM stages WHERE stage_key = ?", [killed]) == [("complete", 6)]


def _generate(run, extra, kill_after_commits: int | None = None) -> int:
    return run_generate(run["config_files"], [*run["overrides"], *extra], kill_after_commits)


def test_the_flow_sigkilled_mid_stage_resumes_from_its_committed_shards(tiny_run, tmp_path):
    extra = [*RAY, "runtime.chunk_size=1"]
    assert _generate(tiny_run, extra, kill_after_commits=2) == -signal.SIGKILL
    db = tiny_run["db"]
    (done_before,) = query_rows(db, "SELECT count(*) FROM stage_items i JOIN stages s USING (stage_key) "
                                    "WHERE s.stage = 'generate_candidates'")[0]
    assert 2 <= done_before < 6
    assert _generate(tiny_run, extra) == 0
    reference = _copy_run(tiny_run, tmp_path, "reference")
    assert _generate(reference, [*LOCAL, "runtime.chunk_size=1"]) == 0
    assert query_rows(db, TREES) == query_rows(reference["db"], TREES)
    assert query_rows(db, "SELECT status, n_done FROM stages WHERE stage = 'generate_candidates'") == [("complete", 6)]


@pytest.mark.parametrize(("address", "why"), [
    ("127.0.0.1:1", "cannot reach a Ray cluster at 127.0.0.1:1"),
    ("nohost", "expected host:port, auto or empty, got 'nohost'"),
])
def test_a_bad_ray_address_is_one_line_before_any_work(address, why, tmp_path, capsys):
    db = tmp_path / "never.duckdb"
    code = csr(["run", "--db", str(db), "--data-dir", str(tmp_path / "data"), "--set", "runtime.executor=ray",
                "--set", f"runtime.ray_address={address}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and not db.exists()
    assert err[0].startswith(f"csr: error: runtime.ray_address: {why}")


def test_a_worker_that_cannot_read_the_model_dir_names_it(tiny_run, tmp_path, local_ray):
    from tasks.executors import RayExecutor

    cfg = load_config(tiny_run["config_files"], tiny_run["overrides"] + RAY)
    missing = str(tmp_path / "not-on-this-node")
    spec = WorkerSpec(TreeWorker, {"model_dir": missing, "model_cfg": cfg.model, "runtime": cfg.runtime,
                                   "search": cfg.search, "reward": cfg.reward})
    with RayExecutor(spec, cfg.runtime, "generate_candidates") as executor:
        with pytest.raises(RuntimeError, match=f"cannot read the model dir {missing} on this machine"):
            list(executor.run([(["p0"], None)]))
