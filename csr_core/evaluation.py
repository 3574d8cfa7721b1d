"""Evaluation of one model on held-out items: CHAIR (greedy and sampled), POPE, relevance, length.

Model access goes through callables, so this module stays testable without models:
`generate(images, prompts, *, do_sample, num_return_sequences, seed) -> list[list[str]]`,
`relevance(images, texts, image_index) -> list[float]` (raw cosines) and, for POPE's expected metrics,
`yes_probability(images, prompts) -> list[float]` (the model's odds of "Yes" against "No").
POPE's questions are built from the items' objects unless given (e.g. read from POPE's question files), with
the images they ask about.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from PIL import Image

from csr_core.config import EvalConfig
from csr_core.metrics import (
    ObjectVocab,
    PopeItem,
    PopeQuestion,
    chair_of,
    cooccurrence,
    mean,
    mean_word_count,
    object_frequency,
    pope_expected_metrics,
    pope_metrics,
    pope_questions,
    response_chair,
    theme_share,
)
from csr_core.reward import relevance_reward


@dataclass(frozen=True)
class EvalItem:
    item_id: str
    image: Image.Image
    objects: frozenset[str]  # ground truth, canonical names
    theme_objects: frozenset[str] = frozenset()  # objects typical of the item's theme (may be empty)
    image_name: str = ""  # the image's file name, as the eval file or the annotations give it


@dataclass(frozen=True)
class MetricRow:
    split: str  # greedy | sampled | random | popular | adversarial
    metric: str
    value: float | None
    n: int


@dataclass(frozen=True)
class ResponseRow:
    item_id: str
    task: str
    sample: int
    question: str | None
    label: bool | None
    response: str
    p_yes: float | None = None  # POPE: the model's odds of "Yes" against "No", when computed
    position: int | None = None  # descriptions: the item's index; POPE: the question's index in its split
    question_id: str | None = None  # POPE
    image: str | None = None  # the image's file name
    mentioned: list[str] | None = None  # descriptions: objects named (repeats per eval.chair_mentions)
    hallucinated: list[str] | None = None  # ... of them not in the image
    hallucinated_words: list[str] | None = None  # ... the words that named those
    recall: float | None = None  # ... share of the image's objects named


@dataclass(frozen=True)
class EvalOutput:
    metrics: list[MetricRow]
    responses: list[ResponseRow]


Generate = Callable[..., list[list[str]]]
Relevance = Callable[[Sequence[Image.Image], Sequence[str], Sequence[int]], list[float]]
YesProbability = Callable[[Sequence[Image.Image], Sequence[str]], list[float]]
POPE_METRICS = ("accuracy", "precision", "recall", "f1", "yes_ratio")


def evaluate_model(generate: Generate, relevance: Relevance | None, items: Sequence[EvalItem],
                   vocab: ObjectVocab, cfg: EvalConfig, yes_probability: YesProbability | None = None,
                   pope: Mapping[str, Sequence[PopeQuestion]] | None = None,
                   pope_items: Mapping[str, EvalItem] | None = None) -> EvalOutput:
    """CHAIR of greedy (and sampled) descriptions of `items`, and POPE on each of `cfg.pope_splits`.

    `pope` gives each split's questions (in order) and `pope_items` the item (image) of each question's item id;
    without them the questions are built from the items' objects.
    """
    metrics: list[MetricRow] = []
    responses: list[ResponseRow] = []
    images = [item.image for item in items]
    every = cfg.chair_mentions == "every"
    modes = [("greedy", False, 1)] + ([("sampled", True, cfg.n_samples)] if cfg.n_samples else [])
    for split, do_sample, n in modes:
        texts = generate(images, [cfg.instruction] * len(items), do_sample=do_sample, num_return_sequences=n,
                         seed=cfg.seed)
        flat = [(i, s, text) for i, per_item in enumerate(texts) for s, text in enumerate(per_item)]
        found = [response_chair(t, items[i].objects, vocab, every) for i, _, t in flat]
        responses += [ResponseRow(items[i].item_id, f"describe_{split}", s, None, None, t, position=i,
                                  image=items[i].image_name or None, mentioned=list(c.mentioned),
                                  hallucinated=list(c.hallucinated), hallucinated_words=list(c.words),
                                  recall=c.recall) for (i, s, t), c in zip(flat, found)]
        metrics += description_metrics(split, [t for _, _, t in flat], [items[i] for i, _, _ in flat], vocab,
                                       relevance, images, [i for i, _, _ in flat], every)
    odds = yes_probability if cfg.pope_expected else None
    for split in cfg.pope_splits if cfg.pope_per_item else ():
        if pope is None:
            questions, by_id = item_questions(items, vocab, split, cfg), {item.item_id: item for item in items}
        else:
            questions, by_id = list(pope.get(split, ())), dict(pope_items or {})
        split_metrics, rows = _pope(generate, odds, questions, by_id, split, cfg)
        metrics += split_metrics
        responses += rows
    return EvalOutput(metrics, responses)


def description_metrics(split: str, texts: list[str], items: list[EvalItem], vocab: ObjectVocab,
                        relevance: Relevance | None, images: Sequence[Image.Image],
                        image_index: list[int], every_mention: bool = False) -> list[MetricRow]:
    truths = [item.objects for item in items]
    result = chair_of([response_chair(t, truth, vocab, every_mention) for t, truth in zip(texts, truths)])
    share = theme_share(texts, truths, [item.theme_objects for item in items], vocab)
    n = len(texts)
    rows = [MetricRow(split, "chair_s", result.chair_s, n), MetricRow(split, "chair_i", result.chair_i,
                                                                      result.n_mentions),
            MetricRow(split, "recall", result.recall, result.n_present),
            MetricRow(split, "theme_share", share, result.n_hallucinated),
            MetricRow(split, "mean_words", mean_word_count(texts), n)]
    if relevance is not None:
        rows.append(MetricRow(split, "relevance", mean(response_relevance(relevance, images, texts, image_index)), n))
    return rows


def response_relevance(relevance: Relevance, images: Sequence[Image.Image], texts: Sequence[str],
                       image_index: Sequence[int]) -> list[float]:
    """Per response, the mean image-relevance reward max(100 cos, 0) of its sentences (0 for an empty one)."""
    sentences = [split_sentences(text) for text in texts]
    flat = [s for per in sentences for s in per]
    owner = [image_index[i] for i, per in enumerate(sentences) for _ in per]
    cosines = iter(relevance(images, flat, owner) if flat else [])
    return [mean([relevance_reward(next(cosines)) for _ in per]) for per in sentences]


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in re.findall(r"[^.!?]+[.!?]?", text) if s.strip()]


def item_questions(items: Sequence[EvalItem], vocab: ObjectVocab, split: str, cfg: EvalConfig) -> list[PopeQuestion]:
    """POPE's questions of one split built from the items' objects (frequency and co-occurrence over them)."""
    pope_items = [PopeItem(item.item_id, item.objects) for item in items]
    return pope_questions(pope_items, vocab.objects, split, cfg.pope_per_item, cfg.seed,
                          frequency=object_frequency(pope_items), cooccur=cooccurrence(pope_items))


def _pope(generate: Generate, yes_probability: YesProbability | None, questions: Sequence[PopeQuestion],
          by_id: Mapping[str, EvalItem], split: str, cfg: EvalConfig) -> tuple[list[MetricRow], list[ResponseRow]]:
    """One POPE split: greedy answers and their metrics, plus the expected metrics when odds are given."""
    prompts = [q.text() for q in questions]
    images = [by_id[q.item_id].image for q in questions]
    labels = [q.label for q in questions]
    answers = [a[0] for a in generate(images, prompts, do_sample=False, num_return_sequences=1, seed=cfg.seed)]
    results = {"": pope_metrics(answers, labels)}
    p_yes: list[float | None] = [None] * len(questions)
    if yes_probability is not None:
        p_yes = yes_probability(images, prompts)
        results["expected_"] = pope_expected_metrics(p_yes, labels)
    metrics = [MetricRow(split, prefix + name, getattr(result, name), result.n)
               for prefix, result in results.items() for name in POPE_METRICS]
    rows = [ResponseRow(q.item_id, f"pope_{split}", 0, prompt, q.label, answer, p, position=n,
                        question_id=q.question_id or str(n + 1), image=by_id[q.item_id].image_name or None)
            for n, (q, prompt, answer, p) in enumerate(zip(questions, prompts, answers, p_yes))]
    return metrics, rows
