"""DPO on the tiny LLaVA: one logged step, resume after an interruption, LoRA merge round-trip, TRL export."""

import json
import logging

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoProcessor, TrainerCallback

from csr_testing.tiny_models import make_tiny_llava
from training.conditional import apply_crop, crop_box
from training.dpo import (
    last_complete_checkpoint,
    load_model_and_processor,
    lora_config,
    merge_adapter,
    train_dpo,
    trl_args,
)
from training.dpo_config import DPOConfig
from training.export import export_trl
from training.pairs import DPOExample, trl_row

COLOURS = ("red", "blue", "green", "white")
FAST = DPOConfig.world().with_overrides(batch_size=2, max_length=96, save_steps=1, learning_rate=1e-3)


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory):
    torch.set_num_threads(2)
    return make_tiny_llava(tmp_path_factory.mktemp("tiny_llava"))


@pytest.fixture(scope="module")
def pairs():
    return [
        DPOExample(
            image=Image.new("RGB", (20, 16), colour),
            prompt="<image>\nDescribe the image in detail.",
            chosen=f"a {colour} wall and a dog.",
            rejected="a dog and a cat on a bus near a tree.",
        )
        for colour in COLOURS
    ]


def test_one_step_logs_metrics_and_saves_adapter(tiny_llava, pairs, tmp_path):
    logs = []
    result = train_dpo(tiny_llava, pairs, FAST.with_overrides(max_steps=1), tmp_path, on_log=logs.append)
    assert [record["step"] for record in logs] == [1]
    for key in (
        "loss",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "rewards/accuracies",
        "epoch",
    ):
        assert key in logs[0]
    assert logs[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # policy == reference at step 1: loss = ln 2
    assert result.steps == 1 and result.resumed_from_step == 0
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert not list((tmp_path / "adapter").glob("*.bin"))

    rerun_logs = []
    again = train_dpo(tiny_llava, pairs, FAST.with_overrides(max_steps=1), tmp_path, on_log=rerun_logs.append)
    assert again == result  # a finished round is not trained again...
    assert rerun_logs == logs  # ...but its step log is replayed, so a second database gets the metrics too
    assert json.loads((tmp_path / "result.json").read_text())["steps"] == 1

    fresh_logs = []
    fresh = train_dpo(
        tiny_llava, pairs, FAST.with_overrides(max_steps=1), tmp_path, on_log=fresh_logs.append, resume=False
    )
    assert [record["step"] for record in fresh_logs] == [1] and fresh.resumed_from_step == 0


def test_lora_targets_only_language_model_linears(tiny_llava, pairs, tmp_path):
    train_dpo(tiny_llava, pairs, FAST.with_overrides(max_steps=1), tmp_path)
    names = load_file(tmp_path / "adapter" / "adapter_model.safetensors").keys()
    assert names and all(".language_model." in name for name in names)
    assert {name.split(".")[-3] for name in names} == set(FAST.lora_target_modules)


class _CrashAfterSaving(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt("simulated interruption")


@pytest.mark.parametrize("mdpo", [False, True], ids=["dpo", "mdpo"])
def test_interrupted_training_resumes_from_last_checkpoint(tiny_llava, pairs, tmp_path, mdpo):
    cfg = FAST.with_overrides(max_steps=4)
    if mdpo:  # the crops must repeat on resume for the weights to match
        cfg = cfg.with_overrides(image_condition_weight=1.0, anchor_weight=1.0)
        pairs = [DPOExample(_quartered(c), p.prompt, p.chosen, p.rejected) for c, p in zip(COLOURS, pairs)]
    straight = train_dpo(tiny_llava, pairs, cfg, tmp_path / "straight")

    with pytest.raises(KeyboardInterrupt):
        train_dpo(tiny_llava, pairs, cfg, tmp_path / "resumed", callbacks=[_CrashAfterSaving(2)])
    assert (tmp_path / "resumed" / "checkpoints" / "checkpoint-2").is_dir()
    assert not (tmp_path / "resumed" / "result.json").exists()

    logs = []
    resumed = train_dpo(tiny_llava, pairs, cfg, tmp_path / "resumed", on_log=logs.append)
    assert resumed.resumed_from_step == 2
    assert [record["step"] for record in logs] == [1, 2, 3, 4]  # 1-2 replayed from steps.jsonl, 3-4 trained
    step_file = (tmp_path / "resumed" / "steps.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in step_file] == [1, 2, 3, 4]
    assert resumed.steps == straight.steps == 4
    straight_weights = load_file(f"{straight.adapter_dir}/adapter_model.safetensors")
    resumed_weights = load_file(f"{resumed.adapter_dir}/adapter_model.safetensors")
    assert straight_weights.keys() == resumed_weights.keys()
    for name, weight in straight_weights.items():
        torch.testing.assert_close(resumed_weights[name], weight, rtol=0, atol=1e-6)


@pytest.mark.parametrize("damage", ["no_state", "truncated_state"])
def test_a_checkpoint_cut_short_by_a_kill_is_skipped_on_resume(tiny_llava, pairs, tmp_path, damage, caplog):
    """A kill while checkpoint-3 was being saved: the rerun continues from checkpoint-2 and finishes."""
    cfg = FAST.with_overrides(max_steps=4)
    with pytest.raises(KeyboardInterrupt):
        train_dpo(tiny_llava, pairs, cfg, tmp_path, callbacks=[_CrashAfterSaving(3)])
    checkpoints = tmp_path / "checkpoints"
    assert _checkpoint_names(checkpoints) == ["checkpoint-2", "checkpoint-3"]  # save_total_limit is 2
    state = checkpoints / "checkpoint-3" / "trainer_state.json"
    if damage == "no_state":
        state.unlink()
    else:
        state.write_text(state.read_text()[: len(state.read_text()) // 2])

    logs = []
    with caplog.at_level(logging.WARNING, logger="csr"):
        resumed = train_dpo(tiny_llava, pairs, cfg, tmp_path, on_log=logs.append)
    assert resumed.resumed_from_step == 2 and resumed.steps == 4
    assert [record["step"] for record in logs] == [1, 2, 3, 4]  # 1-2 replayed, 3-4 trained again
    (warning,) = [r.getMessage() for r in caplog.records if "incomplete DPO checkpoint" in r.getMessage()]
    assert f"{checkpoints / 'checkpoint-3'} (" in warning
    assert _checkpoint_names(checkpoints) == ["checkpoint-3", "checkpoint-4"]  # the rotation went on
    assert last_complete_checkpoint(checkpoints) == str(checkpoints / "checkpoint-4")


def _checkpoint_names(checkpoints):
    return sorted(p.name for p in checkpoints.glob("checkpoint-*"))


def test_only_complete_checkpoints_are_resumed_from(tmp_path):
    def checkpoint(step: int, state: str | None = "{}", adapter: bool = True):
        path = tmp_path / f"checkpoint-{step}"
        path.mkdir()
        if state is not None:
            (path / "trainer_state.json").write_text(state)
        if adapter:
            (path / "adapter_model.safetensors").write_bytes(b"")
        return path

    assert last_complete_checkpoint(tmp_path / "none") is None
    complete = checkpoint(2)
    checkpoint(10)
    cut = [checkpoint(11, state=None), checkpoint(12, state='{"global_step": 1'), checkpoint(13, adapter=False)]
    (tmp_path / "checkpoint-x").mkdir()  # not the Trainer's; left alone
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")  # newest by step, not by name
    assert not any(path.exists() for path in cut) and complete.is_dir() and (tmp_path / "checkpoint-x").is_dir()
    for path in (tmp_path / "checkpoint-10", complete):
        (path / "trainer_state.json").unlink()
    assert last_complete_checkpoint(tmp_path) is None
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-x"]


def _greedy(model, processor, image):
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe the image."}]}],
        add_generation_prompt=True,
    )
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=6, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
    return out.sequences[0, inputs["input_ids"].shape[1] :], torch.stack(out.logits)


def test_merged_model_generates_like_adapter_on_base(tiny_llava, pairs, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    trained = train_dpo(
        tiny_llava, pairs, FAST.with_overrides(max_steps=2, learning_rate=1e-2), tmp_path / "r1"
    )
    merged_dir = merge_adapter(tiny_llava, trained.adapter_dir, tmp_path / "merged")
    assert (merged_dir / "model.safetensors").is_file() and (merged_dir / "processor_config.json").is_file()

    processor = AutoProcessor.from_pretrained(merged_dir)
    load = AutoModelForImageTextToText.from_pretrained
    merged = load(merged_dir).eval()
    with_adapter = PeftModel.from_pretrained(load(tiny_llava), trained.adapter_dir).eval()
    base = load(tiny_llava).eval()
    image = pairs[0].image

    merged_tokens, merged_logits = _greedy(merged, processor, image)
    adapter_tokens, adapter_logits = _greedy(with_adapter, processor, image)
    _, base_logits = _greedy(base, processor, image)
    assert merged_tokens.tolist() == adapter_tokens.tolist()
    torch.testing.assert_close(merged_logits, adapter_logits, rtol=1e-4, atol=1e-5)
    assert (merged_logits[0] - base_logits[0]).abs().max() > 1e-3  # the adapter changed the model


def test_export_loads_with_datasets_and_trains_one_dpo_step(tiny_llava, pairs, tmp_path):
    from datasets import load_dataset
    from trl import DPOTrainer

    path = export_trl(pairs, tmp_path / "export" / "pairs.parquet")
    dataset = load_dataset("parquet", data_files=str(path), split="train", cache_dir=str(tmp_path / "cache"))
    assert dataset.column_names == ["images", "prompt", "chosen", "rejected"]
    assert dataset[1]["images"][0].getpixel((0, 0)) == (0, 0, 255)
    assert dataset[1]["prompt"] == [{"role": "user", "content": "Describe the image in detail."}]
    assert dataset[1]["chosen"] == [{"role": "assistant", "content": "a blue wall and a dog."}]

    cfg = FAST.with_overrides(max_steps=1)
    model, processor = load_model_and_processor(tiny_llava, cfg)
    trainer = DPOTrainer(
        model=model,
        args=trl_args(cfg, tmp_path / "trl"),
        train_dataset=dataset,
        processing_class=processor,
        peft_config=lora_config(cfg, model),
    )
    trainer.train()
    assert trainer.state.global_step == 1
    (step_log,) = [log for log in trainer.state.log_history if "loss" in log]
    assert step_log["loss"] == pytest.approx(0.6931, abs=1e-3)


def test_lora_layers_put_adapters_in_the_chosen_decoder_layers_only(tiny_llava, pairs, tmp_path):
    cfg = FAST.with_overrides(max_steps=1, lora_layers=(-1,), lora_target_modules=("up_proj", "down_proj"))
    result = train_dpo(tiny_llava, pairs, cfg, tmp_path)
    adapted = {key.split(".lora_")[0] for key in load_file(f"{result.adapter_dir}/adapter_model.safetensors")}
    assert adapted == {  # the tiny LLaVA has 2 decoder layers: -1 is layers.1
        "base_model.model.model.language_model.layers.1.mlp.up_proj",
        "base_model.model.model.language_model.layers.1.mlp.down_proj",
    }


class _FirstBatch(TrainerCallback):
    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        self.batch = next(iter(train_dataloader))


def test_dpo_sees_where_each_response_stops(tiny_llava, pairs, tmp_path):
    """The last completion token of every chosen and rejected sequence is EOS: DPO learns when to stop."""
    grab = _FirstBatch()
    train_dpo(tiny_llava, pairs, FAST.with_overrides(max_steps=1), tmp_path, callbacks=[grab])
    eos = AutoProcessor.from_pretrained(tiny_llava).tokenizer.eos_token_id
    ids, completion = grab.batch["input_ids"], grab.batch["completion_mask"].bool()
    assert len(ids) == 2 * FAST.batch_size  # chosen rows, then rejected rows
    for row, mask in zip(ids, completion):
        last = mask.nonzero().max()
        assert row[last] == eos and (row[mask] == eos).sum() == 1


def test_trl_rows_close_responses_with_eos_once():
    pair = DPOExample(Image.new("RGB", (4, 4)), "<image>\nDescribe.", chosen="a cat.", rejected="a dog.</s>")
    row = trl_row(pair, eos_token="</s>")
    assert row["chosen"][0]["content"] == "a cat.</s>" and row["rejected"][0]["content"] == "a dog.</s>"
    assert trl_row(pair)["chosen"][0]["content"] == "a cat."


def test_image_conditioned_terms_add_two_ln2_at_the_first_step(tiny_llava, pairs, tmp_path):
    """Policy == reference at step 1: DPO, the conditional and the anchor term are each ln 2, margins 0."""
    cfg = FAST.with_overrides(max_steps=1, image_condition_weight=1.0, anchor_weight=1.0)
    logs = []
    train_dpo(tiny_llava, pairs, cfg, tmp_path, on_log=logs.append)
    assert logs[0]["loss"] == pytest.approx(3 * 0.6931, abs=3e-3)
    assert logs[0]["rewards/image_margins"] == pytest.approx(0.0, abs=1e-5)


def _quartered(colour: str) -> Image.Image:
    """The colour in the top-left quarter, black elsewhere: a small crop rarely looks like the whole."""
    image = Image.new("RGB", (20, 16), "black")
    image.paste(colour, (0, 0, 10, 8))
    return image


def test_image_conditioned_training_learns_to_prefer_the_real_image(tiny_llava, pairs, tmp_path):
    cfg = FAST.with_overrides(max_steps=6, image_condition_weight=1.0, learning_rate=5e-3)
    quartered = [DPOExample(_quartered(c), p.prompt, p.chosen, p.rejected) for c, p in zip(COLOURS, pairs)]
    logs = []
    train_dpo(tiny_llava, quartered, cfg, tmp_path, on_log=logs.append)
    assert logs[-1]["rewards/image_margins"] > 0.05
    assert logs[-1]["rewards/image_margins"] > logs[0]["rewards/image_margins"]


def test_crop_boxes_keep_at_most_the_set_share_and_repeat_for_a_seed():
    boxes = [crop_box(i, seed=3, max_keep=0.2) for i in range(200)]
    for left, top, right, bottom in boxes:
        assert 0 <= left < right <= 1 and 0 <= top < bottom <= 1
        assert 0.05 - 1e-9 <= (right - left) * (bottom - top) <= 0.2 + 1e-9
    assert boxes == [crop_box(i, seed=3, max_keep=0.2) for i in range(200)]
    assert boxes != [crop_box(i, seed=4, max_keep=0.2) for i in range(200)]
    cropped = apply_crop(_quartered("red"), [0.0, 0.0, 0.25, 0.25])
    assert cropped.size == (20, 16) and set(cropped.getdata()) == {(255, 0, 0)}


def test_lora_dropout_takes_effect(tiny_llava, pairs, tmp_path):
    """TRL zeroes every dropout by default, LoRA's too; csr turns that off so `lora_dropout` means something."""
    adapters = {}
    for dropout in (0.0, 0.5):
        result = train_dpo(tiny_llava, pairs, FAST.with_overrides(max_steps=1, lora_dropout=dropout),
                           tmp_path / str(dropout))
        adapters[dropout] = load_file(f"{result.adapter_dir}/adapter_model.safetensors")
    assert any(not torch.equal(adapters[0.0][name], adapters[0.5][name]) for name in adapters[0.0])
