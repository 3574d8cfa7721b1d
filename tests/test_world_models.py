"""The world's two models, built tiny: both reload from disk through the standard loaders."""
from __future__ import annotations

import json
import math

import open_clip
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor, LlavaForConditionalGeneration

from world.clip import train_relevance_clip
from world.config import WorldConfig
from world.corpus import build_corpus
from world.scenes import generate_scenes, render_scene
from world.vlm import answer_probe_loss, answer_probes, encode_example, n_image_tokens, train_base_vlm

CFG = WorldConfig.tiny()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    scenes = generate_scenes(CFG)
    train = [s for s in scenes if s.split == "train"]
    corpus = build_corpus(train, CFG)
    vlm_stats = train_base_vlm(train, lambda s: render_scene(s, CFG), corpus, CFG, out / "vlm")
    clip_stats = train_relevance_clip(train, {s.scene_id: render_scene(s, CFG) for s in train}, CFG, out / "clip")
    evals = [s for s in scenes if s.split == "eval"]
    return out, vlm_stats, clip_stats, evals, corpus


def test_vlm_stats_report_losses(built):
    _, stats, clip_stats, _, corpus = built
    assert stats["sft_examples"] == len(corpus)
    for key in ("vision_loss", "sft_loss", "seconds", "parameters"):
        assert stats[key] == stats[key] and stats[key] > 0  # not NaN
    assert clip_stats["clip_loss"] > 0


def test_answer_probes_train_with_the_vlm_and_are_not_saved(built):
    out, stats, _, _, _ = built
    assert stats["answer_probe_loss"] == stats["answer_probe_loss"] > 0  # ran: not NaN
    weights = load_file(out / "vlm" / "model.safetensors")
    assert not any("probe" in name for name in weights)


def test_answer_probe_loss_at_zero_logits():
    """Zero-initialised probes: each of the 16 presence logits costs ln 2 (BCE averages them), the question
    probe's uniform softmax costs ln 16, so the loss is ln 2 + ln 16 = ln 32."""
    probes = answer_probes(CFG)
    for head in probes.values():
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
    hidden = torch.randn(3, CFG.llm_hidden)
    present = torch.zeros(3, len(probes["image"].bias))
    present[0, 2] = present[1, 5] = 1.0
    loss = answer_probe_loss(probes, hidden, present, torch.tensor([2, 7, 0]))
    assert loss.item() == pytest.approx(math.log(32), rel=1e-6)


def test_vlm_reloads_with_auto_classes_and_generates(built):
    out, _, _, evals, _ = built
    files = {p.name for p in (out / "vlm").iterdir()}
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    processor = AutoProcessor.from_pretrained(out / "vlm")
    model = AutoModelForImageTextToText.from_pretrained(out / "vlm")
    assert isinstance(model, LlavaForConditionalGeneration)
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}],
        add_generation_prompt=True)
    assert prompt == "USER: <image>\nDescribe the image. ASSISTANT:"
    inputs = processor(images=[render_scene(evals[0], CFG)], text=[prompt], return_tensors="pt")
    n_tokens = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert n_tokens == (CFG.image_size // CFG.patch_size) ** 2 + 1 == model.config.image_seq_length
    out_ids = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert out_ids.shape[1] > inputs["input_ids"].shape[1]


def test_training_prompt_ids_equal_processor_ids(built):
    out, _, _, evals, corpus = built
    processor = AutoProcessor.from_pretrained(out / "vlm")
    for example in corpus[:3]:
        ids, prompt_len = encode_example(processor, example, n_image_tokens(CFG))
        prompt = processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": example.instruction}]}],
            add_generation_prompt=True)
        inputs = processor(images=[render_scene(evals[0], CFG)], text=[prompt], return_tensors="pt")
        assert inputs["input_ids"][0].tolist() == ids[:prompt_len]
        assert ids[-1] == processor.tokenizer.eos_token_id


def test_clip_reloads_from_local_dir(built):
    out, _, _, evals, _ = built
    config = json.loads((out / "clip" / "open_clip_config.json").read_text())
    assert set(config) == {"model_cfg", "preprocess_cfg"}
    name = "local-dir:" + str(out / "clip")
    model, _, preprocess = open_clip.create_model_and_transforms(name)
    tokenizer = open_clip.get_tokenizer(name)
    saved = load_file(str(out / "clip" / "open_clip_model.safetensors"))
    for key, value in model.state_dict().items():
        assert torch.equal(value, saved[key]), key
    with torch.no_grad():
        image = model.encode_image(preprocess(render_scene(evals[0], CFG)).unsqueeze(0))
        text = model.encode_text(tokenizer(["There is a red mug.", "I see a blue tree."]))
    assert image.shape == (1, CFG.clip_embed_dim) and text.shape == (2, CFG.clip_embed_dim)
