"""Vectorized rescoring equals the per-prompt Python path (`score_paths` + `select_pair`), ties included."""
from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from csr_core.rescore import PathTable, select_pairs, weigh_all
from csr_core.reward import RewardConfig, ScoredNode, path_parts, score_paths, select_pair

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "configs" / "tiny.yaml")
SETTINGS = [RewardConfig(lam=lam, mode=mode, aggregate=aggregate)
            for lam in (0.0, 0.3, 0.5, 0.9, 1.0) for mode, aggregate in (("rank", "sum"), ("value", "sum"),
                                                                        ("value", "mean"))]
WORDS = ["There is a red mug.", "A fork lies left.", "The plate is blue.", "A leaf.", "Two cups here.", "ok",
         "a a a a", "There is a green spoon."]


def random_tree(rng: random.Random) -> list[ScoredNode]:
    """A sentence tree with coarse scores (many exact ties), filtered sentences and duplicate texts."""
    nodes = [ScoredNode(0, None, "", 0.0, 0.0, 0, False, 0.0)]
    frontier = [0]
    while frontier and len(nodes) < 40:
        parent = frontier.pop(0)
        for _ in range(rng.randint(0, 4)):
            final = rng.random() < 0.4 or len(nodes) > 30
            text = "" if final and rng.random() < 0.3 else rng.choice(WORDS)
            node = ScoredNode(len(nodes), parent, text, cum_score=rng.choice([-1.0, -2.0, -2.5, -3.0]),
                              logprob_sum=rng.choice([-0.5, -1.0, -2.0]), token_count=rng.choice([3, 4, 6]),
                              is_final=final, relevance=rng.choice([0.1, 0.2, 0.25, -0.05]))
            nodes.append(node)
            if not final:
                frontier.append(node.node_id)
    return nodes


@pytest.mark.parametrize("cfg", SETTINGS, ids=lambda c: f"{c.mode}-{c.aggregate}-{c.lam}")
def test_weigh_all_and_select_pairs_equal_the_per_prompt_path(cfg):
    rng = random.Random(7)
    trees = [random_tree(rng) for _ in range(300)]
    table = PathTable.from_parts([path_parts(tree, cfg) for tree in trees])
    rewards = weigh_all(table, cfg)
    pairs = select_pairs(table, rewards, cfg)
    reference = [score_paths(tree, cfg) for tree in trees]
    assert rewards.reward.tolist() == [p.reward for paths in reference for p in paths]  # bit for bit
    offsets = [0]
    for paths in reference:
        offsets.append(offsets[-1] + len(paths))
    expected = {}
    for g, paths in enumerate(reference):
        pair = select_pair(paths, cfg)
        if pair is not None:
            expected[g] = (offsets[g] + paths.index(pair.chosen), offsets[g] + paths.index(pair.rejected))
    got = {int(g): (int(c), int(r)) for g, c, r in zip(pairs.group, pairs.chosen, pairs.rejected)}
    assert got == expected and len(expected) > 100


def test_ties_break_as_select_pair_does():
    from csr_core.reward import PathParts

    parts = [PathParts((0, i + 1), 1, f"s{i}", (0.5,), (0.5,)) for i in range(4)]  # four equal paths
    cfg = RewardConfig(lam=0.9, mode="rank")
    table = PathTable.from_parts([parts])
    pairs = select_pairs(table, weigh_all(table, cfg), cfg)
    assert (pairs.chosen.tolist(), pairs.rejected.tolist()) == ([0], [3])  # the first best, the last worst


def test_the_calibrate_stage_stores_the_per_prompt_paths_pairs(tiny_run):
    """Through the stage, on the world's stored trees: every λ's pairs and rewards are the Python path's."""
    from flows.stages import calibrate_flow
    from storage.artifacts import read_scored_tree
    from storage.store import Store, close_all
    from tasks.calibrate import scored_node

    db = tiny_run["db"]
    shutil.copy(tiny_run["world_db"], db)
    for overrides in (["reward.lam=0.9"], ["reward.lam=0.5", "reward.mode=rank"], ["reward.lam=0.0"]):
        calibrate_flow(config_files=[TINY], overrides=[*tiny_run["overrides"], *overrides])
        close_all()
    store = Store(db, read_only=True)
    try:
        stages = store.rows("SELECT stage_key, config, upstream FROM stages WHERE stage = 'calibrate_select'")
        assert len(stages) == 3
        import json

        for key, config, upstream in stages:
            cfg, up = RewardConfig(**json.loads(config)["reward"]), json.loads(upstream)
            tree = read_scored_tree(store, up["tree"], up["relevance"])
            expected = {}
            for prompt_id, nodes in tree.groupby("prompt_id", sort=True):
                pair = select_pair(score_paths([scored_node(r) for r in nodes.itertuples()], cfg), cfg)
                if pair is not None:
                    expected[prompt_id] = (pair.chosen.text, pair.rejected.text, pair.chosen.reward,
                                           pair.rejected.reward, list(pair.chosen.node_ids))
            stored = {r[0]: (r[1], r[2], r[3], r[4], list(r[5])) for r in store.rows(
                "SELECT prompt_id, chosen, rejected, chosen_reward, rejected_reward, chosen_nodes "
                "FROM preference_pairs WHERE stage_key = ?", [key])}
            assert stored == expected and stored
    finally:
        store.close()


def test_a_lambda_curve_in_one_command_without_a_prefect_server(tiny_run, tmp_path, capsys, monkeypatch):
    from flows.cli import main as csr
    from flows.stages import calibrate_flow
    from storage.store import close_all, query_rows

    calibrate_flow(config_files=[TINY], overrides=tiny_run["overrides"])
    close_all()
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_PROFILES_PATH", str(tmp_path / "no-profiles.toml"))
    args = ["rescore", "--config", TINY, "--db", str(tiny_run["db"]), "--data-dir", str(tiny_run["data_dir"]),
            "--lam", "0:1:0.25", "--out", str(tmp_path / "curve")]
    assert csr(args) == 0
    close_all()
    out = capsys.readouterr().out
    assert "same pairs as λ=0.9" in out and (tmp_path / "curve" / "lambda_curve.png").stat().st_size > 1000
    import pandas as pd

    curve = pd.read_csv(tmp_path / "curve" / "lambda_curve.csv")
    assert curve["lam"].tolist() == [0.0, 0.25, 0.5, 0.75, 0.9, 1.0]
    assert curve.loc[curve["lam"] == 0.9, "agreement"].item() == 1.0 and curve["pairs"].min() >= 1
    assert curve["accuracy"].notna().all()  # the world's pool has ground truth
    lams = {r[0] for r in query_rows(tiny_run["db"], "SELECT DISTINCT lam FROM preference_pairs")}
    assert lams == {0.0, 0.25, 0.5, 0.75, 0.9, 1.0}
    assert csr([*args[:-4], "--lam", "1.5"]) == 2
    assert "reward.lam: must be in [0, 1]" in capsys.readouterr().err
