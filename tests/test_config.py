import pytest

from flows.config import build_config, config_dict, load_config


def test_default_config_is_the_miniature_world_with_paper_search():
    cfg = load_config()
    assert cfg.prompts.source == "world" and cfg.model.path == "world"
    assert (cfg.search.num_token_beams, cfg.search.num_beam_groups, cfg.search.diversity_penalty) == (5, 5, 3.0)
    assert (cfg.search.keep_top, cfg.search.keep_bottom, cfg.reward.lam) == (1, 2, 0.9)


def test_overrides_are_typed_and_applied_last():
    cfg = load_config(overrides=["reward.lam=0.5", "search.num_token_beams=4", "search.num_beam_groups=2",
                                 "rounds=2", "eval.pope_splits=[random]"])
    assert cfg.reward.lam == 0.5 and cfg.search.num_token_beams == 4 and cfg.rounds == 2
    assert cfg.eval.pope_splits == ("random",)


def test_int_and_exponent_strings_are_accepted_for_a_float_field():
    assert load_config(overrides=["reward.lam=1"]).reward.lam == 1.0
    assert load_config(overrides=["dpo.learning_rate=3e-4"]).dpo.learning_rate == 3e-4


@pytest.mark.parametrize("override, message", [
    ("reward.lam=1.5", "reward.lam: must be in [0, 1], got 1.5"),
    ("reward.lam=-0.1", "reward.lam: must be in [0, 1]"),
    ("search.nope=1", "search: unknown key(s) nope"),
    ("nope.x=1", "unknown config section 'nope'"),
    ("prompts.n_per_round=-3", "prompts.n_per_round: must be positive, got -3"),
    ("search.num_token_beams=abc", "search.num_token_beams: must be of type int"),
    ("search.num_beam_groups=2", "search.num_beam_groups: must divide the number of beams (5), got 2"),
    ("dpo.device=tpu", "dpo.device: must be one of"),
    ("world.batch_size=0", "world.batch_size: must be > 0, got 0"),
    ("rounds", "--set expects key=value"),
    ("a.b.c=1", "--set key must be 'key' or 'section.key'"),
])
def test_invalid_settings_raise_a_clear_value_error(override, message):
    with pytest.raises(ValueError) as info:
        load_config(overrides=[override])
    assert str(info.value).startswith(message), str(info.value)  # one `section.field:` prefix, not two


def test_presets_and_yaml_files(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("dpo: {preset: paper}\nworld: {preset: tiny, seed: 3}\n")
    cfg = load_config([path])
    assert cfg.dpo.lora_r == 128 and cfg.dpo.learning_rate == 1e-7
    assert cfg.world.seed == 3 and cfg.world.n_train_scenes < 1000


def test_unknown_preset_and_missing_file():
    with pytest.raises(ValueError, match="unknown preset"):
        build_config({"dpo": {"preset": "nope"}})
    with pytest.raises(ValueError, match="config file not found"):
        load_config(["/nonexistent.yaml"])


def test_config_dict_is_plain_json_data():
    data = config_dict(load_config())
    assert data["reward"]["lam"] == 0.9 and isinstance(data["eval"]["pope_splits"], list)
