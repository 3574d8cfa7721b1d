"""Benchmarks from their own files through the flows, with the tiny world's models: the world's eval set written as
COCO annotations and POPE question files evaluates as the world does; `csr export` writes answer and caption files
that, parsed back, give the stored metrics; bad files stop before any model is loaded."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from csr_core.metrics import chair, pope_metrics
from csr_testing.benchmark_files import world_as_coco, write_coco, write_pope_file
from csr_testing.load_counter import LoadCounter
from flows.cli import main as csr
from storage.store import close_all, query_rows
from tasks.io import load_vocab
from world.vocab import OBJECTS

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "configs" / "tiny.yaml")


def _evaluate(run, *extra) -> str:
    from flows.stages import evaluate_flow

    key = evaluate_flow(config_files=[TINY], overrides=[*run["overrides"], "eval.chair_mentions=every", *extra])
    close_all()
    return key


def _results(db, key) -> dict:
    return {(s, m): v for s, m, v in query_rows(db, "SELECT split, metric, value FROM eval_results "
                                                    "WHERE stage_key = ?", [key])}


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_world_as_coco_files_evaluates_as_the_world_and_the_exports_round_trip(tiny_run, tmp_path, capsys):
    db, world = tiny_run["db"], tiny_run["data_dir"] / "world"
    native = _evaluate(tiny_run)

    exported = tmp_path / "native"
    assert csr(["export", "--format", "pope-answers", "--out", str(exported), "--db", str(db)]) == 0
    (folder,) = [p for p in exported.iterdir() if p.is_dir()]
    assert folder.name.startswith("round0-")
    pope_files = {split: folder / f"pope_{split}_questions.jsonl" for split in ("random", "popular", "adversarial")}

    rows = json.loads((world / "eval.json").read_text())[:4]  # configs/tiny.yaml evaluates 4 items
    coco = tmp_path / "coco"
    world_as_coco(rows, OBJECTS, coco)
    write_coco(coco, "train2014", [(900, "train/none.png")], {1: OBJECTS[0]}, [(900, 1)], [(900, "A mug.")])
    files = "{" + ", ".join(f"{split}: {path}" for split, path in pope_files.items()) + "}"
    from_files = _evaluate(tiny_run, "eval.source=coco", f"eval.coco_dir={coco}", f"eval.image_dir={world / 'images'}",
                           f"eval.vocab={world / 'vocab.json'}", f"eval.pope_files={files}")
    assert from_files != native
    sample = query_rows(db, "SELECT item_id, image FROM eval_items WHERE role = 'describe' AND stage_key = ? "
                            "ORDER BY position", [from_files])
    assert sample == [(str(n), row["image"]) for n, row in enumerate(rows, 1)]  # the sample is stored
    native_metrics, coco_metrics = _results(db, native), _results(db, from_files)
    assert {k: v for k, v in native_metrics.items() if k[1] != "theme_share"} == \
        {k: v for k, v in coco_metrics.items() if k[1] != "theme_share"}
    assert ("adversarial", "expected_f1") in coco_metrics and ("greedy", "relevance") in coco_metrics

    # Exported files, parsed back, give the stored metrics (both evaluations of the same model).
    out = tmp_path / "answers"
    for fmt in ("pope-answers", "chair-captions"):
        assert csr(["export", "--format", fmt, "--out", str(out), "--db", str(db), "--eval", native,
                    "--eval", from_files]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert [e["eval_key"] for e in manifest["evaluations"]] == [native, from_files]
    vocab = load_vocab(str(world / "vocab.json"))
    for key in (native, from_files):
        (folder,) = [p for p in out.iterdir() if p.name.endswith(key)]
        stored = _results(db, key)
        for split in ("random", "popular", "adversarial"):
            answers = _jsonl(folder / f"pope_{split}_answers.jsonl")
            questions = _jsonl(folder / f"pope_{split}_questions.jsonl")
            assert [a["question"] for a in answers] == [q["text"] for q in questions]
            assert set(questions[0]) == {"question_id", "image", "text", "label"}
            result = pope_metrics([a["answer"] for a in answers], [q["label"] == "yes" for q in questions])
            for metric in ("accuracy", "precision", "recall", "f1", "yes_ratio"):
                assert getattr(result, metric) == pytest.approx(stored[(split, metric)]), (key, split, metric)
        truth = dict(query_rows(db, "SELECT item_id, objects FROM eval_items WHERE stage_key = ?", [key]))
        for split in ("greedy", "sampled"):
            captions = _jsonl(folder / f"chair_{split}_captions.jsonl")
            result = chair([c["caption"] for c in captions], [truth[str(c["image_id"])] for c in captions], vocab,
                           every_mention=True)
            for metric in ("chair_s", "chair_i", "recall"):
                assert getattr(result, metric) == pytest.approx(stored[(split, metric)]), (key, split, metric)
    coco_folder = next(p for p in out.iterdir() if p.name.endswith(from_files))
    coco_captions = _jsonl(coco_folder / "chair_greedy_captions.jsonl")
    assert [c["image_id"] for c in coco_captions] == [1, 2, 3, 4]  # COCO image ids as numbers, as CHAIR reads them
    per_image = query_rows(db, "SELECT count(*), sum(chair_s) FROM eval_chair_v WHERE stage_key = ? AND split = "
                               "'greedy'", [from_files])[0]
    assert per_image[0] == 4 and per_image[1] == pytest.approx(4 * coco_metrics[("greedy", "chair_s")])


def test_a_bad_pope_file_stops_csr_run_before_the_store_exists(tmp_path, capsys):
    db = tmp_path / "never.duckdb"
    good = '{"question_id": 1, "image": "a.jpg", "text": "Is there a mug in the image?", "label": "yes"}\n'
    files = {}
    for split in ("random", "popular", "adversarial"):
        files[split] = tmp_path / f"{split}.jsonl"
        files[split].write_text(good + (good.replace('"yes"', '"maybe"').replace("1", "2") if split == "popular"
                                        else ""))
    mapping = "{" + ", ".join(f"{s}: {p}" for s, p in files.items()) + "}"
    assert csr(["run", "--db", str(db), "--data-dir", str(tmp_path / "data"), "--set", f"eval.pope_files={mapping}",
                "--set", f"eval.pope_image_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (f"csr: error: eval.pope_files.popular: {files['popular']}, line 2: label must be \"yes\" or "
                           "\"no\", got 'maybe'")
    assert csr(["run", "--db", str(db), "--set", f"eval.pope_files={{random: {files['random']}}}"]) == 2
    assert "eval.pope_files: no question file for split(s) ['popular', 'adversarial']" in capsys.readouterr().err
    assert csr(["run", "--db", str(db), "--set", "eval.source=coco", "--set", f"eval.coco_dir={tmp_path}"]) == 2
    assert f"eval.coco_dir: missing {tmp_path / 'instances_train2014.json'}" in capsys.readouterr().err
    assert not db.exists()


def test_a_question_about_an_image_the_annotations_lack_stops_before_any_model_loads(tiny_run, tmp_path,
                                                                                    monkeypatch):
    from flows.stages import evaluate_flow

    world = tiny_run["data_dir"] / "world"
    rows = json.loads((world / "eval.json").read_text())[:4]
    coco = tmp_path / "coco"
    world_as_coco(rows, OBJECTS, coco)
    bad = write_pope_file(tmp_path / "pope.jsonl", [("1", rows[0]["image"], "Is there a mug in the image?", True),
                                                     ("2", "eval/elsewhere.png", "Is there a fork?", False)])
    counter = LoadCounter(monkeypatch)
    with pytest.raises(ValueError, match=rf"eval\.pope_files\.random: {bad}, line 2: image 'eval/elsewhere\.png' "
                                         "is not in the COCO annotations"):
        evaluate_flow(config_files=[TINY], overrides=[
            *tiny_run["overrides"], "eval.source=coco", f"eval.coco_dir={coco}", "eval.coco_splits=[val2014]",
            f"eval.image_dir={world / 'images'}", f"eval.vocab={world / 'vocab.json'}", "eval.pope_splits=[random]",
            f"eval.pope_files={{random: {bad}}}"])
    close_all()
    assert counter.calls == {"vlm": 0, "clip": 0}
    assert query_rows(tiny_run["db"], "SELECT count(*) FROM stages WHERE stage = 'evaluate'") == [(0,)]


def test_csr_run_with_the_paper_config_evaluates_coco_chair_and_pope_question_files(tmp_path, prefect_harness,
                                                                                     capsys):
    """The paper config (500-image protocol, its prompt, 512 new tokens) on a tiny LLaVA-1.5 dir and COCO-format
    files: the sample takes every val2014 image there is, POPE reads its question files, and export writes them."""
    from PIL import Image

    from csr_testing.tiny_models import make_tiny_clip, make_tiny_llava

    images, coco = tmp_path / "val2014", tmp_path / "annotations"
    images.mkdir()
    names = [f"COCO_val2014_{i:012d}.jpg" for i in range(1, 5)]
    for i, name in enumerate(names):
        Image.new("RGB", (40 + 8 * i, 32), (60 * i, 90, 200 - 40 * i)).save(images / name)
    cats = {1: "person", 18: "dog", 62: "chair", 67: "dining table"}
    write_coco(coco, "val2014", list(enumerate(names, 1)), cats, [(1, 1), (1, 18), (2, 62), (3, 67), (4, 18)],
               [(1, "A man and his dog."), (2, "A chair by a table."), (4, "A puppy.")])
    write_coco(coco, "train2014", [(10, "COCO_train2014_000000000010.jpg")], cats, [(10, 1)], [])
    pope = {split: write_pope_file(tmp_path / f"coco_pope_{split}.json", [
        ("1", names[0], "Is there a dog in the image?", True), ("2", names[0], "Is there a chair?", False),
        ("3", names[3], "Is there a dog in the image?", True), ("4", names[2], "Is there a person?", False)])
        for split in ("random", "popular", "adversarial")}
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([{"id": "p1", "image": names[0], "input": "<image>\nDescribe."}]))
    db, out = tmp_path / "csr.duckdb", tmp_path / "answers"
    files = "{" + ", ".join(f"{s}: {p}" for s, p in pope.items()) + "}"
    args = ["--config", str(ROOT / "configs" / "paper.yaml"), "--db", str(db), "--data-dir", str(tmp_path / "data"),
            "--rounds", "0", "--set", f"model.path={make_tiny_llava(tmp_path / 'llava')}",
            "--set", "model.dtype=float32",
            "--set", f"relevance.model_dir={make_tiny_clip(tmp_path / 'clip')}", "--set", "runtime.device=cpu",
            "--set", f"prompts.source={prompts}", "--set", f"prompts.image_dir={images}",
            "--set", f"eval.coco_dir={coco}", "--set", f"eval.image_dir={images}", "--set", f"eval.pope_files={files}"]
    assert csr(["run", *args]) == 0, capsys.readouterr().err
    (key, config), = query_rows(db, "SELECT stage_key, CAST(config AS VARCHAR) FROM stages WHERE stage = 'evaluate'")
    config = json.loads(config)["eval"]
    assert (config["n_items"], config["max_new_tokens"], config["instruction"], config["chair_mentions"]) == (
        500, 512, "Please describe this image in detail.", "every")
    assert query_rows(db, "SELECT item_id, objects FROM eval_items WHERE stage_key = ? ORDER BY position", [key]) == [
        ("1", ["dog", "person"]), ("2", ["chair", "dining table"]), ("3", ["dining table"]), ("4", ["dog"])]
    counts = dict(query_rows(db, "SELECT task, count(*) FROM eval_responses WHERE stage_key = ? GROUP BY 1", [key]))
    assert counts == {"describe_greedy": 4, "pope_random": 4, "pope_popular": 4, "pope_adversarial": 4}
    assert csr(["export", "--format", "pope-answers", "--out", str(out), "--db", str(db)]) == 0
    (folder,) = [p for p in out.iterdir() if p.is_dir()]
    assert (folder / "pope_adversarial_questions.jsonl").read_text() == pope["adversarial"].read_text()
    assert [a["question_id"] for a in _jsonl(folder / "pope_random_answers.jsonl")] == [1, 2, 3, 4]
