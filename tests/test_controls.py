"""Random and oracle control pairs on hand-made paths."""
from __future__ import annotations

from csr_core.controls import object_counts, oracle_pair, random_pair
from csr_core.metrics import ObjectVocab
from csr_core.reward import PathReward

VOCAB = ObjectVocab({"cat": ("cats",), "dog": ("dogs", "puppy"), "tree": (), "car": ()})
TRUTH = {"cat", "tree"}


def path(leaf: int, text: str, reward: float = 0.0) -> PathReward:
    return PathReward(node_ids=(0, leaf), reward=reward, n_sentences=1, text=text, self_term=reward,
                      relevance_term=0.0)


def test_object_counts_separates_hallucinated_from_present():
    assert object_counts("A cat, two dogs and a puppy near a car.", TRUTH, VOCAB) == (2, 1)  # dog once, car
    assert object_counts("A cat under a tree.", TRUTH, VOCAB) == (0, 2)
    assert object_counts("Nothing here.", TRUTH, VOCAB) == (0, 0)


def test_oracle_picks_fewest_and_most_hallucinated():
    paths = [path(1, "A cat and a dog."),            # 1 bad, 1 present
             path(2, "A dog and a car."),            # 2 bad, 0 present
             path(3, "A cat near a tree."),          # 0 bad, 2 present
             path(4, "A cat.")]                      # 0 bad, 1 present
    pair = oracle_pair(paths, TRUTH, VOCAB)
    assert pair.chosen.node_ids == (0, 3) and pair.rejected.node_ids == (0, 2)


def test_oracle_ties_break_by_present_objects_then_path_order():
    paths = [path(1, "A car."), path(2, "A cat."), path(3, "A cat."), path(4, "A dog."), path(5, "A tree car.")]
    # bad/present: (1,0) (0,1) (0,1) (1,0) (1,1): chosen = first (0,1); rejected = last among (1,0)
    pair = oracle_pair(paths, TRUTH, VOCAB)
    assert pair.chosen.node_ids == (0, 2) and pair.rejected.node_ids == (0, 4)


def test_oracle_pair_differs_even_when_all_paths_tie():
    pair = oracle_pair([path(1, "A cat."), path(2, "A tree.")], TRUTH, VOCAB)
    assert pair.chosen.node_ids == (0, 1) and pair.rejected.node_ids == (0, 2)


def test_random_pair_is_distinct_and_deterministic_per_seed_and_prompt():
    paths = [path(i, f"path {i}") for i in range(1, 7)]
    picks = {(random_pair(paths, seed, pid).chosen.node_ids, random_pair(paths, seed, pid).rejected.node_ids)
             for seed in range(3) for pid in ("a", "b", "c")}
    for chosen, rejected in picks:
        assert chosen != rejected
    assert len(picks) > 1  # seed and prompt matter
    first = random_pair(paths, 7, "p1")
    assert random_pair(paths, 7, "p1") == first
    assert random_pair(list(paths), 7, "p1") == first


def test_random_pair_spreads_over_paths():
    paths = [path(i, f"path {i}") for i in range(1, 4)]
    chosen = {random_pair(paths, 0, f"prompt-{n}").chosen.node_ids[-1] for n in range(50)}
    assert chosen == {1, 2, 3}


def test_fewer_than_two_paths_give_no_pair():
    for pick in (lambda ps: random_pair(ps, 0, "p"), lambda ps: oracle_pair(ps, TRUTH, VOCAB)):
        assert pick([]) is None and pick([path(1, "A cat.")]) is None
