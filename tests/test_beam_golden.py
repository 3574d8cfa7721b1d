"""csr's beam search against transformers 4.46.3 (the paper's code's version) on golden files.

`tests/fixtures/make_beam_golden.py` recorded them (CI does not install 4.46.3): 60 searches of three tiny
random Llamas, 1/5/10 beams, 1/5 groups, diversity 0/3, with stop tokens that never fire or fire early.
Cases csr still decides differently are listed in KNOWN_DIFFERENCES, marked strict xfail: they fail today
for the reasons README's "Deviations" gives, and turn red the day csr matches, so the list stays true.
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


def csr_search(case: dict):
    model = _model(case["model"])
    rows = [list(case["prompt"])]

    def logits(sequences):
        with torch.no_grad():
            return model(input_ids=torch.tensor(sequences)).logits[:, -1].float()

    def step(parent_rows, tokens):
        rows[:] = [rows[p] + [t] for p, t in zip(parent_rows.tolist(), tokens.tolist())]
        return logits(rows)

    params = BeamParams(case["beams"], case["groups"], case["diversity"])
    return diverse_beam_search(logits(rows), step, params, stop_ids=case["stop_ids"], eos_ids=[],
                               max_new_tokens=[case["max_new_tokens"]])[0]


def matches(case: dict) -> bool:
    ours = csr_search(case)
    if len(ours) != len(case["sequences"]):
        return False
    for i, (cand, seq) in enumerate(zip(ours, case["sequences"])):
        padded = seq[len(cand.token_ids):]
        if list(cand.token_ids) != seq[: len(cand.token_ids)] or any(t != DATA["pad"] for t in padded):
            return False
        if case["scores"][0] is not None and abs(cand.score - case["scores"][i]) > 1e-4:
            return False
    return True


def _case_id(case: dict) -> str:
    stops = "early" if len(case["stop_ids"]) > 1 or case["stop_ids"] != [47] else "none"
    return f"{case['model']}-p{case['prompt'][1]}-b{case['beams']}g{case['groups']}-{stops}"


# Where csr decides otherwise today (11 of 60). Groups of 5: a finished group keeps expanding in csr and still
# counts in later groups' penalty, where 4.46.3 pads it. One group: 4.46.3 stops a group from its best
# top-K candidate, a just-finished stop included, where csr (as transformers 5) looks at its best running beam;
# llama_2-p47-b5g1 differs only in which of two stop tokens of equal score ends the best beam, which may be
# the two versions' forwards rounding a near-tie differently (not yet examined).
KNOWN_DIFFERENCES = {
    "llama_0-p43-b5g5-early", "llama_0-p43-b10g1-early", "llama_0-p43-b10g5-early", "llama_1-p47-b10g5-early",
    "llama_1-p43-b10g5-early", "llama_2-p47-b5g1-early", "llama_2-p47-b5g5-early", "llama_2-p47-b10g1-early",
    "llama_2-p43-b5g5-early", "llama_2-p43-b10g1-early", "llama_2-p43-b10g5-early",
}


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_beam_search_equals_transformers_4_46(case, request):
    if _case_id(case) in KNOWN_DIFFERENCES:
        request.applymarker(pytest.mark.xfail(strict=True, reason="csr's finished-group and early-stop rules "
                                                                   "differ from 4.46.3 (README, Deviations)"))
    assert matches(case)


def test_the_golden_files_are_what_they_say():
    assert DATA["transformers"] == "4.46.3" and len(CASES) >= 40
    assert {(c["beams"], c["groups"]) for c in CASES} == {(1, 1), (5, 1), (5, 5), (10, 1), (10, 5)}
