
import pytest
import torch
from PIL import Image

from csr_core.beams import Candidate
from csr_core.tree import PromptInput, SearchConfig, build_trees


class FakeVLM:
    """Each node gets 5 sentences; sentence j of a node at depth d has score -(j + 1) - d / 10."""

    def __init__(self, final_at_depth=None):
        self.calls = []
        self.final_at_depth = final_at_depth

    def encode_prefix(self, image, instruction):
        return instruction

    def search_sentences(self, prefixes, responses, max_new_tokens, params):
        self.calls.append(len(prefixes))
        out = []
        for response in responses:
            depth = len(response)  # one token per sentence
            reason = "eos" if depth + 1 == self.final_at_depth else "delimiter"
            out.append([Candidate((100 + j,), -(j + 1.0), -(j + 1) - depth / 10, reason) for j in range(5)])
        return out

    def decode(self, token_ids):
        return f"word{token_ids[0]} sentence."


def _prompts(n=1):
    return [PromptInput(f"p{i}", Image.new("RGB", (8, 8)), "<image>\ndescribe") for i in range(n)]


def test_pruning_keeps_top_and_bottom_pooled_across_parents():
    trees = build_trees(FakeVLM(), _prompts(), SearchConfig(max_depth=2))
    nodes = trees["p0"]
    assert len(nodes) == 1 + 5 + 15
    depth1 = [n for n in nodes if n.depth == 1]
    assert [n.kept for n in depth1] == [True, False, False, True, True]  # scores -1 (top), -4, -5 (bottom)
    assert not any(n.is_final for n in depth1)
    depth2 = [n for n in nodes if n.depth == 2]
    assert {n.parent_id for n in depth2} == {1, 4, 5}
    assert all(n.is_final and n.kept for n in depth2)  # max depth reached: final leaves
    child = depth2[0]
    assert child.cum_score == pytest.approx(nodes[child.parent_id].cum_score + child.score)
    assert [n.node_id for n in nodes] == list(range(len(nodes)))


def test_final_candidates_are_not_extended_and_all_kept_when_few():
    trees = build_trees(FakeVLM(final_at_depth=2), _prompts(), SearchConfig(max_depth=5, keep_top=3, keep_bottom=3))
    nodes = trees["p0"]
    assert len(nodes) == 1 + 5 + 25  # all 5 kept (<= 6), their children end with eos
    assert all(n.kept for n in nodes)
    assert all(n.is_final and n.finish_reason == "eos" for n in nodes if n.depth == 2)


def test_nodes_of_all_prompts_decode_in_one_batch_within_the_limit():
    vlm = FakeVLM()
    build_trees(vlm, _prompts(3), SearchConfig(max_depth=2))
    assert vlm.calls == [3, 9]
    vlm = FakeVLM()
    build_trees(vlm, _prompts(3), SearchConfig(max_depth=2, max_batch_nodes=4))
    assert vlm.calls == [3, 4, 4, 1]


def test_calibrated_pruning_ranks_by_relevance():
    def relevance(prompt_ids, texts):  # word104 (worst self score) is the most relevant
        return [0.5 if "word104" in t else 0.1 for t in texts]

    cfg = SearchConfig(max_depth=2, keep_top=1, keep_bottom=0, prune_by="calibrated")
    nodes = build_trees(FakeVLM(), _prompts(), cfg, relevance=relevance)["p0"]
    assert [n.text for n in nodes if n.depth == 1 and n.kept] == ["word104 sentence."]
    with pytest.raises(ValueError, match="relevance"):
        build_trees(FakeVLM(), _prompts(), cfg)


@pytest.mark.parametrize(
    "kwargs, field",
    [({"num_beam_groups": 2}, "num_beam_groups"), ({"max_depth": 0}, "max_depth"), ({"prune_by": "x"}, "prune_by"),
     ({"keep_top": -1}, "keep_top"), ({"diversity_penalty": -1.0}, "diversity_penalty")],
)
def test_config_validation(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SearchConfig(**kwargs)


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    from csr_core.adapters.vlm import VLMAdapter
    from csr_testing.tiny_models import make_tiny_llava

    torch.set_num_threads(2)
    return VLMAdapter.from_pretrained(make_tiny_llava(tmp_path_factory.mktemp("llava")))


def _real_prompts():
    return [
        PromptInput("a", Image.new("RGB", (40, 30), (200, 10, 10)), "<image>\nDescribe the image in detail."),
        PromptInput("b", Image.new("RGB", (20, 20), (0, 0, 255)), "What is in this picture? <image>"),
    ]


def test_tiny_llava_tree_is_well_formed_and_reproducible(tiny_vlm):
    cfg = SearchConfig(max_new_tokens=8, max_depth=3, max_response_tokens=30)
    first = build_trees(tiny_vlm, _real_prompts(), cfg)
    second = build_trees(tiny_vlm, _real_prompts(), cfg)
    assert first == second
    for nodes in first.values():
        by_id = {n.node_id: n for n in nodes}
        assert nodes[0].parent_id is None and nodes[0].depth == 0
        for n in nodes[1:]:
            parent = by_id[n.parent_id]
            assert n.depth == parent.depth + 1 and parent.kept and not parent.is_final
            assert n.cum_score == pytest.approx(parent.cum_score + n.score)
            assert n.token_count == len(n.token_ids) <= cfg.max_new_tokens
            assert n.is_final == (n.finish_reason in ("eos", "length") or n.depth == cfg.max_depth) or (
                n.is_final and n.finish_reason == "delimiter"  # response token limit reached
            )
        for depth in range(1, cfg.max_depth + 1):
            open_kept = [n for n in nodes if n.depth == depth and n.kept and not n.is_final]
            assert len(open_kept) <= cfg.keep_top + cfg.keep_bottom
    # a prompt's tree does not depend on the other prompts in the batch
    alone = build_trees(tiny_vlm, _real_prompts()[1:], cfg)
    assert [(n.token_ids, n.kept) for n in alone["b"]] == [(n.token_ids, n.kept) for n in first["b"]]


def test_tree_signature_ignores_which_of_two_equal_siblings_got_which_id():
    from csr_core.tree import TreeNode, tree_signature

    def node(i, parent, depth, tokens, kept=True):
        return TreeNode(i, parent, depth, "", tokens, len(tokens), -1.0, -1.0, -1.0, False, "delimiter", kept)

    root = TreeNode(0, None, 0, "", (), 0, 0.0, 0.0, 0.0, False, "", True)
    one = [root, node(1, 0, 1, (7, 5)), node(2, 0, 1, (7, 5), kept=False), node(3, 1, 2, (9, 5))]
    other = [root, node(1, 0, 1, (7, 5), kept=False), node(2, 0, 1, (7, 5)), node(3, 2, 2, (9, 5))]
    assert tree_signature(one) == tree_signature(other)
    assert tree_signature(one)[-1] == (2, (7, 5, 9, 5), True, "delimiter")
    assert tree_signature(one) != tree_signature(one[:3] + [node(3, 1, 2, (8, 5))])
