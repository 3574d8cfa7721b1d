"""Empty final nodes (EOS right away) end a response; duplicate texts are one path."""
import pytest

from csr_core.reward import RewardConfig, ScoredNode, score_paths, select_pair


def node(node_id, parent, text, cum, cos, final=False):
    return ScoredNode(node_id, parent, text, cum, cum, max(len(text.split()), 1), final, cos)


TREE = [
    node(0, None, "", 0.0, 0.0),
    node(1, 0, "There is a red mug.", -1.0, 0.30),
    node(2, 0, "There is a blue fork.", -2.0, 0.10),
    node(3, 1, "", -1.5, 0.0, final=True),   # EOS after sentence 1
    node(4, 1, "", -1.5, 0.0, final=True),   # the same EOS from another beam group
    node(5, 2, "", -2.5, 0.0, final=True),
]


def test_eos_only_leaves_complete_their_parent_path_once():
    paths = score_paths(TREE, RewardConfig(lam=0.9))
    assert [p.text for p in paths] == ["There is a red mug.", "There is a blue fork."]
    assert [p.n_sentences for p in paths] == [1, 1]
    # rank mode: node 1 is best by both self score and relevance among its 2 siblings: rank 1/2 each;
    # node 2 ranks 2/2. Path score = rank / (1 sentence + 1 for the root).
    assert paths[0].reward == pytest.approx((0.1 * 0.5 + 0.9 * 0.5) / 2)
    assert paths[1].reward == pytest.approx((0.1 * 1.0 + 0.9 * 1.0) / 2)
    pair = select_pair(paths, RewardConfig(lam=0.9))
    assert (pair.chosen.text, pair.rejected.text) == ("There is a red mug.", "There is a blue fork.")


def test_a_response_with_no_sentence_is_no_path():
    tree = [node(0, None, "", 0.0, 0.0), node(1, 0, "", -0.1, 0.0, final=True)]
    assert score_paths(tree, RewardConfig()) == []
