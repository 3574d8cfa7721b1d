"""The paper's code's rules (YiyangZhou/CSR, inference_csr/sample.py and construct.py) on hand-built cases."""
from __future__ import annotations

import pytest
from PIL import Image

from csr_core.beams import Candidate
from csr_core.reward import RewardConfig, ScoredNode, score_paths, select_pair
from csr_core.tree import PromptInput, SearchConfig, build_trees


class OpenChildrenVLM:
    """The root gets `n` open sentences with scores -1, -2, ...; deeper nodes end the response."""

    def __init__(self, n: int):
        self.n = n

    def encode_prefix(self, image, instruction):
        return instruction

    def search_sentences(self, prefixes, responses, max_new_tokens, params):
        if responses[0]:
            return [[Candidate((9,), -1.0, -1.0, "eos")] for _ in responses]
        return [[Candidate((100 + j,), -(j + 1.0), -(j + 1.0), "delimiter") for j in range(self.n)]]

    def decode(self, token_ids):
        return f"word{token_ids[0]} sentence."


def _kept_at_depth_1(n_open: int, **search) -> list[bool]:
    prompt = PromptInput("p", Image.new("RGB", (8, 8)), "describe")
    nodes = build_trees(OpenChildrenVLM(n_open), [prompt], SearchConfig(max_depth=3, **search))["p"]
    return [n.kept for n in nodes if n.depth == 1]


@pytest.mark.parametrize("n_open, kept", [
    (3, [True, True, True]),
    (4, [True, True, True, True]),  # the paper keeps all below its 5 sentence beams
    (5, [True, False, False, True, True]),  # new_nodes[:1] + new_nodes[-2:]
    (6, [True, False, False, False, True, True]),
])
def test_pruning_starts_at_five_open_children_as_in_the_papers_code(n_open, kept):
    assert _kept_at_depth_1(n_open) == kept


def test_prune_min_open_4_is_the_rule_csr_had_and_the_world_keeps():
    assert _kept_at_depth_1(4, prune_min_open=4) == [True, False, True, True]
    assert _kept_at_depth_1(3, prune_min_open=4) == [True, True, True]


def _node(node_id, parent, text, cum, rel, final=False):
    return ScoredNode(node_id, parent, text, cum_score=cum, logprob_sum=-1.0, token_count=4, is_final=final,
                      relevance=rel)


# root 0 -> a(1), b(2); a -> c(3, final), d(5, final); b -> e(4, final).
# Leaf creation order: c(3), e(4), d(5); depth-first order: c(3), d(5), e(4).
TIED_TREE = [
    _node(0, None, "", 0.0, 0.0),
    _node(1, 0, "There is a mug.", -1.0, 0.2),
    _node(2, 0, "There is a fork.", -2.0, 0.1),
    _node(3, 1, "It is red.", -2.0, 0.3, final=True),
    _node(4, 2, "It is blue.", -3.0, 0.3, final=True),
    _node(5, 1, "It is green.", -3.0, 0.1, final=True),
]


def test_rank_ties_break_in_depth_first_order():
    # λ = 0.5. Ranks among siblings (1/n best): a (1/2, 1/2), b (1, 1); c (1/2, 1/2), d (1, 1); e (1, 1).
    # Paths, Σ per sentence of 0.5 rT + 0.5 rI over 3 nodes: c 1/3, d 1/2, e 2/3: no tie yet.
    cfg = RewardConfig(lam=0.5, mode="rank")
    paths = score_paths(TIED_TREE, cfg)
    assert [p.node_ids[-1] for p in paths] == [3, 5, 4]  # depth-first
    assert [p.reward for p in paths] == pytest.approx([1 / 3, 1 / 2, 2 / 3])
    pair = select_pair(paths, cfg)
    assert (pair.chosen.node_ids[-1], pair.rejected.node_ids[-1]) == (3, 4)


def test_exact_and_float_rounding_ties_pick_the_first_best_and_last_worst_in_dfs_order():
    # Four leaves under one parent, all with equal ranks: every path ties exactly; dfs = leaf order here.
    tree = [_node(0, None, "", 0.0, 0.0), _node(1, 0, "One mug here.", -1.0, 0.2)]
    tree += [_node(2 + i, 1, f"Sentence {i}.", -1.0, 0.2, final=True) for i in range(4)]
    cfg = RewardConfig(lam=0.9, mode="rank")
    pair = select_pair(score_paths(tree, cfg), cfg)
    assert (pair.chosen.node_ids[-1], pair.rejected.node_ids[-1]) == (2, 5)
    # Float rounding: the paper sums (1-λ) rT + λ rI sentence by sentence and divides once; summing the two
    # terms apart rounds differently for these ranks, which is enough to flip an exact tie.
    from csr_core.reward import PathParts, weigh

    parts = PathParts((0, 1, 2), 2, "x", (0.5, 0.5), (0.5, 2 / 3))
    per_sentence = ((1.0 - 0.9) * 0.5 + 0.9 * 0.5 + ((1.0 - 0.9) * 0.5 + 0.9 * (2 / 3))) / 3
    apart = ((1.0 - 0.9) * 0.5 + (1.0 - 0.9) * 0.5) / 3 + (0.9 * 0.5 + 0.9 * (2 / 3)) / 3
    assert per_sentence != apart and weigh(parts, cfg).reward == per_sentence


