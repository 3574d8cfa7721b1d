"""Benchmarks from their own files: COCO's annotations and POPE's question files, read, checked and sampled.

The `eval_set` stage reads them once per content (COCO's train2014 annotations alone are 400 MB) and stores the
exact sample in DuckDB: the CHAIR images with their ground truth, the POPE questions in file order. Evaluations
then load that sample by key. Every error names the file and the line or item, and comes before model work.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from csr_core.benchmarks import (
    COCO_SYNONYMS,
    CocoImage,
    PopeRow,
    coco_pope_questions,
    coco_truth,
    parse_pope_line,
    pope_images,
    sample_images,
    segment_truth,
)
from csr_core.config import COCO, WORLD, EvalConfig
from csr_core.evaluation import EvalItem
from csr_core.metrics import ObjectVocab, PopeQuestion
from csr_core.validation import ConfigError
from storage.artifacts import read_eval_items, read_eval_questions, write_eval_set
from storage.store import open_store
from tasks.common import StageSpec, file_sha256, logger, run_whole_stage, stage_task
from tasks.io import load_rgb, load_vocab


def uses_eval_set(cfg: EvalConfig) -> bool:
    """Whether the evaluation reads a stored benchmark sample: COCO, or POPE from question files."""
    return cfg.source == COCO or cfg.pope_from_files


def vocab_file(cfg: EvalConfig) -> str:
    """The object vocabulary a non-world evaluation uses: `eval.vocab`, or COCO's shipped table."""
    return cfg.vocab or (str(COCO_SYNONYMS) if cfg.source == COCO else "")


def coco_files(coco_dir: str, splits: tuple[str, ...]) -> list[Path]:
    """The annotation files COCO evaluation reads: instances and captions of each split."""
    return [Path(coco_dir) / f"{kind}_{split}.json" for split in splits for kind in ("instances", "captions")]


# -- reading -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CocoAnnotations:
    images: dict[int, CocoImage]
    by_file: dict[str, int]  # file name -> image id
    segments: list[tuple[int, str]]  # (image id, canonical object), one per instance annotation
    captions: dict[int, list[str]]
    files: tuple[str, ...]


def read_coco(coco_dir: str, splits: tuple[str, ...], vocab: ObjectVocab) -> CocoAnnotations:
    """COCO instance and caption annotations of `splits`, merged (COCO 2014's image ids are unique across splits).

    Category names map to the vocabulary's objects; a category it does not know is an error, as is an annotation
    of an image or category the file does not list.
    """
    images: dict[int, CocoImage] = {}
    segments: list[tuple[int, str]] = []
    captions: dict[int, list[str]] = {}
    for split in splits:
        path = Path(coco_dir) / f"instances_{split}.json"
        data = _read_annotation_file(path, ("images", "annotations", "categories"))
        split_images = _images(path, data["images"], split)
        images.update(split_images)
        names = {}
        for n, cat in enumerate(data["categories"]):
            cid, name = _fields(path, "categories", n, cat, ("id", "name"))
            obj = vocab.canonical(str(name))
            if obj is None:
                raise ValueError(f"{path}: categories[{n}]: category {name!r} is not in the object vocabulary")
            names[cid] = obj
        for n, ann in enumerate(data["annotations"]):
            image_id, cid = _fields(path, "annotations", n, ann, ("image_id", "category_id"))
            if cid not in names:
                raise ValueError(f"{path}: annotations[{n}]: category_id {cid!r} is not in the file's categories")
            if image_id not in split_images:
                raise ValueError(f"{path}: annotations[{n}]: image_id {image_id!r} is not in the file's images")
            segments.append((image_id, names[cid]))
        del data
        path = Path(coco_dir) / f"captions_{split}.json"
        data = _read_annotation_file(path, ("annotations",))
        for n, ann in enumerate(data["annotations"]):
            image_id, caption = _fields(path, "annotations", n, ann, ("image_id", "caption"))
            if image_id not in split_images:
                raise ValueError(f"{path}: annotations[{n}]: image_id {image_id!r} is not in "
                                 f"instances_{split}.json's images")
            captions.setdefault(image_id, []).append(str(caption))
    files = tuple(str(p) for p in coco_files(coco_dir, splits))
    return CocoAnnotations(images, {im.file_name: i for i, im in images.items()}, segments, captions, files)


