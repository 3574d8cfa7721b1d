"""User model dirs are checked before any work: config and complete safetensors weights, no pickles, no shard
missing, no CUDA that is not there; and the loaders refuse weights that would leave parameters random."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from csr_core.adapters.relevance import OpenClipRelevance
from csr_core.adapters.vlm import MissingWeightsError, VLMAdapter
from csr_core.validation import ConfigError
from csr_testing.tiny_models import make_tiny_clip, make_tiny_llava
from flows.cli import main as csr
from flows.config import load_config
from flows.inputs import check_safetensors, check_user_inputs


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory):
    torch.set_num_threads(2)
    return make_tiny_llava(tmp_path_factory.mktemp("llava"))


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return make_tiny_clip(tmp_path_factory.mktemp("clip"))


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _check(**paths: Path):
    overrides = [f"{field.replace('__', '.')}={path}" for field, path in paths.items()]
    return check_user_inputs(load_config(overrides=overrides))


def _small_vlm_dir(root: Path) -> Path:
    """config.json + a small (not loadable, but well-formed) model.safetensors: enough for the file checks."""
    root.mkdir()
    (root / "config.json").write_text(json.dumps({"model_type": "llava", "text_config": {"num_hidden_layers": 2}}))
    save_file({"a": torch.zeros(100), "b": torch.ones(2, 25)}, root / "model.safetensors")
    return root


def _truncate(path: Path, keep: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:keep])


# --- the file check ----------------------------------------------------------------------------------------
def test_a_complete_safetensors_file_passes_and_every_cut_is_caught(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"a": torch.zeros(100), "b": torch.ones(2, 25)}, path)
    check_safetensors(path, "model.path")
    full = path.stat().st_size
    (header_len,) = struct.unpack("<Q", path.read_bytes()[:8])
    assert full == 8 + header_len + 150 * 4

    _truncate(path, full - 1)  # one byte of the last tensor gone
    with pytest.raises(ConfigError) as error:
        check_safetensors(path, "model.path")
    assert str(error.value) == f"model.path: truncated safetensors file {path} ({full - 1} of {full} bytes)"

    _truncate(path, 8 + header_len // 2)  # cut inside the JSON header
    with pytest.raises(ConfigError, match=rf"truncated safetensors file .* \({8 + header_len // 2} of at least "
                                          rf"{8 + header_len} bytes\)"):
        check_safetensors(path, "model.path")

    _truncate(path, 5)  # not even the header length
    with pytest.raises(ConfigError, match=r"truncated safetensors file .* \(5 of at least 8 bytes\)"):
        check_safetensors(path, "model.path")


def test_a_file_that_is_not_safetensors_is_refused(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", 9) + b"not json!" + b"\0" * 16)
    with pytest.raises(ConfigError, match=rf"^relevance.model_dir: not a safetensors file: {path} \(bad header"):
        check_safetensors(path, "relevance.model_dir")
    torch.save({"a": torch.zeros(3)}, path)  # a pickle under a safetensors name
    with pytest.raises(ConfigError, match="not a safetensors file"):
        check_safetensors(path, "model.path")


# --- the VLM dir -------------------------------------------------------------------------------------------
def test_complete_user_model_dirs_pass(tiny_llava, tiny_clip):
    inputs = _check(model__path=tiny_llava, relevance__model_dir=tiny_clip)
    assert (inputs.model_dir, inputs.scorer_dir) == (str(tiny_llava), str(tiny_clip))


def test_a_vlm_dir_without_config_or_weights_is_refused(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match=rf"^model.path: no config.json in {empty} "):
        _check(model__path=empty)
    (empty / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match=rf"^model.path: no weights in {empty}: expected model.safetensors or "
                                          r"model.safetensors.index.json \(csr loads safetensors only\)$"):
        _check(model__path=empty)


def test_pickle_weights_are_refused(tmp_path):
    model = tmp_path / "pickled"
    model.mkdir()
    (model / "config.json").write_text("{}")
    torch.save({"w": torch.zeros(3)}, model / "pytorch_model.bin")
    with pytest.raises(ConfigError) as error:
        _check(model__path=model)
    assert str(error.value) == (f"model.path: {model} holds pickle weights (pytorch_model.bin), not model.safetensors "
                                "or model.safetensors.index.json: csr loads safetensors only")


def test_a_truncated_vlm_weights_file_is_refused(tmp_path):
    model = _small_vlm_dir(tmp_path / "m")
    _check(model__path=model)
    weights = model / "model.safetensors"
    _truncate(weights, weights.stat().st_size - 100)
    with pytest.raises(ConfigError, match=rf"^model.path: truncated safetensors file {weights} "):
        _check(model__path=model)


def test_sharded_weights_need_every_listed_shard_complete(tiny_llava, tmp_path):
    from transformers import AutoModelForImageTextToText

    sharded = tmp_path / "sharded"
    AutoModelForImageTextToText.from_pretrained(tiny_llava).save_pretrained(sharded, max_shard_size="100KB")
    index = sharded / "model.safetensors.index.json"
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    assert len(shards) >= 2 and not (sharded / "model.safetensors").exists()
    _check(model__path=sharded)

    _truncate(sharded / shards[0], 100)
    with pytest.raises(ConfigError, match=rf"^model.path: truncated safetensors file {sharded / shards[0]} "):
        _check(model__path=sharded)
    (sharded / shards[-1]).unlink()
    with pytest.raises(ConfigError, match=rf"^model.path: missing shard {shards[-1]} listed in {index}$"):
        _check(model__path=sharded)


# --- the open_clip dir -------------------------------------------------------------------------------------
def test_an_open_clip_dir_needs_its_config_and_complete_safetensors(tiny_clip, tmp_path):
    scorer = _copy(tiny_clip, tmp_path / "clip")
    weights = scorer / "open_clip_model.safetensors"
    _truncate(weights, weights.stat().st_size // 2)
    with pytest.raises(ConfigError, match=rf"^relevance.model_dir: truncated safetensors file {weights} "):
        _check(relevance__model_dir=scorer)

    weights.unlink()
    with pytest.raises(ConfigError, match=rf"^relevance.model_dir: no weights in {scorer}: expected "
                                          r"open_clip_model.safetensors"):
        _check(relevance__model_dir=scorer)
    torch.save({"w": torch.zeros(3)}, scorer / "open_clip_pytorch_model.bin")
    with pytest.raises(ConfigError, match="holds pickle weights .open_clip_pytorch_model.bin.*safetensors only"):
        _check(relevance__model_dir=scorer)

    (scorer / "open_clip_config.json").unlink()
    with pytest.raises(ConfigError, match=rf"^relevance.model_dir: no open_clip_config.json in {scorer} "):
        _check(relevance__model_dir=scorer)


# --- through the CLI, before any work ----------------------------------------------------------------------
def _refused(capsys, db: Path, *settings: str) -> str:
    args = ["run", "--db", str(db)]
    for setting in settings:
        args += ["--set", setting]
    assert csr(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("csr: error: "), err
    assert not db.exists()
    return err[0].removeprefix("csr: error: ")


def test_the_cli_refuses_broken_weights_before_any_work(tiny_clip, tmp_path, capsys):
    db = tmp_path / "never.duckdb"
    model = _small_vlm_dir(tmp_path / "m")
    weights = model / "model.safetensors"
    full = weights.stat().st_size
    _truncate(weights, full - 7)
    line = _refused(capsys, db, f"model.path={model}")
    assert line == f"model.path: truncated safetensors file {weights} ({full - 7} of {full} bytes)"

    weights.unlink()
    torch.save({"w": torch.zeros(3)}, model / "pytorch_model.bin")
    assert "csr loads safetensors only" in _refused(capsys, db, f"model.path={model}")

    empty = tmp_path / "empty"
    empty.mkdir()
    assert _refused(capsys, db, f"model.path={empty}").startswith(f"model.path: no config.json in {empty}")

    scorer = _copy(tiny_clip, tmp_path / "clip")
    (scorer / "open_clip_model.safetensors").unlink()
    assert _refused(capsys, db, f"relevance.model_dir={scorer}").startswith(
        f"relevance.model_dir: no weights in {scorer}")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("field", ["runtime.device", "dpo.device"])
def test_the_cli_refuses_cuda_that_is_not_there(field, tmp_path, capsys):
    db = tmp_path / "never.duckdb"
    assert _refused(capsys, db, f"{field}=cuda") == (
        f"{field}: cuda requested but torch finds no CUDA device (torch.cuda.is_available() is False); "
        "use auto or cpu")


# --- the loaders -------------------------------------------------------------------------------------------
def test_a_vlm_checkpoint_lacking_a_tensor_is_refused_by_the_loader(tiny_llava, tmp_path):
    VLMAdapter.from_pretrained(tiny_llava)  # the complete dir loads
    model = _copy(tiny_llava, tmp_path / "llava")
    state = load_file(model / "model.safetensors")
    (stored,) = [name for name in state if "layers.1.mlp.up_proj" in name]  # the file's key naming may differ
    del state[stored]
    dropped = "model.language_model.layers.1.mlp.up_proj.weight"  # the model's name for it
    save_file(state, model / "model.safetensors", metadata={"format": "pt"})
    _check(model__path=model)  # a well-formed file: only loading can tell a tensor is missing
    with pytest.raises(MissingWeightsError) as error:
        VLMAdapter.from_pretrained(model)
    assert str(error.value) == (f"{model}: the weights lack 1 of the model's parameters ({dropped}); "
                                "they would be initialised randomly")


def _text_features(scorer_dir: Path) -> torch.Tensor:
    return OpenClipRelevance.from_pretrained(scorer_dir).encode_texts(["a red cup", "a dog"])


def test_an_open_clip_dir_without_its_weights_file_is_refused_by_the_loader(tiny_clip, tmp_path):
    scorer = _copy(tiny_clip, tmp_path / "clip")
    (scorer / "open_clip_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=rf"^{scorer}: no open_clip_model.safetensors; the open_clip model "
                                                r"would be initialised randomly"):
        OpenClipRelevance.from_pretrained(scorer)


def test_an_open_clip_checkpoint_lacking_a_tensor_is_refused_by_the_loader(tiny_clip, tmp_path):
    scorer = _copy(tiny_clip, tmp_path / "clip")
    state = load_file(scorer / "open_clip_model.safetensors")
    del state["text_projection"]
    save_file(state, scorer / "open_clip_model.safetensors")
    with pytest.raises(RuntimeError, match='Missing key.*"text_projection"'):
        OpenClipRelevance.from_pretrained(scorer)


def test_the_open_clip_loader_uses_open_clip_model_safetensors_over_other_weights(tiny_clip, tmp_path):
    scorer = _copy(tiny_clip, tmp_path / "clip")
    other = make_tiny_clip(tmp_path / "other", seed=1)
    shutil.copy(other / "open_clip_model.safetensors", scorer / "a.safetensors")  # sorts first by name
    shutil.copy(other / "open_clip_model.safetensors", scorer / "model.safetensors")
    expected, decoy = _text_features(tiny_clip), _text_features(other)
    assert not torch.allclose(expected, decoy)
    torch.testing.assert_close(_text_features(scorer), expected)


def test_an_unsupported_model_family_is_refused_before_any_work_with_one_line(tmp_path, capsys):
    model = _small_vlm_dir(tmp_path / "m")
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "model_type": "blip-2"}))
    line = _refused(capsys, tmp_path / "never.duckdb", f"model.path={model}")
    assert line == (f"model.path: {model}: model_type 'blip-2' is not a supported VLM family; supported: "
                    "llava, llava_next, llava_onevision, qwen2_vl, qwen2_5_vl, qwen3_vl, gemma3, idefics3, smolvlm")
