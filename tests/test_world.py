"""The miniature world's scenes, corpus and tokenizer: determinism and exact ground truth."""
from __future__ import annotations

import io
import re

import pytest

from csr_core.metrics import ObjectVocab
from world.config import WorldConfig
from world.corpus import (
    build_corpus,
    clean_caption,
    cooccurring_absent,
    instruction_for,
    noisy_caption,
)
from world.scenes import BACKGROUND, Scene, SceneObject, generate_scenes, render_scene, scene_rng
from world.tokenizer import build_tokenizer
from world.vocab import COLORS, INSTRUCTIONS, OBJECTS, SYNONYMS, THEME_OF, THEMES

CFG = WorldConfig(n_train_scenes=60, n_pool_scenes=10, n_eval_scenes=20)
VOCAB = ObjectVocab(SYNONYMS)


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_vocabulary_has_twelve_plus_classes_in_themes_with_synonyms():
    assert len(OBJECTS) >= 12 and len(set(OBJECTS)) == len(OBJECTS)
    assert sorted(OBJECTS) == sorted(n for names in THEMES.values() for n in names)
    assert set(SYNONYMS) == set(OBJECTS)
    assert SYNONYMS["mug"] == ("mug", "mugs", "cup", "cups")
    assert VOCAB.mentions("Two cups and a red leaf.") == ["mug", "leaf"]


@pytest.mark.parametrize("field,value", [("max_objects", 5), ("caption_noise", 1.5), ("image_size", 60),
                                         ("sft_steps", -1), ("batch_size", 0),
                                         ("answer_probe_weight", -0.5)])
def test_config_rejects_bad_values_naming_field_and_value(field, value):
    with pytest.raises(ValueError, match=rf"^{field}: .*got {re.escape(repr(value))}$"):
        WorldConfig(**{field: value})


def test_same_seed_same_scenes_images_and_corpus():
    first, second = generate_scenes(CFG), generate_scenes(CFG)
    assert first == second
    first_pngs = [png_bytes(render_scene(s, CFG)) for s in first[:10]]
    assert first_pngs == [png_bytes(render_scene(s, CFG)) for s in second[:10]]
    assert build_corpus(first, CFG) == build_corpus(second, CFG)


def test_other_seed_other_world():
    other = WorldConfig(seed=1, n_train_scenes=60, n_pool_scenes=10, n_eval_scenes=20)
    assert generate_scenes(CFG) != generate_scenes(other)


def test_splits_are_disjoint_and_sized():
    scenes = generate_scenes(CFG)
    ids = [s.scene_id for s in scenes]
    assert len(ids) == len(set(ids)) == 90
    assert [sum(s.split == split for s in scenes) for split in ("train", "pool", "eval")] == [60, 10, 20]
    assert all(s.scene_id.startswith(s.split + "-") for s in scenes)


def test_scene_ground_truth_is_well_formed():
    for scene in generate_scenes(CFG):
        cells = [o.cell for o in scene.objects]
        assert CFG.min_objects <= len(scene.objects) <= CFG.max_objects
        assert cells == sorted(set(cells))  # one object per cell, reading order
        assert len(set(scene.object_names)) == len(scene.objects)
        assert all(o.name in OBJECTS and o.color in COLORS for o in scene.objects)
        cell_px = CFG.image_size // CFG.grid
        for o in scene.objects:
            row, col = divmod(o.cell, CFG.grid)
            assert col * cell_px <= o.x and o.x + o.size <= (col + 1) * cell_px
            assert row * cell_px <= o.y and o.y + o.size <= (row + 1) * cell_px


def test_scenes_cluster_in_themes():
    scenes = generate_scenes(WorldConfig(n_train_scenes=400, n_pool_scenes=1, n_eval_scenes=1))
    objects = [o for s in scenes for o in s.objects]
    in_theme = sum(THEME_OF[o.name] == s.theme for s in scenes for o in s.objects)
    assert in_theme / len(objects) > 0.7  # vs 0.25 by chance


def test_rendered_pixels_match_ground_truth():
    """Each object's colour appears inside its square; empty cells are pure background."""
    cell_px = CFG.image_size // CFG.grid
    for scene in generate_scenes(CFG)[:30]:
        image = render_scene(scene, CFG)
        assert image.size == (CFG.image_size, CFG.image_size) and image.mode == "RGB"
        for obj in scene.objects:
            square = image.crop((obj.x, obj.y, obj.x + obj.size, obj.y + obj.size))
            assert COLORS[obj.color] in {c for _, c in square.getcolors(4096)}
        occupied = {o.cell for o in scene.objects}
        for cell in set(range(CFG.grid**2)) - occupied:
            row, col = divmod(cell, CFG.grid)
            box = image.crop((col * cell_px, row * cell_px, (col + 1) * cell_px, (row + 1) * cell_px))
            assert box.getcolors() == [(cell_px * cell_px, BACKGROUND)]