def _read_annotation_file(path: Path, keys: tuple[str, ...]) -> dict:
    if not path.is_file():
        raise ValueError(f"{path}: not found (COCO annotations are read from instances_<split>.json and "
                         "captions_<split>.json)")
    try:
        with path.open(encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error.msg} at line {error.lineno}, column {error.colno})") \
            from None
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a COCO annotation object, got {type(data).__name__}")
    for key in keys:
        if not isinstance(data.get(key), list):
            raise ValueError(f"{path}: no {key!r} list (not a COCO annotation file?)")
    return data


def _images(path: Path, rows: list, split: str) -> dict[int, CocoImage]:
    images = {}
    for n, row in enumerate(rows):
        image_id, file_name = _fields(path, "images", n, row, ("id", "file_name"))
        images[image_id] = CocoImage(image_id, str(file_name), split)
    return images


def _fields(path: Path, section: str, n: int, row, names: tuple[str, ...]) -> tuple:
    if not isinstance(row, dict) or any(name not in row for name in names):
        raise ValueError(f"{path}: {section}[{n}]: expected an object with {', '.join(names)}, got {str(row)[:80]}")
    values = tuple(row[name] for name in names)
    for name, value in zip(names, values):
        if name.endswith("id") and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"{path}: {section}[{n}]: {name} must be an integer, got {value!r}")
    return values


