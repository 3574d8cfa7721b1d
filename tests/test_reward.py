import math

import pytest

from csr_core.reward import (
    PathReward,
    RewardConfig,
    ScoredNode,
    filter_reason,
    relevance_reward,
    score_paths,
    select_pair,
)


def _node(node_id, parent_id, text, cum, rel, final, logprob_sum=-1.0, tokens=4):
    return ScoredNode(node_id, parent_id, text, cum, logprob_sum, tokens, final, rel)


# root 0 -> 1 (final), 2 -> {4, 5} (final), 3 -> {6 "the the the" (repeated), 7 "ok" (too short)}
NODES = [
    _node(0, None, "", 0.0, 0.0, False),
    _node(1, 0, "A cat sits.", -1.0, 0.30, True, logprob_sum=-2.0, tokens=4),
    _node(2, 0, "A dog runs.", -2.0, 0.20, False, logprob_sum=-3.0, tokens=3),
    _node(3, 0, "A car.", -3.0, 0.25, False),
    _node(4, 2, "It is red.", -2.5, 0.10, True, logprob_sum=-1.0, tokens=4),
    _node(5, 2, "It is blue.", -2.8, 0.40, True, logprob_sum=-2.0, tokens=4),
    _node(6, 3, "the the the", -3.5, 0.50, True),
    _node(7, 3, "ok", -3.6, 0.50, True),
]


def test_relevance_reward():
    assert relevance_reward(0.25) == pytest.approx(25.0)
    assert relevance_reward(-0.2) == 0.0


def test_filter_reasons():
    cfg = RewardConfig()
    assert filter_reason("ok.", cfg) == "too_short"
    assert filter_reason("The the the cat.", cfg) == "repeated_words"
    assert filter_reason("12345 67890 ###", cfg) == "non_text"
    assert filter_reason("A cat sits on the mat.", cfg) is None
    assert filter_reason("the the cat", RewardConfig(max_word_repeat=2)) == "repeated_words"


def test_rank_mode_hand_computed():
    cfg = RewardConfig(lam=0.9, mode="rank")
    paths = {p.node_ids: p for p in score_paths(NODES, cfg)}
    assert set(paths) == {(0, 1), (0, 2, 4), (0, 2, 5)}  # 6 and 7 are filtered
    # root's children 1,2,3: self ranks 1/3, 2/3, 1; relevance ranks 1 -> 1/3, 3 -> 2/3, 2 -> 1
    # children of 2: self 4 -> 1/2, 5 -> 1; relevance 5 -> 1/2, 4 -> 1
    assert paths[(0, 1)].reward == pytest.approx((0.1 / 3 + 0.9 / 3) / 2)
    assert paths[(0, 2, 4)].reward == pytest.approx((0.1 * 2 / 3 + 0.9 * 1 + 0.1 * 0.5 + 0.9 * 1) / 3)
    assert paths[(0, 2, 5)].reward == pytest.approx((0.1 * 2 / 3 + 0.9 * 1 + 0.1 * 1 + 0.9 * 0.5) / 3)
    assert paths[(0, 1)].self_term == pytest.approx(0.1 / 3 / 2)
    assert paths[(0, 1)].relevance_term == pytest.approx(0.9 / 3 / 2)
    assert paths[(0, 2, 5)].text == "A dog runs. It is blue."
    assert paths[(0, 2, 5)].n_sentences == 2
    pair = select_pair(list(paths.values()), cfg)
    assert pair.chosen.node_ids == (0, 1)  # lowest
    assert pair.rejected.node_ids == (0, 2, 4)  # highest


# Per-sentence value at λ = 0.9 of nodes 1, 2, 4, 5: 0.9 * 100 * cos + 0.1 * exp(logprob_sum / tokens).
SENTENCE_VALUES = (
    0.9 * 30 + 0.1 * math.exp(-2.0 / 4),
    0.9 * 20 + 0.1 * math.exp(-3.0 / 3),
    0.9 * 10 + 0.1 * math.exp(-1.0 / 4),
    0.9 * 40 + 0.1 * math.exp(-2.0 / 4),
)


