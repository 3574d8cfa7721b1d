"""Every supported VLM family gives the guarantees LLaVA-1.5 has, on tiny models of its real architecture.

For each family, on images of several sizes and aspect ratios:
- the batched sentence tree equals a per-node `model.generate` baseline (diversity off);
- every stored sentence log-prob equals a plain forward pass over the whole sequence;
- POPE's yes-odds from a padded batch equal an unbatched forward that leaves positions to the model;
- one TRL DPO step, a merge, and the merged model generates like adapter + base.
"""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
from PIL import Image
from transformers import TrainerCallback

from csr_core.adapters.vlm import VLMAdapter
from csr_core.tree import PromptInput, SearchConfig, build_trees, tree_signature
from csr_testing.baselines import PerNodeGenerate, response_logprobs
from csr_testing.tiny_families import FAMILIES, make_tiny_vlm

SIZES = ((48, 40), (32, 80), (80, 32))
INSTRUCTIONS = ("Describe this image in detail.", "<image>\nWhat is in the picture?", "What do you see?")
EXACT = SearchConfig(num_token_beams=3, num_beam_groups=1, diversity_penalty=0.0, max_new_tokens=12, max_depth=3,
                     max_response_tokens=30, keep_top=1, keep_bottom=1, prune_min_open=2,
                     stop_at_eos=False)  # a sentence cut at max_new_tokens goes on: deeper trees
DIVERSE = SearchConfig(num_token_beams=4, num_beam_groups=2, diversity_penalty=3.0, max_new_tokens=12, max_depth=3,
                       max_response_tokens=30, keep_top=1, keep_bottom=1, prune_min_open=2, stop_at_eos=False)


@pytest.fixture(scope="module", params=FAMILIES)
def family_dir(request, tmp_path_factory):
    torch.set_num_threads(2)
    return make_tiny_vlm(request.param, tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def vlm(family_dir):
    return VLMAdapter.from_pretrained(family_dir)


def _image(size, seed):
    gen = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(size[1], size[0], 3, generator=gen) * 255).to(torch.uint8).numpy())


def _prompts():
    return [PromptInput(f"p{i}", _image(size, i), INSTRUCTIONS[i]) for i, size in enumerate(SIZES)]


def _paths(nodes):
    tokens = {}
    for n in nodes:
        tokens[n.node_id] = (tokens[n.parent_id] if n.parent_id is not None else ()) + n.token_ids
    return tokens


def test_trees_equal_a_per_node_generate_baseline(vlm):
    prompts = _prompts()
    ours = build_trees(vlm, prompts, EXACT)
    baseline = build_trees(PerNodeGenerate(vlm), prompts, EXACT)
    for prompt in prompts:
        assert tree_signature(ours[prompt.prompt_id]) == tree_signature(baseline[prompt.prompt_id]), prompt.prompt_id
    assert max(n.depth for tree in ours.values() for n in tree) >= 2  # the tree went past its first sentence


def test_every_sentence_logprob_equals_a_full_forward(vlm):
    prompts = {p.prompt_id: p for p in _prompts()}
    trees = build_trees(vlm, list(prompts.values()), DIVERSE)
    checked = 0
    for prompt_id, nodes in trees.items():
        paths = _paths(nodes)
        for node in nodes[1:]:
            prompt = prompts[prompt_id]
            full = response_logprobs(vlm, prompt.image, prompt.instruction, paths[node.node_id])
            expected = sum(full[len(full) - node.token_count :])
            assert node.logprob_sum == pytest.approx(expected, abs=1e-4), (prompt_id, node.node_id)
            checked += 1
    assert checked >= 9


def test_yes_odds_of_a_padded_batch_equal_an_unbatched_forward(vlm):
    images = [_image(size, 10 + i) for i, size in enumerate(SIZES)]
    questions = ["Is there a dog in the image?", "Is there a red car in the picture?", "Is there a cat?"]
    batched = vlm.yes_probability(images, questions, batch_size=3)
    yes, no = vlm.answer_first_token("Yes"), vlm.answer_first_token("No")
    for image, question, p in zip(images, questions, batched):
        with torch.inference_mode():
            logits = vlm.model(**vlm.model_inputs([image], [question])).logits[0, -1, [yes, no]]
        assert p == pytest.approx(torch.softmax(logits.float(), -1)[0].item(), abs=1e-5)


def test_batched_generation_equals_one_prompt_at_a_time(vlm):
    images = [_image(size, 20 + i) for i, size in enumerate(SIZES)]
    instructions = list(INSTRUCTIONS)
    together = vlm.generate(images, instructions, max_new_tokens=6, batch_size=3)
    alone = [vlm.generate([im], [ins], max_new_tokens=6, batch_size=1)[0] for im, ins in zip(images, instructions)]
    assert together == alone