def read_pope_file(path: str, field: str = "eval.pope_files") -> list[PopeRow]:
    """A POPE question file (JSONL, `{"question_id", "image", "text", "label"}` a line), checked line by line.

    Errors are `ConfigError(field, "<file>, line N: why")`: a truncated or non-JSON line, a missing key, a label
    other than yes/no, a repeated question id, no question at all.
    """
    file = Path(path)
    if not file.is_file():
        raise ConfigError(field, f"not found: {path or '(empty)'}")
    rows: list[PopeRow] = []
    seen: dict[str, int] = {}
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise ConfigError(field, f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = parse_pope_line(line)
        except ValueError as error:
            raise ConfigError(field, f"{path}, line {number}: {error}") from None
        if row.question_id in seen:
            raise ConfigError(field, f"{path}, line {number}: question_id {row.question_id} repeats line "
                                     f"{seen[row.question_id]}")
        seen[row.question_id] = number
        rows.append(row)
    if not rows:
        raise ConfigError(field, f"{path}: no questions")
    return rows


def check_benchmark_files(cfg: EvalConfig, vocab_path: str = "", eval_images: str = "") -> None:
    """Up-front checks that need no annotation parsing: the vocabulary file reads, COCO's files exist, every POPE
    question file parses (`vocab_path` empty: the world's, built by the run)."""
    if vocab_path:
        try:
            load_vocab(vocab_path)
        except ValueError as error:
            raise ConfigError("eval.vocab", str(error)) from None
    if cfg.source == COCO:
        if not Path(cfg.coco_dir).is_dir():
            raise ConfigError("eval.coco_dir", f"not found: {cfg.coco_dir or '(empty)'} (the folder of COCO's "
                                               "instances_<split>.json and captions_<split>.json)")
        for path in coco_files(cfg.coco_dir, cfg.coco_splits):
            if not path.is_file():
                raise ConfigError("eval.coco_dir", f"missing {path} (split {path.stem.split('_', 1)[1]} of "
                                                   f"eval.coco_splits {list(cfg.coco_splits)})")
        if not Path(cfg.image_dir).is_dir():
            raise ConfigError("eval.image_dir", f"not found: {cfg.image_dir or '(empty)'} (the folder of the "
                                                f"{cfg.coco_sample_split} images)")
    if cfg.pope_from_files:
        for split in cfg.pope_splits:
            read_pope_file(cfg.pope_files[split], f"eval.pope_files.{split}")
        folder = pope_image_dir(cfg, eval_images)
        if not Path(folder).is_dir() and not (cfg.source == WORLD and not cfg.pope_image_dir):
            raise ConfigError("eval.pope_image_dir", f"not found: {folder or '(empty)'}")


def pope_image_dir(cfg: EvalConfig, eval_images: str = "") -> str:
    return cfg.pope_image_dir or cfg.image_dir or eval_images


# -- the eval_set stage ------------------------------------------------------------------------------------------
_SHA: dict[tuple[str, int, int], str] = {}


def _content(path: str | Path) -> str:
    """A file's sha256 (first 16 hex digits), computed once per process for an unchanged file."""
    stat = Path(path).stat()
    key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA:
        _SHA[key] = file_sha256(path)[:16]
    return _SHA[key]


def eval_set_spec(cfg: EvalConfig, vocab_path: str) -> StageSpec:
    """Keyed by the sampling settings and the content of the vocabulary, the annotations and the question files."""
    config: dict = {"coco": cfg.source == COCO, "pope_splits": list(cfg.pope_splits),
                    "pope_per_item": cfg.pope_per_item, "pope_from_files": cfg.pope_from_files}
    data: dict = {"vocab": _content(vocab_path)}
    if cfg.source == COCO:
        config.update(n_items=cfg.n_items, coco_splits=list(cfg.coco_splits), coco_sample_split=cfg.coco_sample_split,
                      image_seed=cfg.image_seed, seed=cfg.seed)
        data["coco"] = [_content(p) for p in coco_files(cfg.coco_dir, cfg.coco_splits)]
    if cfg.pope_from_files:
        data["pope"] = {split: _content(cfg.pope_files[split]) for split in cfg.pope_splits}
    return StageSpec("eval_set", {"eval_set": config, "data": data})


@stage_task(name="eval-set")
def build_eval_set(db: str, cfg: EvalConfig, vocab_path: str) -> str:
    """The benchmark's exact sample in DuckDB: COCO's CHAIR images with their ground truth, POPE's questions."""
    store = open_store(db)
    spec = eval_set_spec(cfg, vocab_path)

    def work(key: str) -> None:
        items, questions = eval_set_rows(cfg, vocab_path)
        write_eval_set(store, key, items, questions)
        logger().info("eval_set %s: %d images described, %d POPE questions", key,
                      int((items.role == "describe").sum()) if not items.empty else 0, len(questions))

    return run_whole_stage(store, spec, work)


def eval_set_rows(cfg: EvalConfig, vocab_path: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The eval set's rows: items (role, position, item_id, image, objects) and POPE questions."""
    vocab = load_vocab(vocab_path)
    items: list[dict] = []
    questions: list[dict] = []
    coco = read_coco(cfg.coco_dir, cfg.coco_splits, vocab) if cfg.source == COCO else None
    if coco is not None:
        candidates = [i for i, im in coco.images.items() if im.split == cfg.coco_sample_split]
        sample = sample_images(candidates, cfg.n_items, cfg.image_seed)
        truth = coco_truth(coco.segments, coco.captions, vocab, sample)
        items += [_item("describe", n, i, coco.images[i].file_name, truth[i]) for n, i in enumerate(sample)]
    pope_on = bool(cfg.pope_per_item and cfg.pope_splits)
    if pope_on and cfg.pope_from_files:
        for split in cfg.pope_splits:
            path = cfg.pope_files[split]
            for n, row in enumerate(read_pope_file(path, f"eval.pope_files.{split}")):
                item_id = row.image
                if coco is not None:
                    if row.image not in coco.by_file:
                        raise ConfigError(f"eval.pope_files.{split}", f"{path}, line {_line_of(path, n)}: image "
                                          f"{row.image!r} is not in the COCO annotations ({', '.join(coco.files)})")
                    item_id = str(coco.by_file[row.image])
                questions.append({"split": split, "position": n, "question_id": row.question_id,
                                  "item_id": item_id, "image": row.image, "question": row.text, "object": None,
                                  "label": row.label})
    elif pope_on and coco is not None:
        seg = segment_truth(coco.segments)
        candidates = [i for i, im in coco.images.items() if im.split == cfg.coco_sample_split]
        chosen = pope_images(candidates, seg, cfg.n_items, cfg.pope_per_item, cfg.image_seed)
        items += [_item("pope", n, i, coco.images[i].file_name, seg[i]) for n, i in enumerate(chosen)]
        for split in cfg.pope_splits:
            for n, q in enumerate(coco_pope_questions(chosen, seg, vocab.objects, split, cfg.pope_per_item, cfg.seed)):
                questions.append({"split": split, "position": n, "question_id": q.question_id, "item_id": q.item_id,
                                  "image": coco.images[int(q.item_id)].file_name, "question": q.question,
                                  "object": q.object, "label": q.label})
    return pd.DataFrame(items), pd.DataFrame(questions)


def _item(role: str, position: int, image_id: int, file_name: str, objects) -> dict:
    return {"role": role, "position": position, "item_id": str(image_id), "image": file_name,
            "objects": sorted(objects)}


def _line_of(path: str, index: int) -> int:
    """The line number of the `index`-th question of a file (blank lines are skipped)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [n for n, line in enumerate(lines, 1) if line.strip()][index]


# -- loading for an evaluation -----------------------------------------------------------------------------------
@dataclass
class EvalData:
    items: list[EvalItem]
    pope: dict[str, list[PopeQuestion]] | None  # None: build POPE from the items
    pope_items: dict[str, EvalItem]
    failed: dict[str, str]  # item id -> why it was left out


def load_eval_set(db: str, key: str, cfg: EvalConfig, image_dir: str, pope_images_dir: str,
                  items: list[EvalItem] | None = None, failed: dict[str, str] | None = None) -> EvalData:
    """An evaluation's items and POPE questions from a stored eval set, with their images.

    `items` (read from an eval JSON) stand when the set has no described images of its own. A question whose
    image cannot be read is left out with its item, as an unreadable eval image is.
    """
    store = open_store(db)
    failed = dict(failed or {})
    if items is None:
        rows = read_eval_items(store, key)
        items = []
        for row in rows.itertuples():
            image = _open(Path(image_dir) / row.image, row.item_id, failed)
            if image is not None:
                items.append(EvalItem(row.item_id, image, frozenset(row.objects), image_name=row.image))
    frame = read_eval_questions(store, key)
    if frame.empty:
        return EvalData(items, None, {}, failed)
    cache: dict[str, EvalItem] = {item.item_id: item for item in items}
    pope_items: dict[str, EvalItem] = {}
    for item_id, image in frame[["item_id", "image"]].drop_duplicates("item_id").itertuples(index=False):
        if item_id in cache and cache[item_id].image_name == image:
            pope_items[item_id] = cache[item_id]
        elif (loaded := _open(Path(pope_images_dir) / image, item_id, failed)) is not None:
            pope_items[item_id] = EvalItem(item_id, loaded, frozenset(), image_name=image)
    pope: dict[str, list[PopeQuestion]] = {split: [] for split in cfg.pope_splits}
    for row in frame.itertuples():
        if row.item_id in pope_items and row.split in pope:
            pope[row.split].append(PopeQuestion(row.item_id, row.object or "", bool(row.label), row.question,
                                                row.question_id))
    return EvalData(items, pope, pope_items, failed)


def _open(path: Path, item_id: str, failed: dict[str, str]):
    try:
        return load_rgb(path)
    except Exception as exc:  # PIL raises many types for corrupt files
        failed[item_id] = f"cannot read image {path}: {type(exc).__name__}: {exc}"
        return None


def eval_set_images(db: str, key: str) -> Mapping[str, list[str]]:
    """The image names an eval set uses: {"describe": [...], "pope": [...]} (POPE: those its questions ask about)."""
    store = open_store(db)
    questions = read_eval_questions(store, key)
    return {"describe": list(read_eval_items(store, key)["image"]),
            "pope": sorted(set(questions["image"])) if not questions.empty else []}
