"""Standard hallucination benchmarks from their own files, the pure part.

COCO's ground truth as the CHAIR tool (Rohrbach et al. 2018) derives it: an image's segmentation labels plus
the objects its reference captions name, both through one synonym table. The seeded image samples of the
500-image CHAIR protocol and of POPE (Li et al. 2023), and the rows of POPE's question files. Reading the files
is `tasks/benchmarks.py`'s; this module takes parsed data and never touches a file.
"""
from __future__ import annotations

import json
import random
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from csr_core.metrics import ObjectVocab, PopeItem, PopeQuestion, cooccurrence, object_frequency, pope_questions

COCO_SYNONYMS = Path(__file__).resolve().parent / "data" / "coco_synonyms.json"  # the shipped COCO table
POPE_LABELS = {"yes": True, "no": False}


@dataclass(frozen=True)
class CocoImage:
    image_id: int
    file_name: str
    split: str  # the annotation split that lists it, e.g. val2014


def coco_truth(segments: Iterable[tuple[int, str]], captions: Mapping[int, Sequence[str]], vocab: ObjectVocab,
               image_ids: Collection[int]) -> dict[int, frozenset[str]]:
    """Ground truth of `image_ids` as the CHAIR tool has it: segmentation objects plus caption mentions.

    `segments` are (image id, canonical object) pairs, one per instance annotation; `captions` maps an image id
    to its reference captions, whose mentions `vocab` finds.
    """
    wanted = set(image_ids)
    truth: dict[int, set[str]] = {i: set() for i in wanted}
    for image_id, obj in segments:
        if image_id in wanted:
            truth[image_id].add(obj)
    for image_id in wanted:
        for caption in captions.get(image_id, ()):
            truth[image_id].update(vocab.mentions(caption))
    return {i: frozenset(objects) for i, objects in truth.items()}


def segment_truth(segments: Iterable[tuple[int, str]]) -> dict[int, frozenset[str]]:
    """Per image id, the objects its segmentation labels name (POPE's ground truth)."""
    truth: dict[int, set[str]] = {}
    for image_id, obj in segments:
        truth.setdefault(image_id, set()).add(obj)
    return {i: frozenset(objects) for i, objects in truth.items()}


def sample_images(image_ids: Collection[int], n: int, seed: int) -> list[int]:
    """`n` of `image_ids` (all when fewer) drawn with `seed`, in ascending id order."""
    population = sorted(set(image_ids))
    return sorted(random.Random(seed).sample(population, min(n, len(population))))


def pope_images(image_ids: Collection[int], truth: Mapping[int, Collection[str]], n: int, min_objects: int,
                seed: int) -> list[int]:
    """POPE's image sample: `n` images with at least `min_objects` ground-truth objects, drawn with `seed`."""
    return sample_images([i for i in image_ids if len(truth.get(i, ())) >= min_objects], n, seed)


def coco_pope_questions(images: Sequence[int], truth: Mapping[int, Collection[str]], objects: Collection[str],
                        split: str, n_per_item: int, seed: int) -> list[PopeQuestion]:
    """POPE's questions over `images` (`n_per_item` present and as many absent objects each), numbered from 1.

    Negatives as POPE samples them (`csr_core.metrics.pope_questions`): frequency and co-occurrence are counted
    over the sampled images.
    """
    items = [PopeItem(str(i), frozenset(truth[i])) for i in images]
    questions = pope_questions(items, objects, split, n_per_item, seed,
                               frequency=object_frequency(items), cooccur=cooccurrence(items))
    return [PopeQuestion(q.item_id, q.object, q.label, q.text(), str(n)) for n, q in enumerate(questions, 1)]


@dataclass(frozen=True)
class PopeRow:
    """One line of a POPE question file: `{"question_id", "image", "text", "label"}`."""

    question_id: str
    image: str
    text: str
    label: bool


def parse_pope_line(line: str) -> PopeRow:
    """A question file's line as a row; ValueError says what is wrong with it."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"not valid JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(row, dict):
        raise ValueError(f"expected an object {{\"question_id\", \"image\", \"text\", \"label\"}}, got "
                         f"{type(row).__name__}")
    missing = [k for k in ("question_id", "image", "text", "label") if k not in row]
    if missing:
        raise ValueError(f"missing {', '.join(repr(k) for k in missing)}")
    qid, image, text, label = row["question_id"], row["image"], row["text"], row["label"]
    if isinstance(qid, bool) or not isinstance(qid, (int, str)) or not str(qid).strip():
        raise ValueError(f"question_id must be a number or a string, got {qid!r}")
    for name, value in (("image", image), ("text", text)):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    if not isinstance(label, str) or label.strip().lower() not in POPE_LABELS:
        raise ValueError(f'label must be "yes" or "no", got {label!r}')
    return PopeRow(str(qid), image, text, POPE_LABELS[label.strip().lower()])


def pope_file_line(question_id: str, image: str, text: str, label: bool) -> str:
    """A POPE question file's line (question ids that are numbers are written as numbers, as POPE's are)."""
    qid: int | str = int(question_id) if question_id.isdigit() else question_id
    return json.dumps({"question_id": qid, "image": image, "text": text, "label": "yes" if label else "no"})
