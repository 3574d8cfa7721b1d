"""Stored artifacts out of DuckDB in other tools' formats: preference pairs as a dataset other tools train on,
and evaluation answers as the files the POPE and CHAIR reference scripts read."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from csr_core.benchmarks import pope_file_line
from storage.artifacts import located_path, read_pairs
from storage.reports import eval_answers, eval_tasks, evaluations, newest_pairs_key
from storage.store import Store
from tasks.io import dpo_examples

ANSWER_FORMATS = ("pope-answers", "chair-captions")
FORMATS = ("trl", *ANSWER_FORMATS)


@dataclass(frozen=True)
class Exported:
    path: Path
    pairs_key: str
    n_pairs: int


def export_pairs(db: str, out_path: str | Path, pairs_key: str | None = None, fmt: str = "trl") -> Exported:
    """Write the pairs of `pairs_key` (default: the newest pairs stage) as a TRL preference dataset (Parquet)."""
    from training.export import export_trl

    if fmt != "trl":
        raise ValueError(f"pairs export format must be trl, got {fmt!r}")
    store = Store(db, read_only=True)
    try:
        key = pairs_key or newest_pairs_key(store)
        if key is None:
            raise LookupError(f"no preference pairs stored in {db} (run `csr run` first)")
        rows = read_pairs(store, key)
    finally:
        store.close()
    if rows.empty:
        raise LookupError(f"no preference pairs under {key} in {db}")
    pairs = dpo_examples(rows)
    return Exported(export_trl(pairs, out_path), key, len(pairs))



@dataclass(frozen=True)
class ExportedAnswers:
    out_dir: Path
    manifest: Path
    evaluations: list[dict] = field(default_factory=list)  # per evaluation: keys, round, model path, files


def export_answers(db: str, out_dir: str | Path, fmt: str, eval_keys: list[str] | None = None) -> ExportedAnswers:
    """Write evaluations' answers per model and split, as the reference scripts read them.

    `pope-answers`: `pope_<split>_answers.jsonl` (`{"question_id", "question", "answer"}` a line, in question-file
    order: POPE's evaluate.py reads `answer`) and `pope_<split>_questions.jsonl`, the same questions in POPE's
    question-file format (its label file). `chair-captions`: `chair_<split>_captions.jsonl` (`{"image_id",
    "caption"}` a line; the CHAIR tool reads it with `--image_id_key image_id --caption_key caption`).
    One folder per model, `round<R>-<model key>`, holding its newest complete evaluation (`eval_keys`: those), and
    `manifest.json` listing what was written.
    """
    if fmt not in ANSWER_FORMATS:
        raise ValueError(f"answer export format must be one of {ANSWER_FORMATS}, got {fmt!r}")
    store = Store(db, read_only=True)
    try:
        found = evaluations(store, eval_keys)
        if eval_keys:
            missing = sorted(set(eval_keys) - set(found.eval_key))
            if missing:
                raise LookupError(f"no complete evaluation {missing[0]} in {db} (`csr sql \"SELECT stage_key FROM "
                                  f"stages WHERE stage = 'evaluate'\"` lists them)")
        else:
            found = found.drop_duplicates("model_key", keep="last")
        if found.empty:
            raise LookupError(f"no complete evaluation in {db} (run `csr run` first)")
        twice = set(found.model_key[found.model_key.duplicated()])
        out = Path(out_dir)
        written = []
        for row in found.itertuples():
            name = f"round{row.round}-{row.model_key}" + (f"-{row.eval_key}" if row.model_key in twice else "")
            folder = out / name
            files = _write_answers(store, row.eval_key, folder, fmt)
            written.append({"eval_key": row.eval_key, "model_key": row.model_key, "round": int(row.round),
                            "model_path": located_path(store, row.model_path), "files": [str(f) for f in files]})
    finally:
        store.close()
    if not any(entry["files"] for entry in written):
        what = "POPE answers" if fmt == "pope-answers" else "descriptions"
        raise LookupError(f"the evaluations in {db} hold no {what}")
    manifest = out / "manifest.json"
    manifest.write_text(json.dumps({"format": fmt, "evaluations": written}, indent=1))
    return ExportedAnswers(out, manifest, written)


def _write_answers(store: Store, eval_key: str, folder: Path, fmt: str) -> list[Path]:
    prefix = "pope_" if fmt == "pope-answers" else "describe_"
    files = []
    for task in eval_tasks(store, eval_key):
        if not task.startswith(prefix):
            continue
        split, rows = task[len(prefix):], eval_answers(store, eval_key, task)
        folder.mkdir(parents=True, exist_ok=True)
        if fmt == "pope-answers":
            qids = [q if isinstance(q, str) and q else str(n + 1) for n, q in enumerate(rows.question_id)]
            answers = [json.dumps({"question_id": _number(q), "question": r.question, "answer": r.response})
                       for q, r in zip(qids, rows.itertuples())]
            questions = [pope_file_line(q, r.image or r.item_id, r.question, bool(r.label))
                         for q, r in zip(qids, rows.itertuples())]
            files += [_lines(folder / f"pope_{split}_answers.jsonl", answers),
                      _lines(folder / f"pope_{split}_questions.jsonl", questions)]
        else:
            captions = [json.dumps({"image_id": _number(r.item_id), "caption": r.response}) for r in rows.itertuples()]
            files.append(_lines(folder / f"chair_{split}_captions.jsonl", captions))
    return files


def _number(value: str) -> int | str:
    """COCO image ids and POPE question ids are numbers in the reference files; other ids stay strings."""
    return int(value) if value.isdigit() else value


def _lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path
