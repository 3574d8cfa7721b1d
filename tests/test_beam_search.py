import math

import pytest
import torch

from csr_core.beam_search import diverse_beam_search
from csr_core.beams import BeamParams

VOCAB = 6
STOP = 5  # plays the sentence delimiter


def _logits_from_probs(probs):
    return torch.log(torch.tensor(probs, dtype=torch.float32))


class FixedStep:
    """step_fn returning the same next-token distribution for every row; records calls."""

    def __init__(self, probs):
        self.logits = _logits_from_probs(probs)
        self.calls = []

    def __call__(self, parent_rows, tokens):
        self.calls.append((parent_rows.tolist(), tokens.tolist()))
        return self.logits.expand(len(tokens), -1).clone()


def test_plain_beam_search_hand_computed():
    # Step 1 distribution [.5 .3 .2 0 0 0]; after that "." has p=.6, token 0 p=.4.
    first = _logits_from_probs([[0.5, 0.3, 0.2, 1e-9, 1e-9, 1e-9]])
    step = FixedStep([[0.4, 1e-9, 1e-9, 1e-9, 1e-9, 0.6]])
    out = diverse_beam_search(first, step, BeamParams(2, 1, 0.0), stop_ids=[STOP], eos_ids=[], max_new_tokens=[5])[0]
    # step 2 top-4: (0,.) log .30, (0,0) log .20, (1,.) log .18, (1,0) log .12. Only finishers ranked in the
    # top 2 count (transformers), so (1,.) is dropped; (0,.) finishes, (0,0) and (1,0) run on.
    # step 3: (0,0,.) log .12 finishes (score log(.12)/3 = -.707); the best running (0,0,0) log(.08)/3 = -.842
    # cannot beat the worst finished one, so the search stops.
    assert [c.token_ids for c in out] == [(0, STOP), (0, 0, STOP)]
    assert out[0].score == pytest.approx(math.log(0.5 * 0.6) / 2, abs=1e-5)
    assert out[1].score == pytest.approx(math.log(0.5 * 0.4 * 0.6) / 3, abs=1e-5)
    assert out[1].logprob_sum == pytest.approx(math.log(0.12), abs=1e-5)
    assert len(step.calls) == 2
    assert all(c.finish_reason == "delimiter" for c in out)
    # first step expands the single context row into both beams' rows
    assert step.calls[0][0] == [0, 0]


def test_token_budget_finishes_with_length_reason():
    first = _logits_from_probs([[0.6, 0.4, 1e-9, 1e-9, 1e-9, 1e-9]])
    step = FixedStep([[0.6, 0.4, 1e-9, 1e-9, 1e-9, 1e-9]])
    out = diverse_beam_search(first, step, BeamParams(2, 1, 0.0), stop_ids=[STOP], eos_ids=[], max_new_tokens=[2])[0]
    assert [c.token_ids for c in out] == [(0, 0), (0, 1)]
    assert [c.finish_reason for c in out] == ["length", "length"]
    assert out[1].score == pytest.approx(math.log(0.6 * 0.4) / 2, abs=1e-5)


def test_eos_reason_and_batched_searches_are_independent():
    first = _logits_from_probs([[0.1, 0.1, 0.1, 0.1, 0.1, 0.5], [0.6, 0.2, 0.1, 0.06, 0.04, 1e-9]])
    step = FixedStep([[0.2, 0.2, 0.2, 0.2, 0.1, 0.1]])
    params = BeamParams(2, 1, 0.0)
    out = diverse_beam_search(first, step, params, stop_ids=[], eos_ids=[STOP], max_new_tokens=[3, 1])
    assert out[0][0].token_ids == (STOP,) and out[0][0].finish_reason == "eos"
    assert [c.token_ids for c in out[1]] == [(0,), (1,)]
    alone = diverse_beam_search(first[1:], step, params, stop_ids=[], eos_ids=[STOP], max_new_tokens=[1])
    assert [(c.token_ids, c.score) for c in alone[0]] == [(c.token_ids, c.score) for c in out[1]]


def test_hamming_penalty_hand_computed():
    # 3 groups of 1 beam, budget 1 token. log-probs: token0 log .5, token1 log .3, token2 log .2.
    first = _logits_from_probs([[0.5, 0.3, 0.2, 1e-9, 1e-9, 1e-9]])
    penalty = 0.4
    out = diverse_beam_search(
        first, FixedStep([[1 / 6] * 6]), BeamParams(3, 3, penalty), stop_ids=[STOP], eos_ids=[], max_new_tokens=[1]
    )[0]
    # group 0 picks token 0 (log .5); group 1: token 0 penalised by .4 -> log .5 - .4 = -1.093 > log .3 = -1.204
    # group 2: token 0 picked twice -> log .5 - .8 = -1.493 < log .3 = -1.204 -> token 1
    expected = [((0,), math.log(0.5)), ((0,), math.log(0.5) - penalty), ((1,), math.log(0.3))]
    assert [(c.token_ids, pytest.approx(c.score, abs=1e-5)) for c in out] == expected
    # the raw log-prob sum carries no penalty
    assert out[1].logprob_sum == pytest.approx(math.log(0.5), abs=1e-5)


