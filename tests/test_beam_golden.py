"""csr's beam search against transformers 4.46.3 (the paper's code's version) on golden files.

`tests/fixtures/make_beam_golden.py` recorded them (CI does not install 4.46.3): 60 searches of three tiny
random Llamas, 1/5/10 beams, 1/5 groups, diversity 0/3, with stop tokens that never fire or fire early.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from csr_core.beam_search import diverse_beam_search
from csr_core.beams import BeamParams

GOLDEN = Path(__file__).resolve().parent / "fixtures" / "beam_golden"
DATA = json.loads((GOLDEN / "cases.json").read_text())
CASES = DATA["cases"]
_MODELS: dict[str, torch.nn.Module] = {}


def _model(name: str):
    from transformers import LlamaForCausalLM

    if name not in _MODELS:
        _MODELS[name] = LlamaForCausalLM.from_pretrained(GOLDEN / name).eval()
    return _MODELS[name]


def csr_search(case: dict, group_rules: str = "transformers4"):
    model = _model(case["model"])
    rows = [list(case["prompt"])]

    def logits(sequences):
        with torch.no_grad():
            return model(input_ids=torch.tensor(sequences)).logits[:, -1].float()

    def step(parent_rows, tokens):
        rows[:] = [rows[p] + [t] for p, t in zip(parent_rows.tolist(), tokens.tolist())]
        return logits(rows)

    params = BeamParams(case["beams"], case["groups"], case["diversity"], group_rules=group_rules)
    return diverse_beam_search(logits(rows), step, params, stop_ids=case["stop_ids"], eos_ids=[],
                               max_new_tokens=[case["max_new_tokens"]], pad_id=DATA["pad"])[0]


def matches(case: dict, group_rules: str = "transformers4") -> bool:
    ours = csr_search(case, group_rules)
    if len(ours) != len(case["sequences"]):
        return False
    for i, (cand, seq) in enumerate(zip(ours, case["sequences"])):
        tokens = list(cand.token_ids)
        if cand.finish_reason != "length":  # 4.46.3 writes eos_token_id[0] after a finished hypothesis, whichever
            tokens[-1] = case["stop_ids"][0]  # stop ended it (BeamSearchScorer.finalize)
        padded = seq[len(tokens):]
        if tokens != seq[: len(tokens)] or any(t != DATA["pad"] for t in padded):
            return False
        if case["scores"][0] is not None and abs(cand.score - case["scores"][i]) > 1e-4:
            return False
    return True


def _case_id(case: dict) -> str:
    stops = "early" if len(case["stop_ids"]) > 1 or case["stop_ids"] != [47] else "none"
    return f"{case['model']}-p{case['prompt'][1]}-b{case['beams']}g{case['groups']}-{stops}"


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_beam_search_equals_transformers_4_46(case):
    assert matches(case)


def test_csrs_earlier_group_rules_differ_where_a_group_finishes_early():
    """`group_rules="csr"` (the world preset) is not 4.46.3's: it differs on searches whose groups finish."""
    grouped = [c for c in CASES if c["groups"] > 1]
    differing = [_case_id(c) for c in grouped if not matches(c, "csr")]
    assert differing and all(case_id.endswith("-early") for case_id in differing)


def test_the_golden_files_are_what_they_say():
    assert DATA["transformers"] == "4.46.3" and len(CASES) >= 40
    assert {(c["beams"], c["groups"]) for c in CASES} == {(1, 1), (5, 1), (5, 5), (10, 1), (10, 5)}
