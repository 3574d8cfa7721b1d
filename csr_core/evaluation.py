"""Evaluation of one model on held-out items: CHAIR (greedy and sampled), POPE, relevance, length.

Model access goes through callables, so this module stays testable without models:
`generate(images, prompts, *, do_sample, num_return_sequences, seed) -> list[list[str]]`,
`relevance(images, texts, image_index) -> list[float]` (raw cosines) and, for POPE's expected metrics,
`yes_probability(images, prompts) -> list[float]` (the model's odds of "Yes" against "No").
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PIL import Image

from csr_core.config import EvalConfig
from csr_core.metrics import (
    ObjectVocab,
    PopeItem,
    chair,
    cooccurrence,
    mean,
    mean_word_count,
    object_frequency,
    pope_expected_metrics,
    pope_metrics,
    pope_questions,
    theme_share,
)
from csr_core.reward import relevance_reward


@dataclass(frozen=True)
class EvalItem:
    item_id: str
    image: Image.Image
    objects: frozenset[str]  # ground truth, canonical names
    theme_objects: frozenset[str] = frozenset()  # objects typical of the item's theme (may be empty)


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


@dataclass(frozen=True)
class EvalOutput:
    metrics: list[MetricRow]
    responses: list[ResponseRow]


Generate = Callable[..., list[list[str]]]
Relevance = Callable[[Sequence[Image.Image], Sequence[str], Sequence[int]], list[float]]
YesProbability = Callable[[Sequence[Image.Image], Sequence[str]], list[float]]
POPE_METRICS = ("accuracy", "precision", "recall", "f1", "yes_ratio")


def evaluate_model(generate: Generate, relevance: Relevance | None, items: Sequence[EvalItem],
                   vocab: ObjectVocab, cfg: EvalConfig, yes_probability: YesProbability | None = None) -> EvalOutput:
    metrics: list[MetricRow] = []
    responses: list[ResponseRow] = []
    images = [item.image for item in items]
    modes = [("greedy", False, 1)] + ([("sampled", True, cfg.n_samples)] if cfg.n_samples else [])
    for split, do_sample, n in modes:
        texts = generate(images, [cfg.instruction] * len(items), do_sample=do_sample, num_return_sequences=n,
                         seed=cfg.seed)
        flat = [(i, s, text) for i, per_item in enumerate(texts) for s, text in enumerate(per_item)]
        responses += [ResponseRow(items[i].item_id, f"describe_{split}", s, None, None, t) for i, s, t in flat]
        metrics += description_metrics(split, [t for _, _, t in flat], [items[i] for i, _, _ in flat], vocab,
                                       relevance, images, [i for i, _, _ in flat])
    odds = yes_probability if cfg.pope_expected else None
    for split in cfg.pope_splits if cfg.pope_per_item else ():
        split_metrics, rows = _pope(generate, odds, items, vocab, split, cfg)
        metrics += split_metrics
        responses += rows
    return EvalOutput(metrics, responses)


def description_metrics(split: str, texts: list[str], items: list[EvalItem], vocab: ObjectVocab,
                        relevance: Relevance | None, images: Sequence[Image.Image],
                        image_index: list[int]) -> list[MetricRow]:
    truths = [item.objects for item in items]
    result = chair(texts, truths, vocab)
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


def _pope(generate: Generate, yes_probability: YesProbability | None, items: Sequence[EvalItem],
          vocab: ObjectVocab, split: str, cfg: EvalConfig) -> tuple[list[MetricRow], list[ResponseRow]]:
    """One POPE split: greedy answers and their metrics, plus the expected metrics when odds are given."""
    pope_items = [PopeItem(item.item_id, item.objects) for item in items]
    questions = pope_questions(pope_items, vocab.objects, split, cfg.pope_per_item, cfg.seed,
                               frequency=object_frequency(pope_items), cooccur=cooccurrence(pope_items))
    by_id = {item.item_id: item for item in items}
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
    rows = [ResponseRow(q.item_id, f"pope_{split}", 0, prompt, q.label, answer, p)
            for q, prompt, answer, p in zip(questions, prompts, answers, p_yes)]
    return metrics, rows
