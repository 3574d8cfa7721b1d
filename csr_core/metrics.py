"""Hallucination metrics: CHAIR (Rohrbach et al. 2018) and POPE (Li et al. 2023), plus per-response measures.

Pure Python: no torch, no I/O. Everything is generic over an `ObjectVocab` (canonical object name -> surface
forms), so the miniature world and COCO are just two vocabularies.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

PopeSplit = Literal["random", "popular", "adversarial"]
POPE_SPLITS: tuple[str, ...] = ("random", "popular", "adversarial")


def plural_forms(word: str) -> tuple[str, ...]:
    """English plural of the last word of a (possibly multi-word) name: dog->dogs, bus->buses, cherry->cherries."""
    head, _, last = word.rpartition(" ")
    prefix = head + " " if head else ""
    if re.search(r"[^aeiou]y$", last):
        plural = last[:-1] + "ies"
    elif re.search(r"(s|x|z|ch|sh)$", last):
        plural = last + "es"
    else:
        plural = last + "s"
    return (prefix + plural,)


@dataclass(frozen=True)
class Mention:
    """One mention of an object in a text: the words as written (lower-cased) and the canonical object."""

    word: str
    object: str


@dataclass(frozen=True)
class ObjectVocab:
    """Canonical object name -> its surface forms (synonyms, plurals; multi-word forms allowed, e.g. "hot dog").

    The canonical name itself always counts as a form. Matching is case-insensitive on word boundaries and
    prefers the longest form, so "hot dog" is one mention of `hot dog`, not of `dog`.
    `ignore` lists phrases that name no object but are matched as a whole, so that their words do not name
    one ("train tracks" are no train). `drop_with` maps a form to forms whose presence in the same text
    cancels it (COCO's CHAIR drops "seat" from a text that names a toilet).
    """

    synonyms: Mapping[str, tuple[str, ...]]
    ignore: tuple[str, ...] = ()
    drop_with: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        owner: dict[str, str] = {}
        for name, forms in self.synonyms.items():
            if not name.strip():
                raise ValueError(f"synonyms: empty canonical name {name!r}")
            for form in (name, *forms):
                key = _normalise(form)
                if not key:
                    raise ValueError(f"synonyms[{name!r}]: empty surface form {form!r}")
                if owner.setdefault(key, name) != name:
                    raise ValueError(f"synonyms: form {form!r} belongs to both {owner[key]!r} and {name!r}")
        for phrase in self.ignore:
            if not _normalise(phrase):
                raise ValueError(f"ignore: empty phrase {phrase!r}")
            if _normalise(phrase) in owner:
                raise ValueError(f"ignore: {phrase!r} is a form of {owner[_normalise(phrase)]!r}")
        known = set(owner) | {_normalise(p) for p in self.ignore}
        for form, triggers in self.drop_with.items():
            if _normalise(form) not in owner:
                raise ValueError(f"drop_with: {form!r} is no object's form")
            unknown = [t for t in triggers if _normalise(t) not in known]
            if unknown:
                raise ValueError(f"drop_with[{form!r}]: {unknown[0]!r} is no form of the vocabulary")

    @classmethod
    def from_names(
        cls,
        names: Collection[str],
        synonyms: Mapping[str, Collection[str]] | None = None,
        plurals: bool = True,
    ) -> ObjectVocab:
        """Vocabulary from canonical names, optional extra synonyms, and (by default) regular plurals of all."""
        synonyms = synonyms or {}
        table: dict[str, tuple[str, ...]] = {}
        for name in names:
            forms = [name, *synonyms.get(name, ())]
            if plurals:
                forms += [p for f in list(forms) for p in plural_forms(f)]
            table[name] = tuple(dict.fromkeys(f for f in forms if f != name))
        return cls(table)

    @property
    def objects(self) -> tuple[str, ...]:
        return tuple(self.synonyms)

    def canonical(self, form: str) -> str | None:
        """The object a surface form names (None for a phrase in `ignore` or a word no form matches)."""
        return self._form_to_object.get(_normalise(form))

    @cached_property
    def _form_to_object(self) -> dict[str, str | None]:
        table: dict[str, str | None] = {_normalise(p): None for p in self.ignore}
        table.update({_normalise(f): name for name, forms in self.synonyms.items() for f in (name, *forms)})
        return table

    @cached_property
    def _drops(self) -> dict[str, frozenset[str]]:
        return {_normalise(f): frozenset(_normalise(t) for t in ts) for f, ts in self.drop_with.items()}

    @cached_property
    def _pattern(self) -> re.Pattern[str]:
        forms = sorted(self._form_to_object, key=lambda f: (-len(f), f))
        alternation = "|".join(re.escape(f).replace(r"\ ", r"\s+") for f in forms)
        return re.compile(rf"(?<![\w-])(?:{alternation})(?![\w-])", re.IGNORECASE)

    def mention_list(self, text: str) -> list[Mention]:
        """Every object mention in `text`, in order, repeats included (as the CHAIR tool counts them)."""
        found = [_normalise(m.group(0)) for m in self._pattern.finditer(text)]
        present = set(found)
        return [Mention(word, obj) for word in found
                if (obj := self._form_to_object[word]) is not None and not self._drops.get(word, set()) & present]

    def mentions(self, text: str) -> list[str]:
        """Canonical objects named in `text`, in order of first mention, deduplicated."""
        return list(dict.fromkeys(m.object for m in self.mention_list(text)))


def _normalise(form: str) -> str:
    return " ".join(form.lower().split())


# ---------------------------------------------------------------- CHAIR


@dataclass(frozen=True)
class ChairResult:
    """CHAIR over a set of responses.

    chair_s: share of responses naming at least one absent object.
    chair_i: hallucinated mentions / all mentions (each object counted once per response).
    recall:  named present objects / all present objects (summed over responses).
    """

    chair_s: float
    chair_i: float
    recall: float
    n_responses: int
    n_mentions: int
    n_hallucinated: int
    n_present: int
    n_present_named: int


def hallucinated_objects(response: str, truth: Collection[str], vocab: ObjectVocab) -> list[str]:
    """Objects the response names that are not in the image's ground truth, in order of mention."""
    present = set(truth)
    return [obj for obj in vocab.mentions(response) if obj not in present]


@dataclass(frozen=True)
class ResponseChair:
    """CHAIR of one response, as the CHAIR tool reports it per caption.

    mentioned: the objects it names, in order; hallucinated: those not in the image; words: the words that
    named the hallucinated ones. With `every_mention` repeats are kept (each mention counts), else each object
    appears once. chair_s is 1.0 when anything is hallucinated; chair_i = hallucinated / mentioned (0.0 for
    none); recall = named present objects / present objects (0.0 for an image without objects).
    """

    mentioned: tuple[str, ...]
    hallucinated: tuple[str, ...]
    words: tuple[str, ...]
    n_present: int
    n_present_named: int

    @property
    def chair_s(self) -> float:
        return float(bool(self.hallucinated))

    @property
    def chair_i(self) -> float:
        return _ratio(len(self.hallucinated), len(self.mentioned))

    @property
    def recall(self) -> float:
        return _ratio(self.n_present_named, self.n_present)


def response_chair(response: str, truth: Collection[str], vocab: ObjectVocab, every_mention: bool = False
                   ) -> ResponseChair:
    present = set(truth)
    found = vocab.mention_list(response)
    if not every_mention:
        first: dict[str, Mention] = {}
        for mention in found:
            first.setdefault(mention.object, mention)
        found = list(first.values())
    bad = [m for m in found if m.object not in present]
    return ResponseChair(tuple(m.object for m in found), tuple(m.object for m in bad), tuple(m.word for m in bad),
                         len(present), len(present.intersection(m.object for m in found)))


def chair(responses: Sequence[str], truths: Sequence[Collection[str]], vocab: ObjectVocab,
          every_mention: bool = False) -> ChairResult:
    """CHAIR_S and CHAIR_I (Rohrbach et al. 2018) and object recall.

    By default an object repeated within one response counts once (mentions are deduplicated); with
    `every_mention` each mention counts, as Rohrbach's script counts them for CHAIR_I. The two agree whenever
    responses do not repeat objects. Ratios with an empty denominator are 0.0.
    """
    _check_same_length(responses=responses, truths=truths)
    return chair_of([response_chair(r, t, vocab, every_mention) for r, t in zip(responses, truths)])


def chair_of(per_response: Sequence[ResponseChair]) -> ChairResult:
    """CHAIR over responses from their per-response counts."""
    n_mentions = sum(len(r.mentioned) for r in per_response)
    n_hallucinated = sum(len(r.hallucinated) for r in per_response)
    n_present = sum(r.n_present for r in per_response)
    n_present_named = sum(r.n_present_named for r in per_response)
    return ChairResult(
        chair_s=_ratio(sum(bool(r.hallucinated) for r in per_response), len(per_response)),
        chair_i=_ratio(n_hallucinated, n_mentions),
        recall=_ratio(n_present_named, n_present),
        n_responses=len(per_response),
        n_mentions=n_mentions,
        n_hallucinated=n_hallucinated,
        n_present=n_present,
        n_present_named=n_present_named,
    )


def theme_share(
    responses: Sequence[str],
    truths: Sequence[Collection[str]],
    theme_objects: Sequence[Collection[str]],
    vocab: ObjectVocab,
) -> float | None:
    """Share of hallucinated objects that belong to their scene's theme (e.g. a fork hallucinated in a kitchen).

    `theme_objects[i]` is the set of objects typical of item i's theme. None when nothing was hallucinated.
    """
    _check_same_length(responses=responses, truths=truths, theme_objects=theme_objects)
    n_bad = n_in_theme = 0
    for response, truth, theme in zip(responses, truths, theme_objects):
        bad = hallucinated_objects(response, truth, vocab)
        n_bad += len(bad)
        n_in_theme += sum(obj in theme for obj in bad)
    return n_in_theme / n_bad if n_bad else None


def mean_word_count(responses: Sequence[str]) -> float:
    """Mean response length in whitespace-separated words (0.0 for no responses)."""
    return _ratio(sum(len(r.split()) for r in responses), len(responses))


def mean(values: Sequence[float]) -> float:
    """Plain mean, 0.0 when empty (e.g. mean CLIP image relevance of responses, computed by the caller)."""
    return _ratio(sum(values), len(values))


# ---------------------------------------------------------------- preference accuracy


@dataclass(frozen=True)
class PreferenceAccuracy:
    """How often the selected `chosen` response hallucinates less than its `rejected` one.

    accuracy = n_better / (n_better + n_worse): among the pairs whose responses name different numbers of
    absent objects, the share where the chosen one names fewer. Ties (the same number) carry no verdict on
    the reward; n_tied reports them, and n_pairs counts every pair whose texts differ.
    """

    accuracy: float
    n_pairs: int
    n_better: int
    n_tied: int
    n_worse: int


def preference_accuracy(
    chosen_texts: Sequence[str],
    rejected_texts: Sequence[str],
    truths: Sequence[Collection[str]],
    vocab: ObjectVocab,
) -> PreferenceAccuracy:
    _check_same_length(chosen_texts=chosen_texts, rejected_texts=rejected_texts, truths=truths)
    better = tied = worse = 0
    for chosen, rejected, truth in zip(chosen_texts, rejected_texts, truths):
        if chosen == rejected:
            continue
        n_chosen_bad = len(hallucinated_objects(chosen, truth, vocab))
        diff = len(hallucinated_objects(rejected, truth, vocab)) - n_chosen_bad
        better += diff > 0
        tied += diff == 0
        worse += diff < 0
    return PreferenceAccuracy(_ratio(better, better + worse), better + tied + worse, better, tied, worse)


# ---------------------------------------------------------------- POPE


def parse_yes_no(answer: str) -> bool:
    """POPE's answer parsing (RUCAIBox/POPE evaluate.py): True for "yes".

    Keep the text before the first '.', drop commas, split on single spaces; the answer is "no" if one of
    the words is exactly "No", "no" or "not", otherwise "yes". Faithfully quirky: "NO" or "No!" parse as yes.
    """
    first_sentence = answer.split(".")[0]
    words = first_sentence.replace(",", "").split(" ")
    return not any(w in ("No", "no", "not") for w in words)


@dataclass(frozen=True)
class PopeResult:
    """POPE metrics with "yes" as the positive class. precision/recall/f1 are 0.0 when undefined.

    The counts are whole numbers from `pope_metrics` and expected counts from `pope_expected_metrics`.
    """

    accuracy: float
    precision: float
    recall: float
    f1: float
    yes_ratio: float
    n: int
    tp: float
    fp: float
    tn: float
    fn: float


def pope_metrics(answers: Sequence[str], labels: Sequence[bool]) -> PopeResult:
    """Accuracy, precision, recall, F1 and yes-ratio of free-text answers against yes(True)/no(False) labels."""
    _check_same_length(answers=answers, labels=labels)
    predictions = [parse_yes_no(a) for a in answers]
    tp = sum(p and y for p, y in zip(predictions, labels))
    fp = sum(p and not y for p, y in zip(predictions, labels))
    tn = sum(not p and not y for p, y in zip(predictions, labels))
    fn = sum(not p and y for p, y in zip(predictions, labels))
    return _pope_result(tp, fp, tn, fn, len(labels))


def pope_expected_metrics(p_yes: Sequence[float], labels: Sequence[bool]) -> PopeResult:
    """POPE metrics over the model's answer distribution instead of its greedy answers.

    Each question counts as "yes" with probability p_yes (so tp is the sum of p_yes over present objects,
    and so on); precision, recall and F1 are ratios of those expected counts. Greedy POPE turns a question
    whose yes/no odds are near even into a whole answer either way, so two nearly identical models can differ
    by a few answers; these metrics move only as much as the odds do.
    """
    _check_same_length(p_yes=p_yes, labels=labels)
    bad = [i for i, p in enumerate(p_yes) if not 0.0 <= p <= 1.0]
    if bad:
        raise ValueError(f"p_yes must be probabilities in [0, 1]; question {bad[0]} has {p_yes[bad[0]]!r}")
    tp = sum(p for p, y in zip(p_yes, labels) if y)
    fp = sum(p for p, y in zip(p_yes, labels) if not y)
    fn = sum(1.0 - p for p, y in zip(p_yes, labels) if y)
    tn = sum(1.0 - p for p, y in zip(p_yes, labels) if not y)
    return _pope_result(tp, fp, tn, fn, len(labels))


def _pope_result(tp: float, fp: float, tn: float, fn: float, n: int) -> PopeResult:
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return PopeResult(
        accuracy=_ratio(tp + tn, n),
        precision=precision,
        recall=recall,
        f1=_ratio(2 * precision * recall, precision + recall),
        yes_ratio=_ratio(tp + fp, n),
        n=n,
        tp=tp,
        fp=fp,
        tn=tn,
        fn=fn,
    )


@dataclass(frozen=True)
class PopeItem:
    item_id: str
    objects: frozenset[str]


@dataclass(frozen=True)
class PopeQuestion:
    """A POPE question: built from an item's objects (`object` set), or read from a question file
    (`question` and `question_id` as the file has them; `object` may be empty)."""

    item_id: str
    object: str
    label: bool  # True: the object is in the image
    question: str = ""
    question_id: str = ""

    def text(self, template: str = "Is there {article} {object} in the image?") -> str:
        if self.question:
            return self.question
        article = "an" if self.object[:1].lower() in "aeiou" else "a"
        return template.format(article=article, object=self.object)


def object_frequency(items: Sequence[PopeItem]) -> Counter[str]:
    """In how many items each object is present."""
    return Counter(obj for item in items for obj in item.objects)


def cooccurrence(items: Sequence[PopeItem]) -> dict[str, Counter[str]]:
    """cooccurrence[a][b]: in how many items a and b are both present (a != b)."""
    table: dict[str, Counter[str]] = {}
    for item in items:
        for a in item.objects:
            table.setdefault(a, Counter()).update(b for b in item.objects if b != a)
    return table


def pope_questions(
    items: Sequence[PopeItem],
    all_objects: Collection[str],
    split: PopeSplit,
    n_per_item: int,
    seed: int,
    *,
    frequency: Mapping[str, int] | None = None,
    cooccur: Mapping[str, Mapping[str, int]] | None = None,
) -> list[PopeQuestion]:
    """POPE's polling questions: per item, up to `n_per_item` present objects (label yes) and as many absent ones.

    Negatives as in Li et al. 2023: "random" samples uniformly among absent objects; "popular" takes the absent
    objects most frequent over `items`; "adversarial" takes the absent objects that co-occur most with the
    item's present ones. Frequency and co-occurrence are counted over `items` unless given. Ties break by name.
    Items without present objects are skipped. Questions alternate yes/no within an item.
    """
    if split not in POPE_SPLITS:
        raise ValueError(f"split: expected one of {POPE_SPLITS}, got {split!r}")
    if n_per_item < 1:
        raise ValueError(f"n_per_item: must be >= 1, got {n_per_item}")
    rng = random.Random(seed)
    frequency = object_frequency(items) if frequency is None else frequency
    cooccur = cooccurrence(items) if cooccur is None else cooccur
    universe = sorted(set(all_objects))
    questions: list[PopeQuestion] = []
    for item in items:
        present = sorted(item.objects)
        absent = [obj for obj in universe if obj not in item.objects]
        k = min(n_per_item, len(present), len(absent))
        if k == 0:
            continue
        positives = rng.sample(present, k)
        negatives = _pope_negatives(split, present, absent, k, rng, frequency, cooccur)
        for pos, neg in zip(positives, negatives):
            questions += [PopeQuestion(item.item_id, pos, True), PopeQuestion(item.item_id, neg, False)]
    return questions


def _pope_negatives(
    split: str,
    present: list[str],
    absent: list[str],
    k: int,
    rng: random.Random,
    frequency: Mapping[str, int],
    cooccur: Mapping[str, Mapping[str, int]],
) -> list[str]:
    if split == "random":
        return rng.sample(absent, k)
    if split == "popular":
        return sorted(absent, key=lambda obj: (-frequency.get(obj, 0), obj))[:k]

    def together(obj: str) -> int:
        return sum(cooccur.get(p, {}).get(obj, 0) for p in present)

    return sorted(absent, key=lambda obj: (-together(obj), obj))[:k]


# ---------------------------------------------------------------- helpers


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def _check_same_length(**sequences: Sequence) -> None:
    lengths = {name: len(seq) for name, seq in sequences.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"length mismatch: {lengths}")
