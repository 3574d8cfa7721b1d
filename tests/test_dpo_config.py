"""DPO settings: presets and validation (pure, no torch)."""

import re

import pytest

from training.dpo_config import DPOConfig


def test_paper_preset_follows_the_papers_script():
    cfg = DPOConfig.paper()
    assert (cfg.lora_r, cfg.lora_alpha, cfg.learning_rate, cfg.beta, cfg.num_epochs) == (
        128,
        256,
        1e-7,
        0.1,
        1.0,
    )
    assert (cfg.batch_size, cfg.grad_accum, cfg.max_length, cfg.lr_scheduler) == (1, 1, 1024, "cosine")


def test_world_preset_is_separate_and_cpu():
    world = DPOConfig.world()
    assert world != DPOConfig.paper()
    assert world.device == "cpu" and not world.bf16 and not world.gradient_checkpointing
    assert (world.lora_target_modules, world.lora_layers) == (("gate_proj", "up_proj", "down_proj"), (-1,))


def test_lora_regex_targets_language_model_linears_only():
    pattern = DPOConfig().lora_target_regex()
    assert re.fullmatch(pattern, "model.language_model.layers.0.self_attn.q_proj")
    assert re.fullmatch(pattern, "model.language_model.layers.11.mlp.down_proj")
    assert not re.fullmatch(pattern, "model.vision_tower.vision_model.encoder.layers.0.self_attn.q_proj")
    assert not re.fullmatch(pattern, "model.multi_modal_projector.linear_1")
    assert not re.fullmatch(pattern, "lm_head")
    anywhere = DPOConfig(lora_scope="").lora_target_regex()
    assert re.fullmatch(anywhere, "model.vision_tower.vision_model.encoder.layers.0.self_attn.q_proj")


def test_lora_layers_narrow_the_regex_to_some_decoder_layers():
    last = DPOConfig(lora_layers=[-1], lora_target_modules=["gate_proj", "down_proj"])
    assert last.lora_layers == (-1,)
    pattern = last.lora_target_regex(num_layers=3)
    assert re.fullmatch(pattern, "model.language_model.layers.2.mlp.gate_proj")
    assert re.fullmatch(pattern, "model.language_model.layers.2.mlp.down_proj")
    assert not re.fullmatch(pattern, "model.language_model.layers.2.mlp.up_proj")
    assert not re.fullmatch(pattern, "model.language_model.layers.1.mlp.gate_proj")
    assert not re.fullmatch(pattern, "model.language_model.layers.12.mlp.gate_proj")
    assert not re.fullmatch(DPOConfig(lora_layers=[2]).lora_target_regex(3),
                            "model.vision_tower.vision_model.encoder.layers.2.self_attn.q_proj")
    assert DPOConfig(lora_layers=[0, -1, 2]).resolve_lora_layers(3) == (0, 2)


def test_lora_layers_out_of_range_or_unresolved_are_refused():
    with pytest.raises(ValueError, match=r"lora_layers: \[3, -4\] out of range .* 3 layers"):
        DPOConfig(lora_layers=[0, 3, -4]).lora_target_regex(3)
    with pytest.raises(ValueError, match="number of decoder layers"):
        DPOConfig(lora_layers=[0]).lora_target_regex()


@pytest.mark.parametrize("bad", ["2", 2, [True], [1.5]])
def test_lora_layers_must_be_a_list_of_indices(bad):
    with pytest.raises(ValueError, match="lora_layers"):
        DPOConfig(lora_layers=bad)


def test_lora_scope_must_be_a_module_name():
    with pytest.raises(ValueError, match="lora_scope"):
        DPOConfig(lora_scope="layers.2")


def test_lists_from_yaml_become_tuples():
    assert DPOConfig(lora_target_modules=["q_proj", "v_proj"]).lora_target_modules == ("q_proj", "v_proj")


def test_loss_types_from_a_string_or_a_list_with_one_weight_each():
    assert DPOConfig(loss_type="ipo").loss_type == ("ipo",)
    rpo = DPOConfig(loss_type=["sigmoid", "sft"], loss_weights=[1, 0.5])
    assert (rpo.loss_type, rpo.loss_weights) == (("sigmoid", "sft"), (1.0, 0.5))
    with pytest.raises(ValueError, match="loss_weights"):
        DPOConfig(loss_type=["sigmoid", "sft"], loss_weights=[1.0])
    with pytest.raises(ValueError, match="loss_weights"):
        DPOConfig(loss_weights=[-1.0])


def test_lora_dropout_with_disable_dropout_is_refused():
    with pytest.raises(ValueError, match="lora_dropout"):
        DPOConfig(lora_dropout=0.05, disable_dropout=True)
    assert DPOConfig(lora_dropout=0.0, disable_dropout=True).disable_dropout


def test_image_conditioning_is_off_unless_a_weight_is_set():
    assert not DPOConfig().image_conditioned
    assert DPOConfig(image_condition_weight=1.0).image_conditioned
    assert DPOConfig(anchor_weight=1.0).image_conditioned


@pytest.mark.parametrize(
    "field, value",
    [
        ("beta", 0.0),
        ("learning_rate", -1e-5),
        ("batch_size", 0),
        ("lora_r", 0),
        ("lora_dropout", 1.0),
        ("warmup_ratio", -0.1),
        ("max_steps", 0),
        ("max_steps", -2),
        ("lora_target_modules", ()),
        ("lora_target_modules", "q_proj"),
        ("lora_target_modules", ("q_proj", "a.b")),
        ("lora_target_modules", ("q_proj", "lm_head")),  # TRL reads lm_head.weight directly
        ("device", "tpu"),
        ("lr_scheduler", "exotic"),
        ("weight_decay", -0.1),
        ("loss_type", ("sigmoid", "kto")),
        ("loss_type", ()),
        ("image_condition_weight", -1.0),
        ("anchor_weight", -0.5),
        ("image_crop_keep", 0.0),
        ("image_crop_keep", 1.0),
    ],
)
def test_bad_values_raise_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        DPOConfig(**{field: value})
