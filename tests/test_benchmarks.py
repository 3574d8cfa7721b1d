"""Benchmarks from their own files: the COCO synonym table, CHAIR from hand-made COCO annotations (hand-computed),
POPE built from them or read from question files, the world's eval set as COCO files, and bad files."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from csr_core.benchmarks import COCO_SYNONYMS, parse_pope_line, sample_images
from csr_core.config import EvalConfig
from csr_core.evaluation import evaluate_model, item_questions
from csr_core.validation import ConfigError
from csr_testing.benchmark_files import pope_rows, world_as_coco, write_coco, write_pope_file
from storage.artifacts import read_eval_items, read_eval_questions
from storage.store import close_all, open_store
from tasks.benchmarks import build_eval_set, check_benchmark_files, eval_set_rows, load_eval_set, read_pope_file
from tasks.io import load_eval_items, load_vocab

CATEGORIES = (  # COCO's 80 instance categories, as instances_val2014.json names them
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant",
    "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli",
    "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet",
    "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush")
VOCAB = load_vocab(str(COCO_SYNONYMS))
CATS = {1: "person", 17: "cat", 18: "dog", 10: "traffic light", 22: "elephant", 58: "hot dog", 62: "chair",
        70: "toilet", 88: "teddy bear"}


def _val(i: int) -> str:
    return f"COCO_val2014_{i:012d}.jpg"


# Five val2014 images and one train2014 image. Image 1's traffic light is named only by a caption; image 4's
# caption says "seat" beside a toilet (no chair); image 5's "baby elephant" is no person, its "train tracks" no train.
VAL_INSTANCES = [(1, 1), (1, 18), (1, 18), (2, 58), (3, 88), (3, 62), (4, 70), (5, 22)]
VAL_CAPTIONS = [(1, "A man walking his dogs."), (1, "Two puppies next to a traffic light."),
                (2, "A hot dog on a plate."), (3, "A teddy bear sitting on a seat."), (4, "A toilet with the seat up."),
                (5, "A baby elephant near the train tracks.")]
RESPONSES = {
    1: "A man and a woman walk two dogs past a traffic light. A cat watches the dogs.",
    2: "A hot dog with a bottle of ketchup.",
    3: "A teddy bear next to a cup.",
    4: "A white toilet with the seat up.",
    5: "A baby elephant walks along train tracks.",
}


@pytest.fixture
def coco(tmp_path):
    """Hand-made COCO annotations (val2014 and train2014) with the val images on disk."""
    ann, images = tmp_path / "annotations", tmp_path / "val2014"
    write_coco(ann, "val2014", [(i, _val(i)) for i in range(1, 6)], CATS, VAL_INSTANCES, VAL_CAPTIONS)
    write_coco(ann, "train2014", [(6, "COCO_train2014_000000000006.jpg")], CATS, [(6, 17)], [(6, "A cat.")])
    images.mkdir()
    for i in range(1, 6):
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(images / _val(i))
    return {"dir": ann, "images": images, "root": tmp_path}


def _coco_cfg(coco, **kw) -> EvalConfig:
    return EvalConfig(**{"source": "coco", "coco_dir": str(coco["dir"]), "image_dir": str(coco["images"]),
                         "n_items": 5, "n_samples": 0, "pope_per_item": 2, **kw})


def _describe_by_color(images, prompts, *, do_sample, num_return_sequences, seed):
    """Each hand-made image's response (the image's red channel tells which it is); POPE: always yes."""
    if prompts[0].startswith("Is there"):
        return [["Yes, there is."] for _ in prompts]
    return [[RESPONSES[image.getpixel((0, 0))[0] // 40]] * num_return_sequences for image in images]


def _metrics(out) -> dict:
    return {(m.split, m.metric): m.value for m in out.metrics}


# ---------------------------------------------------------------------------------------------- the synonym table
def test_the_coco_table_holds_the_80_categories_with_synonyms_two_word_names_and_plurals():
    assert len(CATEGORIES) == 80 and sorted(VOCAB.objects) == sorted(CATEGORIES)
    data = json.loads(COCO_SYNONYMS.read_text())
    forms = [f for fs in data["objects"].values() for f in fs]
    assert len(forms) == len(set(forms))  # every form names one object
    expected = {"hot dogs": "hot dog", "teddy bears": "teddy bear", "traffic lights": "traffic light",
                "stoplight": "traffic light", "wine glasses": "wine glass", "motor bike": "motorcycle",
                "air plane": "airplane", "bow tie": "tie", "cell phones": "cell phone", "men": "person",
                "women": "person", "children": "person", "people": "person", "puppies": "dog", "mice": "mouse",
                "knives": "knife", "buses": "bus", "ski": "skis", "skis": "skis", "sofas": "couch",
                "tvs": "tv", "doughnuts": "donut", "baby elephant": "elephant", "adult giraffes": "giraffe",
                "passenger train": "train", "passenger jets": "airplane", "toilet seat": "toilet", "baby": "person",
                "train tracks": None, "baby animal": None, "dog": "dog", "table": "dining table", "hydrants":
                "fire hydrant"}
    assert {form: VOCAB.canonical(form) for form in expected} == expected
    irregular = {"person": "people", "knife": "knives", "mouse": "mice", "bus": "buses", "bench": "benches",
                 "couch": "couches", "sandwich": "sandwiches", "toothbrush": "toothbrushes",
                 "wine glass": "wine glasses", "skis": "skis", "scissors": "scissors", "sheep": "sheep",
                 "broccoli": "broccoli"}
    for name in CATEGORIES:  # every category and its plural
        assert VOCAB.canonical(name) == name
        assert VOCAB.mentions(f"Two {irregular.get(name, name + 's')} here.") == [name], name


def test_the_table_matches_phrases_as_the_chair_tool_merges_them():
    def words(text):
        return [(m.word, m.object) for m in VOCAB.mention_list(text)]

    assert words("A man eats a hot dog beside a teddy bear; two dogs wait.") == [
        ("man", "person"), ("hot dog", "hot dog"), ("teddy bear", "teddy bear"), ("dogs", "dog")]
    assert words("A baby elephant walks on train tracks near a passenger train.") == [
        ("baby elephant", "elephant"), ("passenger train", "train")]
    assert words("A toilet with its seat down. Two seats.") == [("toilet", "toilet")]  # seats go with a toilet
    assert words("Two seats.") == [("seats", "chair")]
    assert words("A baby animal and a baby.") == [("baby", "person")]


# ---------------------------------------------------------------------------------------------- COCO CHAIR
@pytest.mark.parametrize("counting, n_mentions", [("every", 12), ("unique", 10)])
def test_chair_from_hand_made_coco_files_is_the_hand_computed_one(coco, tmp_path, counting, n_mentions):
    """Truth: 1 {person, dog, traffic light (caption only)}, 2 {hot dog}, 3 {teddy bear, chair}, 4 {toilet},
    5 {elephant}. Mentions: 1 man, woman, dogs, traffic light, cat, dogs (unique: 4 objects); 2 hot dog, bottle;
    3 teddy bear, cup; 4 toilet (its seat dropped); 5 elephant. Hallucinated: cat, bottle, cup."""
    db = tmp_path / "csr.duckdb"
    cfg = _coco_cfg(coco, chair_mentions=counting)
    key = build_eval_set.fn(str(db), cfg, str(COCO_SYNONYMS))
    data = load_eval_set(str(db), key, cfg, str(coco["images"]), str(coco["images"]))
    assert [item.item_id for item in data.items] == ["1", "2", "3", "4", "5"]
    assert [sorted(item.objects) for item in data.items] == [
        ["dog", "person", "traffic light"], ["hot dog"], ["chair", "teddy bear"], ["toilet"], ["elephant"]]
    out = evaluate_model(_describe_by_color, None, data.items, VOCAB, cfg, None, data.pope, data.pope_items)
    metrics = _metrics(out)
    assert metrics[("greedy", "chair_i")] == pytest.approx(3 / n_mentions)
    assert metrics[("greedy", "chair_s")] == pytest.approx(3 / 5)
    assert metrics[("greedy", "recall")] == pytest.approx(7 / 8)  # image 3's chair is not named
    rows = {r.item_id: r for r in out.responses if r.task == "describe_greedy"}
    assert rows["1"].hallucinated == ["cat"] and rows["1"].hallucinated_words == ["cat"]
    assert rows["1"].mentioned == (["person", "person", "dog", "traffic light", "cat", "dog"] if counting == "every"
                                   else ["person", "dog", "traffic light", "cat"])
    assert rows["3"].hallucinated == ["cup"] and rows["3"].recall == pytest.approx(0.5)
    assert rows["4"].mentioned == ["toilet"] and rows["5"].mentioned == ["elephant"]
    assert rows["2"].image == _val(2) and rows["2"].position == 1
    close_all()


def test_the_image_sample_is_seeded_from_the_sample_split_and_stored(coco, tmp_path):
    db = str(tmp_path / "csr.duckdb")
    cfg = _coco_cfg(coco, n_items=3, image_seed=7)
    key = build_eval_set.fn(db, cfg, str(COCO_SYNONYMS))
    stored = list(read_eval_items(open_store(db), key)["item_id"])
    assert stored == [str(i) for i in sample_images([1, 2, 3, 4, 5], 3, 7)]  # never train2014's image 6
    assert stored == sorted(stored, key=int) and len(set(stored)) == 3
    assert build_eval_set.fn(db, cfg, str(COCO_SYNONYMS)) == key  # cached: same sample, same key
    samples = {tuple(sample_images(range(1, 501), 5, seed)) for seed in range(5)}
    assert len(samples) == 5 and sample_images(range(1, 501), 5, 3) == sample_images(range(1, 501), 5, 3)
    assert sample_images([3, 1, 2], 10, 0) == [1, 2, 3]
    close_all()


def test_pope_from_coco_annotations_as_the_paper_builds_it(coco):
    """Images with at least 2 segmentation objects: 1 {person, dog} and 3 {teddy bear, chair} (2 present, 2 absent
    each). Popular negatives are the most frequent absent objects; with no co-occurrence across the images the
    adversarial ones fall back to name order."""
    items, questions = eval_set_rows(_coco_cfg(coco), str(COCO_SYNONYMS))
    assert list(items[items.role == "pope"]["item_id"]) == ["1", "3"]
    for split in ("random", "popular", "adversarial"):
        rows = questions[questions.split == split]
        assert list(rows.label) == [True, False] * 4 and list(rows.question_id) == [str(n) for n in range(1, 9)]
        by_item = {i: list(rows[rows.item_id == i].object) for i in ("1", "3")}
        assert sorted(by_item["1"][0::2]) == ["dog", "person"] and sorted(by_item["3"][0::2]) == ["chair", "teddy bear"]
        negatives = {i: sorted(objs[1::2]) for i, objs in by_item.items()}
        if split == "popular":
            assert negatives == {"1": ["chair", "teddy bear"], "3": ["dog", "person"]}
        if split == "adversarial":
            assert negatives == {"1": ["airplane", "apple"], "3": ["airplane", "apple"]}
        assert not set(negatives["1"]) & {"dog", "person"} and not set(negatives["3"]) & {"teddy bear", "chair"}
    assert questions.iloc[0].question == f"Is there a {questions.iloc[0].object} in the image?"


def test_pope_question_files_are_read_in_file_order_with_their_images(coco, tmp_path):
    db = str(tmp_path / "csr.duckdb")
    files = {}
    for split in ("random", "popular", "adversarial"):
        files[split] = str(write_pope_file(tmp_path / f"coco_pope_{split}.json", [
            ("7", _val(3), "Is there a chair in the image?", True),
            ("3", _val(1), "Is there a cat in the image?", False),
            ("5", _val(3), f"Is there a {split} thing in the image?", False)]))
    cfg = _coco_cfg(coco, pope_files=files)
    key = build_eval_set.fn(db, cfg, str(COCO_SYNONYMS))
    stored = read_eval_questions(open_store(db), key)
    random_rows = stored[stored.split == "random"]
    assert list(random_rows.question_id) == ["7", "3", "5"] and list(random_rows.item_id) == ["3", "1", "3"]
    assert list(random_rows.label) == [True, False, False]
    data = load_eval_set(db, key, cfg, str(coco["images"]), str(coco["images"]))
    out = evaluate_model(_describe_by_color, None, data.items, VOCAB, cfg, None, data.pope, data.pope_items)
    pope = [r for r in out.responses if r.task == "pope_popular"]
    assert [(r.question_id, r.question, r.position) for r in pope] == [
        ("7", "Is there a chair in the image?", 0), ("3", "Is there a cat in the image?", 1),
        ("5", "Is there a popular thing in the image?", 2)]
    metrics = _metrics(out)  # always "yes": 1 true positive, 2 false positives
    assert metrics[("popular", "precision")] == pytest.approx(1 / 3) and metrics[("popular", "recall")] == 1.0
    assert metrics[("popular", "accuracy")] == pytest.approx(1 / 3) and metrics[("popular", "yes_ratio")] == 1.0
    close_all()


# ---------------------------------------------------------------------------------------------- bad files
def test_a_missing_split_is_an_error_naming_it(coco, tmp_path):
    with pytest.raises(ConfigError, match=r"^pope_files: no question file for split\(s\) \['popular', "
                                          r"'adversarial'\]"):
        EvalConfig(pope_files={"random": "a.jsonl"})
    (coco["dir"] / "captions_train2014.json").unlink()
    with pytest.raises(ConfigError, match=r"eval\.coco_dir: missing .*captions_train2014\.json \(split train2014"):
        check_benchmark_files(_coco_cfg(coco))
    check_benchmark_files(_coco_cfg(coco, coco_splits=("val2014",)))  # val2014 alone is complete


@pytest.mark.parametrize("line, why", [
    ('{"question_id": 2, "image": "a.jpg", "text": "Is there a dog?", "label": "maybe"}',
     'label must be "yes" or "no", got \'maybe\''),
    ('{"question_id": 2, "image": "a.jpg", "text": "Is there a d', "not valid JSON"),
    ('{"question_id": 2, "image": "a.jpg", "label": "yes"}', "missing 'text'"),
    ('{"question_id": 1, "image": "a.jpg", "text": "Is there a cat?", "label": "no"}', "question_id 1 repeats line 1"),
    ('["not", "an", "object"]', "expected an object"),
])
def test_a_bad_question_line_is_an_error_naming_the_file_and_line(tmp_path, line, why):
    path = tmp_path / "pope_random.jsonl"
    path.write_text('{"question_id": 1, "image": "a.jpg", "text": "Is there a dog?", "label": "yes"}\n' + line + "\n")
    with pytest.raises(ConfigError) as info:
        read_pope_file(str(path), "eval.pope_files.random")
    assert str(info.value).startswith(f"eval.pope_files.random: {path}, line 2: ") and why in str(info.value)


def test_a_question_image_not_in_the_annotations_is_an_error_naming_the_line(coco, tmp_path):
    files = {split: str(write_pope_file(tmp_path / f"{split}.jsonl", [
        ("1", _val(1), "Is there a dog in the image?", True), ("2", _val(99), "Is there a cat in the image?", False)]))
        for split in ("random", "popular", "adversarial")}
    with pytest.raises(ConfigError) as info:
        eval_set_rows(_coco_cfg(coco, pope_files=files), str(COCO_SYNONYMS))
    assert str(info.value).startswith(f"eval.pope_files.random: {files['random']}, line 2: image "
                                      f"'{_val(99)}' is not in the COCO annotations")


def test_bad_annotation_files_are_errors_naming_the_file_and_item(coco):
    instances = coco["dir"] / "instances_val2014.json"
    text = instances.read_text()
    instances.write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match=rf"^{re.escape(str(instances))}: not valid JSON \(.* at line 1, column"):
        eval_set_rows(_coco_cfg(coco), str(COCO_SYNONYMS))
    data = json.loads(text)
    data["annotations"][3]["category_id"] = 999
    instances.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"instances_val2014\.json: annotations\[3\]: category_id 999 is not"):
        eval_set_rows(_coco_cfg(coco), str(COCO_SYNONYMS))
    data["annotations"][3]["category_id"] = 58
    data["categories"].append({"id": 91, "name": "unicorn"})
    instances.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"categories\[9\]: category 'unicorn' is not in the object vocabulary"):
        eval_set_rows(_coco_cfg(coco), str(COCO_SYNONYMS))


def test_parse_pope_line_takes_the_official_format():
    row = parse_pope_line('{"question_id": 1, "image": "COCO_val2014_000000310196.jpg", '
                          '"text": "Is there a snowboard in the image?", "label": "yes"}')
    assert (row.question_id, row.image, row.label) == ("1", "COCO_val2014_000000310196.jpg", True)
    assert parse_pope_line('{"question_id": "q", "image": "a", "text": "t", "label": "No"}').label is False


# ---------------------------------------------------------------------------------------------- world as COCO
def _by_content(images, prompts, *, do_sample, num_return_sequences, seed):
    """A deterministic stand-in VLM: what it says depends on the image's pixels and the prompt only."""
    from world.vocab import OBJECTS

    out = []
    for image, prompt in zip(images, prompts):
        h = hashlib.sha256(image.tobytes() + prompt.encode()).digest()
        if prompt.startswith("Is there"):
            out.append(["Yes." if h[0] % 2 else "No, there is not."])
        else:
            out.append([f"There is a {OBJECTS[h[1 + s] % 16]} and a {OBJECTS[h[5 + s] % 16]}s."
                        for s in range(num_return_sequences)])
    return out