def test_value_mode_hand_computed():
    cfg = RewardConfig(lam=0.9, mode="value")
    paths = {p.node_ids: p for p in score_paths(NODES, cfg)}
    v1, v2, v4, v5 = SENTENCE_VALUES
    assert paths[(0, 1)].reward == pytest.approx(v1)
    assert paths[(0, 2, 4)].reward == pytest.approx(v2 + v4)
    assert paths[(0, 2, 5)].reward == pytest.approx(v2 + v5)
    assert paths[(0, 2, 5)].relevance_term == pytest.approx(0.9 * 60)
    pair = select_pair(list(paths.values()), cfg)
    assert pair.chosen.node_ids == (0, 2, 5)  # highest
    assert pair.rejected.node_ids == (0, 1)  # lowest
    prob = score_paths(NODES, RewardConfig(mode="value", self_reward="prob"))
    assert prob[0].self_term == pytest.approx(0.1 * math.exp(-2.0))


def test_value_mode_mean_aggregate_hand_computed():
    cfg = RewardConfig(lam=0.9, mode="value", aggregate="mean")
    paths = {p.node_ids: p for p in score_paths(NODES, cfg)}
    v1, v2, v4, v5 = SENTENCE_VALUES
    assert paths[(0, 1)].reward == pytest.approx(v1)
    assert paths[(0, 2, 4)].reward == pytest.approx((v2 + v4) / 2)
    assert paths[(0, 2, 5)].reward == pytest.approx((v2 + v5) / 2)
    assert paths[(0, 2, 5)].relevance_term == pytest.approx(0.9 * 30)
    pair = select_pair(list(paths.values()), cfg)
    # the sum prefers the longer (0, 2, 5); the mean prefers (0, 1), whose one sentence beats their average
    assert pair.chosen.node_ids == (0, 1)
    assert pair.rejected.node_ids == (0, 2, 4)


def test_unknown_aggregate_is_rejected():
    with pytest.raises(ValueError, match="aggregate"):
        RewardConfig(aggregate="max")


def test_filtered_sentence_drops_subtree_and_leaves_sibling_ranks():
    nodes = [
        _node(0, None, "", 0.0, 0.0, False),
        _node(1, 0, "x", -1.0, 0.9, False),  # best by both, but filtered
        _node(2, 0, "A cat sits.", -2.0, 0.2, True),
        _node(3, 0, "A dog runs.", -3.0, 0.1, True),
        _node(4, 1, "It is red.", -1.5, 0.1, True),
    ]
    paths = score_paths(nodes, RewardConfig(lam=0.5))
    assert [p.node_ids for p in paths] == [(0, 2), (0, 3)]
    assert paths[0].reward == pytest.approx((0.5 * 0.5 + 0.5 * 0.5) / 2)  # ranked 1/2 of 2, not 2/3 of 3
    assert paths[1].reward == pytest.approx((0.5 * 1 + 0.5 * 1) / 2)


def test_ties_break_in_creation_order_and_pair_differs():
    a = PathReward((0, 1), 1.0, 1, "a", 0.5, 0.5)
    b = PathReward((0, 2), 1.0, 1, "b", 0.5, 0.5)
    c = PathReward((0, 3), 1.0, 1, "c", 0.5, 0.5)
    for mode in ("rank", "value"):
        pair = select_pair([a, b, c], RewardConfig(mode=mode))
        assert pair.chosen == a and pair.rejected == c
    assert select_pair([a], RewardConfig()) is None


def test_sibling_rank_ties_follow_node_order():
    nodes = [
        _node(0, None, "", 0.0, 0.0, False),
        _node(1, 0, "A cat sits.", -1.0, 0.3, True),
        _node(2, 0, "A dog sits.", -1.0, 0.3, True),
    ]
    paths = score_paths(nodes, RewardConfig(lam=0.9))
    assert paths[0].reward == pytest.approx(0.5 / 2) and paths[1].reward == pytest.approx(1.0 / 2)


@pytest.mark.parametrize(
    "kwargs, field", [({"lam": 1.5}, "lam"), ({"mode": "best"}, "mode"), ({"max_word_repeat": 1}, "max_word_repeat"),
                      ({"self_reward": "x"}, "self_reward")]
)
def test_config_validation(kwargs, field):
    with pytest.raises(ValueError, match=field):
        RewardConfig(**kwargs)