def test_large_diversity_gives_distinct_first_tokens_across_groups():
    torch.manual_seed(0)
    first = torch.randn(1, 50)

    def step(rows, toks):
        return torch.randn(len(toks), 50)

    torch.manual_seed(1)
    diverse = diverse_beam_search(first, step, BeamParams(5, 5, 100.0), stop_ids=[], eos_ids=[],
                                  max_new_tokens=[3])[0]
    torch.manual_seed(1)
    plain = diverse_beam_search(first, step, BeamParams(5, 5, 0.0), stop_ids=[], eos_ids=[],
                                max_new_tokens=[3])[0]
    assert len({c.token_ids[0] for c in diverse}) == 5
    assert len({c.token_ids[0] for c in plain}) == 1  # without the penalty every group takes the same path


def test_params_validation():
    with pytest.raises(ValueError, match="num_beam_groups"):
        BeamParams(5, 2, 1.0)
    with pytest.raises(ValueError, match="diversity_penalty"):
        BeamParams(4, 2, -1.0)


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    from csr_core.adapters.vlm import VLMAdapter
    from csr_testing.tiny_models import make_tiny_llava

    torch.set_num_threads(2)
    return VLMAdapter.from_pretrained(make_tiny_llava(tmp_path_factory.mktemp("llava")))


@pytest.mark.parametrize("instruction", ["<image>\nDescribe the image in detail.", "what is the man holding"])
def test_matches_transformers_beam_search(tiny_vlm, instruction):
    from PIL import Image

    image = Image.new("RGB", (40, 30), (200, 10, 10))
    k, budget = 4, 10
    inputs = tiny_vlm.model_inputs([image], [instruction])
    stop = sorted(tiny_vlm.delimiter_ids | tiny_vlm.eos_ids)
    ref = tiny_vlm.model.generate(
        **inputs, num_beams=k, num_return_sequences=k, output_scores=True, return_dict_in_generate=True,
        max_new_tokens=budget, eos_token_id=stop,
        length_penalty=1.0, do_sample=False, early_stopping=False, suppress_tokens=sorted(tiny_vlm.suppress_ids),
    )
    prompt_len = inputs["input_ids"].shape[1]
    fill = tiny_vlm.tokenizer.pad_token_id or stop[0]  # what generate pads finished beams with
    ref_seqs = [tuple(t for t in s[prompt_len:].tolist()) for s in ref.sequences]
    prefix = tiny_vlm.encode_prefix(image, instruction)
    ours = tiny_vlm.search_sentences([prefix], [()], [budget], BeamParams(k, 1, 0.0))[0]
    assert len(ours) == k
    for cand, seq, score in zip(ours, ref_seqs, ref.sequences_scores.tolist()):
        assert cand.token_ids == seq[: len(cand.token_ids)]
        assert all(t == fill for t in seq[len(cand.token_ids) :])
        assert cand.score == pytest.approx(score, abs=1e-4)


def test_batched_nodes_match_single_nodes(tiny_vlm):
    from PIL import Image

    prefixes = [
        tiny_vlm.encode_prefix(Image.new("RGB", (40, 30), (200, 10, 10)), "<image>\nDescribe the image."),
        tiny_vlm.encode_prefix(Image.new("RGB", (20, 20), (0, 0, 255)), "What is in this picture? <image>"),
    ]
    vocab = tiny_vlm.tokenizer.get_vocab()
    responses = [(vocab["a"], vocab["dog"], vocab["."]), ()]
    params = BeamParams(4, 2, 1.0)
    batched = tiny_vlm.search_sentences(prefixes, responses, [6, 4], params)
    for prefix, response, budget, together in zip(prefixes, responses, [6, 4], batched):
        alone = tiny_vlm.search_sentences([prefix], [response], [budget], params)[0]
        assert [c.token_ids for c in together] == [c.token_ids for c in alone]
        assert [c.score for c in together] == pytest.approx([c.score for c in alone], abs=1e-4)


def test_at_the_budget_later_groups_are_penalised_for_the_best_running_token():
    # 2 groups of 1 beam, budget 1. Group 0 finishes with "." (log .5); its running beam, the one transformers
    # penalises later groups for, is token 0 (log .3), not the finished ".". So group 1 may finish with "." too.
    first = _logits_from_probs([[0.3, 0.2, 1e-9, 1e-9, 1e-9, 0.5]])
    out = diverse_beam_search(first, FixedStep([[1 / 6] * 6]), BeamParams(2, 2, 1.0), stop_ids=[STOP], eos_ids=[],
                              max_new_tokens=[1])[0]
    assert [(c.token_ids, c.finish_reason) for c in out] == [((STOP,), "delimiter"), ((STOP,), "delimiter")]
    assert [c.score for c in out] == pytest.approx([math.log(0.5)] * 2, abs=1e-5)
