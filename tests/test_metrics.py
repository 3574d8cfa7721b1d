"""CHAIR, POPE and preference accuracy on hand-made cases with hand-computed numbers."""

import pytest

from csr_core.metrics import (
    ObjectVocab,
    PopeItem,
    PopeQuestion,
    chair,
    cooccurrence,
    hallucinated_objects,
    mean_word_count,
    object_frequency,
    parse_yes_no,
    plural_forms,
    pope_expected_metrics,
    pope_metrics,
    pope_questions,
    preference_accuracy,
    theme_share,
)

VOCAB = ObjectVocab.from_names(
    ["dog", "hot dog", "cup", "bus", "cherry", "person", "dining table"],
    synonyms={"dog": ["puppy"], "person": ["man", "woman", "people"], "cup": ["mug"]},
)


def test_plural_forms():
    assert plural_forms("dog") == ("dogs",)
    assert plural_forms("bus") == ("buses",)
    assert plural_forms("cherry") == ("cherries",)
    assert plural_forms("dining table") == ("dining tables",)


def test_mentions_synonyms_plurals_multiword_longest_first():
    text = "Two Puppies sit by a HOT  DOG stand; a man holds mugs near the dining tables. Cherries!"
    assert VOCAB.mentions(text) == ["dog", "hot dog", "person", "cup", "dining table", "cherry"]


def test_mentions_word_boundaries_and_dedup():
    assert VOCAB.mentions("A bushel of cupcakes, a doghouse and a dogma.") == []
    assert VOCAB.mentions("A dog, another dog, and dogs.") == ["dog"]
    assert VOCAB.mentions("") == []


def test_vocab_rejects_form_owned_by_two_objects():
    with pytest.raises(ValueError, match="belongs to both"):
        ObjectVocab({"dog": ("puppy",), "cat": ("puppy",)})


def test_hallucinated_objects():
    assert hallucinated_objects("A puppy drinks from a mug on a bus.", {"dog", "bus"}, VOCAB) == ["cup"]


def test_chair_hand_computed():
    responses = [
        "A dog and a man.",  # mentions dog, person; truth dog,person -> 0 bad
        "Puppies eat hot dogs near a bus.",  # dog, hot dog, bus; truth dog -> 2 bad
        "An empty street.",  # no mentions
        "Cups and cherries.",  # cup, cherry; truth cup -> 1 bad
    ]
    truths = [{"dog", "person"}, {"dog"}, {"bus"}, {"cup", "dining table"}]
    result = chair(responses, truths, VOCAB)
    assert result.n_mentions == 7
    assert result.n_hallucinated == 3
    assert result.chair_s == pytest.approx(2 / 4)
    assert result.chair_i == pytest.approx(3 / 7)
    # present: 2 + 1 + 1 + 2 = 6; named present: dog, person, dog, cup = 4
    assert (result.n_present, result.n_present_named) == (6, 4)
    assert result.recall == pytest.approx(4 / 6)


def test_chair_empty_and_mismatch():
    assert chair([], [], VOCAB).chair_i == 0.0
    with pytest.raises(ValueError, match="length mismatch"):
        chair(["a dog"], [], VOCAB)


def test_theme_share():
    responses = ["A mug, cherries and a bus.", "A dog."]
    truths = [set(), {"dog"}]
    kitchen = {"cup", "cherry", "dining table"}
    # hallucinated: cup, cherry, bus -> 2 of 3 in theme
    assert theme_share(responses, truths, [kitchen, kitchen], VOCAB) == pytest.approx(2 / 3)
    assert theme_share(["A dog."], [{"dog"}], [kitchen], VOCAB) is None


def test_mean_word_count():
    assert mean_word_count(["a b c", "d"]) == 2.0
    assert mean_word_count([]) == 0.0


def test_preference_accuracy():
    truth = {"dog"}
    chosen = ["A dog.", "A dog and a bus.", "A dog and a cup.", "A dog."]
    rejected = ["A dog and a cup.", "A dog and a cup.", "A dog.", "A dog."]
    result = preference_accuracy(chosen, rejected, [truth] * 4, VOCAB)
    # pair 4 identical -> skipped; pair 1 better, pair 2 tie, pair 3 worse
    assert (result.n_pairs, result.n_better, result.n_tied, result.n_worse) == (3, 1, 1, 1)
    assert result.accuracy == pytest.approx(1 / 2)  # the tie carries no verdict


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("No, there is not.", False),
        ("Yes.", True),
        ("There is no dog.", False),
        ("Yes, there is a dog in the image.", True),
        ("Yes. There is no cat.", True),  # only the first sentence counts
        ("The dog is not visible", False),
        ("no", False),
        ("NO", True),  # POPE's script only knows "No", "no", "not"
        ("Nothing like that.", True),
        ("", True),
    ],
)
def test_parse_yes_no_follows_pope(answer, expected):
    assert parse_yes_no(answer) is expected