def test_a_sliding_window_shorter_than_a_batch_lays_rows_out_without_holes(tmp_path, caplog):
    gemma = make_tiny_vlm("gemma3", tmp_path / "gemma3")  # the one tiny family with sliding-window layers
    config = json.loads((gemma / "config.json").read_text())
    narrow = tmp_path / "narrow-window"
    shutil.copytree(gemma, narrow)
    config["text_config"]["sliding_window"] = 8
    (narrow / "config.json").write_text(json.dumps(config))
    vlm = VLMAdapter.from_pretrained(narrow)
    assert vlm.sliding_window == 8
    prompts = {p.prompt_id: p for p in _prompts()}
    with caplog.at_level(logging.WARNING, logger="csr"):
        trees = build_trees(vlm, list(prompts.values()), DIVERSE)
    assert "sliding window" in caplog.text
    for prompt_id, nodes in trees.items():
        paths = _paths(nodes)
        for node in nodes[1:]:
            prompt = prompts[prompt_id]
            full = response_logprobs(vlm, prompt.image, prompt.instruction, paths[node.node_id])
            assert node.logprob_sum == pytest.approx(sum(full[len(full) - node.token_count :]), abs=1e-4)


class _FirstBatch(TrainerCallback):
    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        self.batch = next(iter(train_dataloader))


def _greedy(model, inputs):
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=6, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
    return out.sequences[:, inputs["input_ids"].shape[1] :], torch.stack(out.logits)


def test_one_dpo_step_trains_the_language_model_only_and_merges_into_a_reloadable_dir(family_dir, vlm, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from training.dpo import merge_adapter, train_dpo
    from training.dpo_config import DPOConfig
    from training.pairs import DPOExample

    pairs = [DPOExample(_image(size, 30 + i), "<image>\nDescribe the image.", "a red dog.", "a cat on a bus.")
             for i, size in enumerate(SIZES[:2])]
    cfg = DPOConfig.world().with_overrides(batch_size=2, max_length=256, max_steps=1, learning_rate=1e-2,
                                           lora_layers=(), save_steps=10)
    grab = _FirstBatch()
    trained = train_dpo(family_dir, pairs, cfg, tmp_path / "run", callbacks=[grab])
    assert trained.steps == 1
    for row, mask in zip(grab.batch["input_ids"], grab.batch["completion_mask"].bool()):
        completion = row[mask].tolist()  # one end of turn, at the end (Qwen's template adds a newline after it)
        ends = [i for i, token in enumerate(completion) if token in vlm.eos_ids]
        assert len(ends) == 1 and ends[0] >= len(completion) - 2, completion

    load = AutoModelForImageTextToText.from_pretrained
    with_adapter = PeftModel.from_pretrained(load(family_dir), trained.adapter_dir).eval()
    lora_modules = [name for name, _ in with_adapter.named_modules() if name.endswith("lora_A")]
    assert lora_modules and all(f".{vlm.family.decoder_scope}." in name for name in lora_modules)
    assert not [name for name in lora_modules if "vision" in name or "visual" in name]

    merged_dir = merge_adapter(family_dir, trained.adapter_dir, tmp_path / "merged")
    merged = load(merged_dir).eval()
    assert type(AutoProcessor.from_pretrained(merged_dir)) is type(vlm.processor)
    inputs = vlm.model_inputs([pairs[0].image, pairs[1].image], ["Describe the image.", "What is there?"])
    merged_tokens, merged_logits = _greedy(merged, inputs)
    adapter_tokens, adapter_logits = _greedy(with_adapter, inputs)
    _, base_logits = _greedy(vlm.model, inputs)
    assert merged_tokens.tolist() == adapter_tokens.tolist()
    torch.testing.assert_close(merged_logits, adapter_logits, rtol=1e-4, atol=1e-5)
    assert (merged_logits[0] - base_logits[0]).abs().max() > 1e-4  # the step changed the model


@pytest.mark.parametrize("preset", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "gemma3", "llava_next", "llava_onevision",
                                    "smolvlm"])
def test_each_family_preset_layers_over_the_paper_preset(preset):
    from flows.config import CONFIG_DIR, load_config

    cfg = load_config([CONFIG_DIR / "paper.yaml", CONFIG_DIR / f"{preset}.yaml"])
    paper = load_config([CONFIG_DIR / "paper.yaml"])
    assert cfg.model.path != paper.model.path and cfg.dpo.max_length >= paper.dpo.max_length
    assert (cfg.search.num_token_beams, cfg.reward.lam, cfg.dpo.lora_r) == (5, 0.9, 128)  # the paper's, kept


def test_mdpo_terms_on_another_family_are_refused_before_any_work(tmp_path, capsys):
    from csr_testing.tiny_models import make_tiny_clip
    from flows.cli import main

    model = make_tiny_vlm("qwen2_5_vl", tmp_path / "qwen")
    clip = make_tiny_clip(tmp_path / "clip")
    capsys.readouterr()
    db = tmp_path / "never.duckdb"
    code = main(["run", "--db", str(db), "--set", f"model.path={model}", "--set", "dpo.image_condition_weight=1",
                 "--set", f"relevance.model_dir={clip}"])
    assert code == 2 and not db.exists()
    assert capsys.readouterr().err.strip() == (
        f"csr: error: dpo.image_condition_weight: mDPO's terms support LLaVA-1.5 only, and {model} is qwen2_5_vl; "
        "set dpo.image_condition_weight=0 and dpo.anchor_weight=0")
