"""Stage keys: stable, and a new λ changes only calibration/selection and what is downstream of it."""
from csr_core.keys import stage_key
from flows.config import load_config
from tasks.calibrate import calibrate_spec
from tasks.dpo import dpo_spec
from tasks.generate import generate_spec
from tasks.relevance import relevance_spec


def _keys(cfg):
    tree = generate_spec(cfg.search, cfg.reward, "model-a", "prompts-a", "clip-a").key
    relevance = relevance_spec("clip-a", tree, "open_clip").key
    pairs = calibrate_spec(cfg.reward, tree, relevance, "prompts-a").key
    model = dpo_spec(cfg.dpo, "model-a", pairs).key
    return {"tree": tree, "relevance": relevance, "pairs": pairs, "model": model}


def test_stage_key_is_stable_and_order_independent():
    a = stage_key("s", {"x": 1, "y": [1, 2]}, {"u": "k1", "v": "k2"})
    b = stage_key("s", {"y": [1, 2], "x": 1}, {"v": "k2", "u": "k1"})
    assert a == b and a.startswith("s-") and len(a) == len("s-") + 16
    assert stage_key("s", {"x": 2}, {}) != stage_key("s", {"x": 1}, {})
    assert stage_key("s", {"x": 1}, {}, version="9.9") != stage_key("s", {"x": 1}, {})


def test_lambda_changes_only_calibration_and_downstream_keys():
    base = _keys(load_config())
    new = _keys(load_config(overrides=["reward.lam=0.5"]))
    assert new["tree"] == base["tree"] and new["relevance"] == base["relevance"]
    assert new["pairs"] != base["pairs"] and new["model"] != base["model"]


def test_search_settings_change_everything_downstream():
    base = _keys(load_config())
    new = _keys(load_config(overrides=["search.diversity_penalty=1.0"]))
    assert all(new[name] != base[name] for name in base)


def test_calibrated_pruning_puts_the_reward_into_the_generation_key():
    cfg = load_config(overrides=["search.prune_by=calibrated"])
    other = load_config(overrides=["search.prune_by=calibrated", "reward.lam=0.5"])
    assert _keys(cfg)["tree"] != _keys(other)["tree"]


def test_runtime_settings_do_not_change_keys():
    assert _keys(load_config()) == _keys(load_config(overrides=["runtime.chunk_size=3", "runtime.device=auto"]))