def _odds(images, prompts):
    return [hashlib.sha256(i.tobytes() + p.encode()).digest()[2] / 255 for i, p in zip(images, prompts)]


def test_the_world_eval_set_as_coco_and_pope_files_gives_the_native_chair_and_pope(tmp_path):
    from tasks.world import _eval_row
    from world.config import WorldConfig
    from world.scenes import generate_scenes, render_scene
    from world.vocab import OBJECTS, SYNONYMS

    world_cfg = WorldConfig.tiny(n_eval_scenes=12, n_train_scenes=1, n_pool_scenes=1)
    images = tmp_path / "images"
    rows = []
    for scene in (s for s in generate_scenes(world_cfg) if s.split == "eval"):
        (images / "eval").mkdir(parents=True, exist_ok=True)
        render_scene(scene, world_cfg).save(images / "eval" / f"{scene.scene_id}.png")
        rows.append(_eval_row(scene))
    (tmp_path / "eval.json").write_text(json.dumps(rows))
    vocab_path = tmp_path / "vocab.json"
    vocab_path.write_text(json.dumps({name: list(SYNONYMS.get(name, (name,))) for name in OBJECTS}))
    vocab = load_vocab(str(vocab_path))
    cfg = EvalConfig(n_items=len(rows), n_samples=2, pope_per_item=2, chair_mentions="every")

    items, _ = load_eval_items(str(tmp_path / "eval.json"), str(images), cfg.n_items)
    native = evaluate_model(_by_content, None, items, vocab, cfg, _odds)

    ids = world_as_coco(rows, OBJECTS, tmp_path / "coco")
    write_coco(tmp_path / "coco", "train2014", [(1000, "train/none.png")], {1: OBJECTS[0]}, [(1000, 1)], [])
    image_of = {str(r["id"]): r["image"] for r in rows}
    files = {split: str(write_pope_file(tmp_path / f"pope_{split}.jsonl",
                                        pope_rows(item_questions(items, vocab, split, cfg), image_of)))
             for split in cfg.pope_splits}
    coco_cfg = EvalConfig(source="coco", coco_dir=str(tmp_path / "coco"), image_dir=str(images), n_items=len(rows),
                          n_samples=2, pope_per_item=2, pope_files=files, chair_mentions="every")
    db = str(tmp_path / "csr.duckdb")
    key = build_eval_set.fn(db, coco_cfg, str(vocab_path))
    data = load_eval_set(db, key, coco_cfg, str(images), str(images))
    assert [item.item_id for item in data.items] == [str(ids[str(r["id"])]) for r in rows]
    assert [item.objects for item in data.items] == [item.objects for item in items]
    from_files = evaluate_model(_by_content, None, data.items, vocab, coco_cfg, _odds, data.pope, data.pope_items)

    def comparable(out):
        return {k: v for k, v in _metrics(out).items() if k[1] != "theme_share"}

    assert comparable(from_files) == comparable(native)
    assert len(comparable(native)) == 2 * 4 + 3 * 10  # chair_s/i, recall, words per mode; POPE greedy + expected
    assert [r.response for r in from_files.responses] == [r.response for r in native.responses]
    close_all()


def test_a_vocabulary_whose_form_names_two_objects_is_refused(tmp_path):
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps({"objects": {"cup": ["cup", "mug"], "mug": ["mug"]}}))
    with pytest.raises(ConfigError, match=r"^eval\.vocab: object vocabulary .*vocab\.json: synonyms: form 'mug'"):
        check_benchmark_files(EvalConfig(source=str(tmp_path / "e.json")), str(path))
    assert Path(COCO_SYNONYMS).is_file()
