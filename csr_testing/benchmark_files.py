"""Hand-made benchmark files in the official formats, for tests: COCO annotations and POPE question files.

`world_as_coco` writes the miniature world's eval set as COCO would ship it (instances + captions of a split)
and its POPE questions as POPE's JSONL question files, so that the readers can be checked against the world's
native evaluation path.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from csr_core.benchmarks import pope_file_line
from csr_core.metrics import PopeQuestion


def write_coco(coco_dir: str | Path, split: str, images: Sequence[tuple[int, str]], categories: Mapping[int, str],
               instances: Iterable[tuple[int, int]], captions: Iterable[tuple[int, str]]) -> None:
    """`instances_<split>.json` and `captions_<split>.json`: images (id, file name), categories {id: name},
    instance annotations (image id, category id) and captions (image id, text)."""
    root = Path(coco_dir)
    root.mkdir(parents=True, exist_ok=True)
    image_rows = [{"id": i, "file_name": name, "width": 64, "height": 64} for i, name in images]
    info = {"description": "hand-made COCO-format annotations (csr tests)", "year": 2014}
    instance_rows = [{"id": n + 1, "image_id": i, "category_id": c, "iscrowd": 0, "area": 1.0,
                      "bbox": [0, 0, 1, 1], "segmentation": [[0, 0, 1, 0, 1, 1]]}
                     for n, (i, c) in enumerate(instances)]
    (root / f"instances_{split}.json").write_text(json.dumps({
        "info": info, "licenses": [], "images": image_rows, "annotations": instance_rows,
        "categories": [{"id": c, "name": name, "supercategory": "thing"} for c, name in categories.items()]}))
    caption_rows = [{"id": n + 1, "image_id": i, "caption": text} for n, (i, text) in enumerate(captions)]
    (root / f"captions_{split}.json").write_text(json.dumps({
        "info": info, "licenses": [], "images": image_rows, "annotations": caption_rows}))


def write_pope_file(path: str | Path, rows: Iterable[tuple[str, str, str, bool]]) -> Path:
    """A POPE question file from (question id, image file name, question, label) rows."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(pope_file_line(*row) + "\n" for row in rows))
    return path


def world_as_coco(eval_rows: Sequence[dict], objects: Sequence[str], coco_dir: str | Path,
                  split: str = "val2014") -> dict[str, int]:
    """The world's eval items as COCO annotations of `split`; returns {world item id: COCO image id}.

    Image ids follow the rows' order (1, 2, ...), so a COCO sample of all of them keeps the world's order. Each
    image's first object is a segmentation label and the others are named only by its reference captions, so its
    ground truth needs both, as COCO's CHAIR ground truth does.
    """
    categories = {n + 1: name for n, name in enumerate(objects)}
    category_id = {name: c for c, name in categories.items()}
    ids = {str(row["id"]): n + 1 for n, row in enumerate(eval_rows)}
    instances, captions = [], []
    for row in eval_rows:
        image_id, names = ids[str(row["id"])], list(row["objects"])
        instances += [(image_id, category_id[names[0]])] if names else []
        captions += [(image_id, f"A picture with a {name}.") for name in names[1:]]
        captions.append((image_id, "A small picture."))
    write_coco(coco_dir, split, [(ids[str(r["id"])], r["image"]) for r in eval_rows], categories, instances,
               captions)
    return ids


def pope_rows(questions: Sequence[PopeQuestion], image_of: Mapping[str, str]) -> list[tuple[str, str, str, bool]]:
    """Question-file rows of built POPE questions, numbered from 1 in order."""
    return [(str(n), image_of[q.item_id], q.text(), q.label) for n, q in enumerate(questions, 1)]