def test_pope_metrics_hand_computed():
    answers = ["Yes.", "Yes", "No.", "There is no cat.", "Yes.", "No"]
    labels = [True, True, True, False, False, False]
    # predictions: T T F F T F -> tp 2, fn 1, tn 2, fp 1
    result = pope_metrics(answers, labels)
    assert (result.tp, result.fp, result.tn, result.fn) == (2, 1, 2, 1)
    assert result.accuracy == pytest.approx(4 / 6)
    assert result.precision == pytest.approx(2 / 3)
    assert result.recall == pytest.approx(2 / 3)
    assert result.f1 == pytest.approx(2 / 3)
    assert result.yes_ratio == pytest.approx(3 / 6)


def test_pope_expected_metrics_hand_computed():
    p_yes = [0.9, 0.5, 0.2, 0.1]
    labels = [True, True, False, False]
    # expected tp 1.4, fn 0.6, fp 0.3, tn 1.7
    result = pope_expected_metrics(p_yes, labels)
    assert (result.tp, result.fn, result.fp, result.tn) == pytest.approx((1.4, 0.6, 0.3, 1.7))
    assert result.accuracy == pytest.approx(3.1 / 4)
    assert result.precision == pytest.approx(1.4 / 1.7)
    assert result.recall == pytest.approx(1.4 / 2.0)
    assert result.f1 == pytest.approx(2.8 / 3.7)  # 2tp / (2tp + fp + fn)
    assert result.yes_ratio == pytest.approx(1.7 / 4)
    assert result.n == 4


def test_pope_expected_metrics_of_certain_answers_equal_greedy_pope():
    labels = [True, True, True, False, False, False]
    answers = ["Yes.", "Yes", "No.", "There is no cat.", "Yes.", "No"]
    certain = [1.0, 1.0, 0.0, 0.0, 1.0, 0.0]
    assert pope_expected_metrics(certain, labels) == pope_metrics(answers, labels)


def test_pope_expected_metrics_reject_non_probabilities():
    with pytest.raises(ValueError, match="question 1"):
        pope_expected_metrics([0.5, 1.5], [True, False])


def test_pope_metrics_all_no_has_zero_precision():
    result = pope_metrics(["No", "No"], [True, False])
    assert (result.precision, result.recall, result.f1, result.accuracy) == (0.0, 0.0, 0.0, 0.5)


ITEMS = [
    PopeItem("a", frozenset({"dog", "person"})),
    PopeItem("b", frozenset({"dog", "person", "bus"})),
    PopeItem("c", frozenset({"cup", "dining table", "person"})),
    PopeItem("d", frozenset({"cup", "dining table"})),
]
ALL = ["dog", "person", "bus", "cup", "dining table", "cherry", "hot dog"]


def test_frequency_and_cooccurrence():
    assert object_frequency(ITEMS)["person"] == 3
    assert cooccurrence(ITEMS)["dog"]["person"] == 2
    assert cooccurrence(ITEMS)["cup"]["dining table"] == 2


def test_pope_popular_negatives_are_most_frequent_absent():
    questions = pope_questions(ITEMS, ALL, "popular", n_per_item=2, seed=0)
    item_a = [q for q in questions if q.item_id == "a"]
    # frequency: person 3, dog 2, cup 2, dining table 2, bus 1; absent from a: cup, dining table, bus, ...
    assert [q.object for q in item_a if not q.label] == ["cup", "dining table"]
    assert sorted(q.object for q in item_a if q.label) == ["dog", "person"]
    assert [q.label for q in item_a] == [True, False, True, False]


def test_pope_adversarial_negatives_cooccur_with_present():
    questions = pope_questions(ITEMS, ALL, "adversarial", n_per_item=1, seed=0)
    # item d has cup, dining table; person co-occurs with both once (item c) -> the adversarial negative
    assert [q.object for q in questions if q.item_id == "d" and not q.label] == ["person"]
    # item a (dog, person): bus co-occurs 2x (dog and person in b), cup/dining table 1x via person
    assert [q.object for q in questions if q.item_id == "a" and not q.label] == ["bus"]


def test_pope_random_is_seeded_balanced_and_correct():
    first = pope_questions(ITEMS, ALL, "random", n_per_item=3, seed=7)
    assert first == pope_questions(ITEMS, ALL, "random", n_per_item=3, seed=7)
    truth = {item.item_id: item.objects for item in ITEMS}
    assert all((q.object in truth[q.item_id]) == q.label for q in first)
    n_yes, n_no = sum(q.label for q in first), sum(not q.label for q in first)
    assert n_yes == n_no == 2 + 3 + 3 + 2  # capped by each item's present objects


def test_pope_question_text_and_validation():
    assert PopeQuestion("a", "apple", True).text() == "Is there an apple in the image?"
    assert PopeQuestion("a", "dog", True).text() == "Is there a dog in the image?"
    with pytest.raises(ValueError, match="split"):
        pope_questions(ITEMS, ALL, "hard", n_per_item=1, seed=0)
    with pytest.raises(ValueError, match="n_per_item"):
        pope_questions(ITEMS, ALL, "random", n_per_item=0, seed=0)