def test_leaf_order_is_the_switch_for_csrs_earlier_tie_order():
    cfg = RewardConfig(lam=0.5, mode="rank", path_order="leaf")
    assert [p.node_ids[-1] for p in score_paths(TIED_TREE, cfg)] == [3, 4, 5]


def test_dedupe_off_reproduces_the_papers_identical_text_pairs():
    tree = [_node(0, None, "", 0.0, 0.0), _node(1, 0, "There is a mug.", -1.0, 0.2),
            _node(2, 1, "It is red.", -1.0, 0.3, final=True), _node(3, 0, "There is a mug.", -2.0, 0.1),
            _node(4, 3, "It is red.", -2.0, 0.1, final=True)]
    on = RewardConfig(lam=0.9, mode="rank")
    assert len(score_paths(tree, on)) == 1 and select_pair(score_paths(tree, on), on) is None
    off = RewardConfig(lam=0.9, mode="rank", dedupe_texts=False)
    pair = select_pair(score_paths(tree, off), off)
    assert pair.chosen.text == pair.rejected.text and pair.chosen.node_ids != pair.rejected.node_ids
    single = tree[:3]
    pair = select_pair(score_paths(single, off), off)
    assert pair.chosen is pair.rejected  # one path: the paper's code pairs it with itself


class EosInsideVLM(OpenChildrenVLM):
    """The root gets a sentence that runs past EOS (9) and one cut at the token budget; deeper nodes stop."""

    eos_ids = frozenset({9})

    def search_sentences(self, prefixes, responses, max_new_tokens, params):
        if responses[0]:
            return [[Candidate((101,), -1.0, -1.0, "delimiter")] for _ in responses]
        return [[Candidate((9, 100), -1.0, -1.0, "delimiter"), Candidate((100, 100), -2.0, -2.0, "length")]]


def test_without_stop_at_eos_a_node_is_final_when_eos_is_in_it_and_a_cut_sentence_goes_on():
    prompt = PromptInput("p", Image.new("RGB", (8, 8)), "describe")
    nodes = build_trees(EosInsideVLM(0), [prompt], SearchConfig(max_depth=3, stop_at_eos=False))["p"]
    first = [n for n in nodes if n.depth == 1]
    assert [n.is_final for n in first] == [True, False]  # sample.py: final iff </s> is among its tokens
    assert [n.parent_id for n in nodes if n.depth == 2] == [first[1].node_id]
    nodes = build_trees(EosInsideVLM(0), [prompt], SearchConfig(max_depth=3))["p"]
    assert [n.is_final for n in nodes if n.depth == 1] == [False, True]  # csr: the budget ends the response


def test_the_adapter_searches_past_eos_when_asked(tmp_path):
    from csr_core.adapters.vlm import VLMAdapter
    from csr_core.beams import BeamParams
    from csr_testing.tiny_models import make_tiny_llava

    path = make_tiny_llava(tmp_path)
    found = {}
    for stop_at_eos in (True, False):
        vlm = VLMAdapter.from_pretrained(path, stop_at_eos=stop_at_eos)
        (eos,) = vlm.eos_ids

        def favour_eos(module, inputs, output, eos=eos):  # make EOS the likeliest next token
            output[..., eos] += 20.0
            return output

        vlm.model.lm_head.register_forward_hook(favour_eos)
        prefix = vlm.encode_prefix(Image.new("RGB", (20, 16)), "<image>\ndescribe")
        found[stop_at_eos] = (eos, vlm.search_sentences([prefix], [()], [6], BeamParams(4, 2, 3.0))[0])
    eos, stopped = found[True]
    assert stopped[0].finish_reason == "eos" and stopped[0].token_ids == (eos,)
    eos, past = found[False]
    assert all(c.finish_reason != "eos" for c in past) and any(eos in c.token_ids[:-1] for c in past)


def test_relaxed_filters_keep_what_the_papers_code_keeps():
    """The paper drops only sentences under 4 characters; csr also drops word repeats and non-text runs."""
    from csr_core.reward import filter_reason

    paper = RewardConfig(max_word_repeat=10_000, min_alpha_ratio=0.0)
    for text in ("a a a a mug.", "=== *** ==="):
        assert filter_reason(text, RewardConfig()) is not None and filter_reason(text, paper) is None
    assert filter_reason("ok.", paper) == "too_short"  # under 4 characters, as dfs_score's child_len >= 4
