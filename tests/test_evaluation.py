"""evaluate_model with hand-written model callables: which metrics it reports and what they are."""
import re

import pytest
from PIL import Image

from csr_core.config import EvalConfig
from csr_core.evaluation import EvalItem, evaluate_model
from csr_core.metrics import ObjectVocab, pope_expected_metrics, pope_metrics

VOCAB = ObjectVocab.from_names(["dog", "cat", "cup", "car", "tree", "bus"])
ITEMS = [EvalItem(f"img{i}", Image.new("RGB", (8, 8), (i, 0, 0)), frozenset(objects))
         for i, objects in enumerate([{"dog", "cat"}, {"cup"}, {"car", "tree"}])]


def _asked(prompt: str) -> str:
    return re.search(r"Is there an? (\w+)", prompt).group(1)


def _item_of(image) -> EvalItem:
    return next(item for item in ITEMS if item.image is image)


def generate(images, prompts, *, do_sample, num_return_sequences, seed):
    if prompts[0].startswith("Is there"):  # POPE: say yes to dogs, whatever the image
        return [["Yes." if _asked(p) == "dog" else "No."] for p in prompts]
    return [["There is a dog."] * num_return_sequences for _ in prompts]


def yes_probability(images, prompts):
    """0.8 for an object in the image, 0.3 otherwise."""
    return [0.8 if _asked(p) in _item_of(image).objects else 0.3 for image, p in zip(images, prompts)]


def _metrics(out):
    return {(m.split, m.metric): m.value for m in out.metrics}


def test_pope_reports_greedy_and_expected_metrics_per_split():
    cfg = EvalConfig(n_samples=1, pope_per_item=1)
    out = evaluate_model(generate, None, ITEMS, VOCAB, cfg, yes_probability)
    metrics = _metrics(out)
    for split in cfg.pope_splits:
        rows = [r for r in out.responses if r.task == f"pope_{split}"]
        labels = [r.label for r in rows]
        assert len(rows) == 6  # one present and one absent object per item
        greedy = pope_metrics([r.response for r in rows], labels)
        expected = pope_expected_metrics([0.8 if label else 0.3 for label in labels], labels)
        assert metrics[(split, "f1")] == pytest.approx(greedy.f1)
        assert metrics[(split, "expected_f1")] == pytest.approx(expected.f1)
        assert metrics[(split, "expected_f1")] == pytest.approx(2 * 2.4 / (2 * 2.4 + 0.9 + 0.6))
        assert metrics[(split, "expected_yes_ratio")] == pytest.approx((2.4 + 0.9) / 6)
        assert [r.p_yes for r in rows] == [0.8 if label else 0.3 for label in labels]
    assert all(r.p_yes is None for r in out.responses if r.task.startswith("describe"))


def test_expected_pope_is_skipped_when_off_or_without_odds():
    for cfg, odds in ((EvalConfig(n_samples=0, pope_expected=False), yes_probability), (EvalConfig(n_samples=0), None)):
        out = evaluate_model(generate, None, ITEMS, VOCAB, cfg, odds)
        metrics = _metrics(out)
        assert ("adversarial", "f1") in metrics
        assert not any(name.startswith("expected_") for _, name in metrics)
        assert all(r.p_yes is None for r in out.responses)
