"""The views (storage/views.sql, applied on every open): only usable prompt rows reach the pairs DPO trains on."""
import pandas as pd

from storage.artifacts import read_pairs, replace_stage_rows, write_pairs
from storage.store import close_all, open_store


def _prompt(pid, status, image_path, error=None):
    return {"prompt_id": pid, "round": 1, "image_path": image_path, "image_sha256": None, "status": status,
            "instruction": "Describe." if error is None else None, "error": error}


def _pair(pid):
    return {"prompts_key": "prompts-k", "prompt_id": pid, "round": 1, "lam": 0.9, "mode": "rank", "chosen": "A cat.",
            "rejected": "A cat and a dog.", "chosen_reward": 2.0, "rejected_reward": 1.0, "chosen_nodes": [1],
            "rejected_nodes": [2]}


def test_pairs_join_only_prompt_rows_with_status_ok(tmp_path):
    store = open_store(tmp_path / "csr.duckdb")
    prompts = pd.DataFrame([_prompt("a", "ok", "/img/a.jpg"),
                            _prompt("a", "invalid", "", "malformed prompt row: duplicate id"),  # shares the id
                            _prompt("b", "invalid", "/img/b.jpg", "unreadable image /img/b.jpg")])
    replace_stage_rows(store, "prompts", "prompts-k", prompts)
    write_pairs(store, "pairs-k", pd.DataFrame(), pd.DataFrame([_pair("a"), _pair("b")]))
    pairs = read_pairs(store, "pairs-k")
    assert pairs[["prompt_id", "image_path", "instruction"]].values.tolist() == [["a", "/img/a.jpg", "Describe."]]
    close_all()
