"""Round sampling (csr_core.prompts.sample_round): no prompt twice in a round, disjoint rounds, and a
clear stop (or seeded reuse) when the pool runs out. Pure: no files, no database."""
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from csr_core.config import PromptConfig
from csr_core.prompts import PoolExhausted, sample_round
from csr_core.validation import ConfigError

POOL10 = [f"p{i:02d}" for i in range(10)]


def todays_rule(prompt_ids, n, round_, seed):
    """The sampling rule before issue 15 (it repeated prompts once a round crossed the end of the pool).

    Rounds that do not exhaust the pool must pick exactly what it picked: the README's results depend on it.
    """
    ordered = sorted(prompt_ids)
    start, picked = (round_ - 1) * n, []
    while len(picked) < min(n, len(ordered)):
        cycle, offset = divmod(start + len(picked), len(ordered))
        order = ordered[:]
        random.Random(f"{seed}:{cycle}").shuffle(order)
        picked.append(order[offset])
    return picked


def test_a_round_crossing_the_end_of_the_pool_holds_no_prompt_twice():
    pool = [f"p{i}" for i in range(64)]
    assert len(set(todays_rule(pool, 40, 2, 0))) == 34  # the bug: 6 prompts twice in one round
    first, second = sample_round(pool, 40, 1, 0), sample_round(pool, 40, 2, 0)
    assert len(second) == 24 and len(set(second)) == 24  # stop: what is left of the pool
    assert sorted(first + second) == sorted(pool)
    reused = sample_round(pool, 40, 2, 0, "reuse")
    assert len(reused) == 40 and len(set(reused)) == 40 and reused[:24] == second


def test_hand_checked_rounds_of_a_pool_of_ten():
    # Random("7:0") shuffles the sorted ids to p03 p09 p01 p08 | p02 p07 p04 p05 | p06 p00, as before
    assert [sample_round(POOL10, 4, r, 7) for r in (1, 2, 3)] == [
        ["p03", "p09", "p01", "p08"], ["p02", "p07", "p04", "p05"], ["p06", "p00"]]
    with pytest.raises(PoolExhausted, match=r"^prompts: round 4 needs prompts 13-16 but the pool has 10 valid "
                                            r"prompts; set prompts.when_exhausted=reuse"):
        sample_round(POOL10, 4, 4, 7)
    # Random("7:1") gives p09 p08 p04 p06 p05 p03 p07 p02 p00 p01; round 3 holds p06 p00 from pass 0, so
    # it takes p09 p08, and p06 p00 move to the end of pass 1
    assert [sample_round(POOL10, 4, r, 7, "reuse") for r in (3, 4, 5)] == [
        ["p06", "p00", "p09", "p08"], ["p04", "p05", "p03", "p07"], ["p02", "p01", "p06", "p00"]]


def test_bad_arguments_and_an_empty_pool_are_errors():
    for mode in ("stop", "reuse"):
        with pytest.raises(PoolExhausted):
            sample_round([], 3, 1, 0, mode)
    with pytest.raises(ValueError, match="when_exhausted"):
        sample_round(POOL10, 3, 1, 0, "wrap")
    with pytest.raises(ValueError, match="n > 0"):
        sample_round(POOL10, 0, 1, 0)


def test_when_exhausted_is_validated_in_the_config():
    assert PromptConfig().when_exhausted == "stop" and PromptConfig(when_exhausted="reuse").when_exhausted == "reuse"
    with pytest.raises(ConfigError, match=r"^when_exhausted: must be one of \('stop', 'reuse'\), got 'again'$"):
        PromptConfig(when_exhausted="again")


pools = st.integers(0, 40).map(lambda size: [f"id{i}" for i in range(size)])
sizes = st.integers(1, 15)
counts = st.integers(1, 9)
seeds = st.integers(0, 3)


@settings(max_examples=150, deadline=None)
@given(pools, sizes, counts, seeds)
def test_stop_rounds_are_disjoint_slices_until_the_pool_runs_out(pool, n, n_rounds, seed):
    rounds = []
    for r in range(1, n_rounds + 1):
        start = (r - 1) * n
        if start >= len(pool):  # exactly the rounds that start beyond the pool fail
            with pytest.raises(PoolExhausted):
                sample_round(pool, n, r, seed)
            continue
        picked = sample_round(pool, n, r, seed)
        assert len(picked) == len(set(picked)) == min(n, len(pool) - start)
        assert set(picked) <= set(pool)
        assert picked == sample_round(list(reversed(pool)), n, r, seed)  # deterministic, order-free
        assert picked == todays_rule(pool, n, r, seed) or start + n > len(pool)
        rounds.append(picked)
    drawn = [pid for picked in rounds for pid in picked]
    assert len(drawn) == len(set(drawn))  # rounds pairwise disjoint
    assert len(drawn) == min(len(pool), n * n_rounds)
    if n * n_rounds >= len(pool):
        assert sorted(drawn) == sorted(pool)  # until exhaustion the rounds cover the pool


@settings(max_examples=150, deadline=None)
@given(pools.filter(bool), sizes, counts, seeds)
def test_reuse_rounds_hold_distinct_prompts_and_each_pass_serves_the_pool_once(pool, n, n_rounds, seed):
    rounds = [sample_round(pool, n, r, seed, "reuse") for r in range(1, n_rounds + 1)]
    for r, picked in enumerate(rounds, start=1):
        assert len(picked) == len(set(picked)) == min(n, len(pool)) and set(picked) <= set(pool)
        if r * n <= len(pool):
            assert picked == sample_round(pool, n, r, seed, "stop") == todays_rule(pool, n, r, seed)
        assert picked == sample_round(list(reversed(pool)), n, r, seed, "reuse")
    stream = [pid for picked in rounds for pid in picked]
    for start in range(0, len(stream) - len(pool) + 1, len(pool)):
        assert sorted(stream[start:start + len(pool)]) == sorted(pool)