SCENE = Scene("train-00007", "train", "kitchen", (
    SceneObject("mug", "red", 0, 24, 2, 3), SceneObject("star", "orange", 3, 24, 36, 36)))


def test_clean_caption_names_each_object_once_in_reading_order():
    caption = clean_caption(SCENE, scene_rng(0, "x"))
    sentences = caption.split(" ")
    assert caption.count(".") == 2 and caption.endswith(".")
    assert VOCAB.mentions(caption) == ["mug", "star"]
    assert "red mug" in caption and "an orange star" in caption.lower()
    assert len(sentences) > 2


def test_noise_appends_one_cooccurring_absent_object():
    assert cooccurring_absent(SCENE) == ["plate", "bottle", "fork"]
    rng = scene_rng(0, "y")
    for _ in range(20):
        caption = noisy_caption(SCENE, rng, noise=1.0)
        sentences = [s for s in caption.split(".") if s.strip()]
        mentions = [VOCAB.mentions(s) for s in sentences]
        assert mentions[:2] == [["mug"], ["star"]] and len(mentions) == 3
        assert mentions[2] == ["plate"] and "blue plate" in sentences[2]  # the theme's first absent, typical colour
    assert noisy_caption(SCENE, rng, noise=0.0).count(".") == 2


def test_corpus_answers_match_ground_truth_without_noise():
    cfg = CFG.with_overrides(caption_noise=0.0, yesno_noise=0.0)
    scenes = {s.scene_id: s for s in generate_scenes(cfg) if s.split == "train"}
    corpus = build_corpus(list(scenes.values()), cfg)
    assert {e.kind for e in corpus} == {"describe", "yesno"}
    for example in corpus:
        truth = scenes[example.scene_id].object_names
        if example.kind == "describe":
            assert example.instruction in INSTRUCTIONS
            assert VOCAB.mentions(example.answer) == list(truth)
            for sentence in example.answer.split(".")[:-1]:
                assert len(VOCAB.mentions(sentence)) == 1
        else:
            (asked,) = VOCAB.mentions(example.instruction)
            assert example.subject == asked  # what the answer probe learns to read from the question
            assert example.answer == ("Yes." if asked in truth else "No.")
    yes = sum(e.answer == "Yes." for e in corpus if e.kind == "yesno")
    assert yes == sum(e.kind == "yesno" for e in corpus) / 2


def test_caption_noise_rate_is_respected():
    cfg = WorldConfig(n_train_scenes=500, n_pool_scenes=1, n_eval_scenes=1, caption_noise=0.6)
    scenes = {s.scene_id: s for s in generate_scenes(cfg)}
    describe = [e for e in build_corpus(list(scenes.values()), cfg) if e.kind == "describe"]
    noisy = [e for e in describe if len(VOCAB.mentions(e.answer)) > len(scenes[e.scene_id].objects)]
    assert 0.5 < len(noisy) / len(describe) < 0.7


def test_yesno_noise_says_yes_only_to_the_typical_absent_object():
    cfg = WorldConfig(n_train_scenes=500, n_pool_scenes=1, n_eval_scenes=1, yesno_noise=0.6)
    scenes = {s.scene_id: s for s in generate_scenes(cfg)}
    yesno = [e for e in build_corpus(list(scenes.values()), cfg) if e.kind == "yesno"]
    typical = [e for e in yesno if cooccurring_absent(scenes[e.scene_id])[:1] == [e.subject]]
    wrong = [e for e in yesno if e.answer == "Yes." and e.subject not in scenes[e.scene_id].object_names]
    assert wrong and all(e in typical for e in wrong)
    assert 0.5 < len(wrong) / len(typical) < 0.7


def test_instruction_for_is_deterministic():
    assert instruction_for("pool-00001", 0) == instruction_for("pool-00001", 0)
    assert {instruction_for(f"pool-{i:05d}", 0) for i in range(100)} == set(INSTRUCTIONS)


def test_tokenizer_words_periods_and_eos():
    tokenizer = build_tokenizer()
    ids = tokenizer("There is an orange mug. I see a red tree.", add_special_tokens=False).input_ids
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens == ["There", "is", "an", "orange", "mug", ".", "I", "see", "a", "red", "tree", "."]
    assert tokenizer.decode(ids) == "There is an orange mug. I see a red tree."
    assert tokenizer.eos_token == "</s>" and tokenizer.image_token == "<image>"
    corpus = build_corpus(generate_scenes(CFG), CFG)
    texts = [e.instruction + " " + e.answer for e in corpus] + list(INSTRUCTIONS)
    assert all(tokenizer.unk_token_id not in tokenizer(t).input_ids for t in texts)


def test_chat_template_matches_llava_1_5():
    tokenizer = build_tokenizer()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What do you see?"}]}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == "USER: <image>\nWhat do you see? ASSISTANT:"
