"""Relevance scorers beyond open_clip: transformers CLIP, SigLIP and SigLIP 2 dirs give the cosine of a direct
`get_image_features`/`get_text_features` forward, the dir's contents pick the scorer, and a dir csr cannot read
is refused with one line before any work."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from csr_core.adapters.relevance import HFClipRelevance, OpenClipRelevance, load_relevance_scorer
from csr_core.adapters.relevance_dirs import UnknownScorerDirError, scorer_kind
from csr_core.adapters.vlm import MissingWeightsError
from csr_core.config import RelevanceConfig, RuntimeConfig
from csr_core.validation import ConfigError
from csr_testing.tiny_models import make_tiny_clip, make_tiny_hf_clip, make_tiny_siglip
from flows.cli import main as csr
from flows.config import load_config
from flows.inputs import check_user_inputs

KINDS = ("hf-clip", "hf-siglip", "hf-siglip2")
MODEL_CLASSES = {"hf-clip": "CLIPModel", "hf-siglip": "SiglipModel", "hf-siglip2": "Siglip2Model"}
TEXTS = ["A red cup on the table.", "a dog", "two cats sitting near a window . " * 12, "The Sky", "a dog"]
INDEX = [2, 0, 2, 1, 0]  # image 2 twice, image 0 twice with the same text


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    sizes = [(40, 48), (32, 32), (64, 24)]  # resized and cropped or patched differently by each processor
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


IMAGES = _images()


@pytest.fixture(scope="module")
def scorer_dirs(tmp_path_factory) -> dict[str, Path]:
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("scorers")
    return {
        "open_clip": make_tiny_clip(root / "open_clip"),
        "hf-clip": make_tiny_hf_clip(root / "hf_clip"),
        "hf-siglip": make_tiny_siglip(root / "siglip"),
        "hf-siglip2": make_tiny_siglip(root / "siglip2", model_type="siglip2"),
    }


@pytest.fixture(scope="module")
def scorers(scorer_dirs) -> dict:
    return {kind: load_relevance_scorer(path) for kind, path in scorer_dirs.items()}


def _direct_cosine(model_dir: Path, kind: str, image: Image.Image, text: str) -> float:
    """One image, one text, through a separately loaded model and the dir's own processor components."""
    import transformers

    model = getattr(transformers, MODEL_CLASSES[kind]).from_pretrained(model_dir).eval()
    processor = transformers.AutoProcessor.from_pretrained(model_dir)
    max_length = model.config.text_config.max_position_embeddings
    pixels = processor.image_processor(images=[image.convert("RGB")], return_tensors="pt")
    if kind == "hf-clip":  # a single text needs no padding
        tokens = processor.tokenizer([text], truncation=True, max_length=max_length, return_tensors="pt")
        text_inputs = {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}
    else:  # as trained: ids padded to the full length, no attention mask
        tokens = processor.tokenizer([text], padding="max_length", truncation=True, max_length=max_length,
                                     return_tensors="pt")
        text_inputs = {"input_ids": tokens["input_ids"]}
    with torch.no_grad():
        image_features = model.get_image_features(**pixels).pooler_output
        text_features = model.get_text_features(**text_inputs).pooler_output
    image_features = image_features / image_features.norm(dim=-1, keepdim=True)
    text_features = text_features / text_features.norm(dim=-1, keepdim=True)
    return float((image_features * text_features).sum())


# --- the numbers -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_cosines_equal_a_direct_forward_per_pair(kind, scorers, scorer_dirs):
    batched = scorers[kind].cosine(IMAGES, TEXTS, INDEX)
    assert len(batched) == len(TEXTS)
    direct = [_direct_cosine(scorer_dirs[kind], kind, IMAGES[i], text) for text, i in zip(TEXTS, INDEX)]
    np.testing.assert_allclose(batched, direct, atol=1e-5, rtol=0)
    assert batched[1] == pytest.approx(batched[4], abs=1e-6)  # the same pair twice
    assert len(set(np.round(batched[:4], 6))) == 4  # different pairs differ: the scores are not constant


@pytest.mark.parametrize("kind", KINDS)
def test_batches_smaller_than_the_input_change_nothing(kind, scorers):
    scorer = scorers[kind]
    whole = scorer.cosine(IMAGES, TEXTS, INDEX)
    np.testing.assert_allclose(scorer.cosine(IMAGES, TEXTS, INDEX, batch_size=2), whole, atol=1e-6, rtol=0)
    np.testing.assert_allclose(scorer.cosine(IMAGES, TEXTS, INDEX, batch_size=1), whole, atol=1e-6, rtol=0)
    torch.testing.assert_close(scorer.encode_images(IMAGES, batch_size=2), scorer.encode_images(IMAGES))
    assert scorer.cosine(IMAGES, [], []) == []
    with pytest.raises(ValueError, match="2 texts but 1 image indices"):
        scorer.cosine(IMAGES, ["a", "b"], [0])


def test_texts_are_cut_to_the_model_length_and_siglip_pads_to_it(scorers):
    clip, siglip, siglip2 = (scorers[kind] for kind in KINDS)
    long, short = TEXTS[2], TEXTS[1]
    clip_ids = clip.text_inputs([long, short])
    assert clip_ids["input_ids"].shape == (2, 77) and clip.max_length == 77
    assert clip_ids["attention_mask"][1].sum() < 77  # CLIP: padded to the longest, with its mask
    for scorer in (siglip, siglip2):
        inputs = scorer.text_inputs([long, short])
        assert set(inputs) == {"input_ids"} and inputs["input_ids"].shape == (2, 64)
        ids = inputs["input_ids"][1].tolist()
        assert ids[-1] == scorer.tokenizer.pad_token_id  # padded on the right, as the tokenizer says
        assert scorer.tokenizer.eos_token_id in ids  # and the text ends with EOS
    # SigLIP 2's tokenizer lower-cases: the case of a text changes nothing
    assert siglip2.cosine(IMAGES, ["THE SKY"], [1]) == pytest.approx(siglip2.cosine(IMAGES, ["the sky"], [1]))


# --- picking the scorer ------------------------------------------------------------------------------------
def test_the_dir_picks_the_scorer(scorers, scorer_dirs):
    assert isinstance(scorers["open_clip"], OpenClipRelevance)
    for kind, path in scorer_dirs.items():
        assert scorer_kind(path) == kind
        scorer = scorers[kind]
        assert scorer.kind == kind and scorer.name == f"{kind}:{path.name}"
        if kind != "open_clip":
            assert isinstance(scorer, HFClipRelevance)
            assert type(scorer.model).__name__ == MODEL_CLASSES[kind]


def test_a_dir_holding_no_scorer_is_named_with_what_was_expected(tmp_path, scorer_dirs):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UnknownScorerDirError, match=rf"^no open_clip_config.json in {empty} and no config.json: "
                                                    r"expected an open_clip local dir .* or a transformers "
                                                    r"CLIPModel, SiglipModel or Siglip2Model save_pretrained dir"):
        load_relevance_scorer(empty)

    vlm = tmp_path / "vlm"
    vlm.mkdir()
    (vlm / "config.json").write_text(json.dumps({"model_type": "llava"}))
    with pytest.raises(UnknownScorerDirError, match=rf"^{vlm / 'config.json'} has model_type 'llava', not clip, "
                                                    r"siglip or siglip2: expected"):
        load_relevance_scorer(vlm)
    with pytest.raises(ConfigError, match=rf"^relevance.model_dir: {vlm / 'config.json'} has model_type 'llava'"):
        _check(vlm)

    (vlm / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match=rf"^relevance.model_dir: unreadable {vlm / 'config.json'} "):
        _check(vlm)


# --- checked before any work, refused by the loader --------------------------------------------------------
def _check(scorer_dir: Path):
    return check_user_inputs(load_config(overrides=[f"relevance.model_dir={scorer_dir}"]))


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("kind", KINDS)
def test_complete_hf_scorer_dirs_pass_the_pre_run_check(kind, scorer_dirs):
    assert _check(scorer_dirs[kind]).scorer_dir == str(scorer_dirs[kind])


def test_a_broken_hf_scorer_dir_is_refused_by_the_check(scorer_dirs, tmp_path):
    scorer = _copy(scorer_dirs["hf-siglip"], tmp_path / "siglip")
    weights = scorer / "model.safetensors"
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[: size // 2])
    with pytest.raises(ConfigError, match=rf"^relevance.model_dir: truncated safetensors file {weights} "):
        _check(scorer)
    weights.unlink()
    torch.save({"w": torch.zeros(3)}, scorer / "pytorch_model.bin")
    with pytest.raises(ConfigError) as error:
        _check(scorer)
    assert str(error.value) == (f"relevance.model_dir: {scorer} holds pickle weights (pytorch_model.bin), not "
                                "model.safetensors or model.safetensors.index.json: csr loads safetensors only")


def test_the_cli_refuses_a_broken_hf_scorer_dir_before_any_work(scorer_dirs, tmp_path, capsys):
    scorer = _copy(scorer_dirs["hf-clip"], tmp_path / "clip")
    (scorer / "model.safetensors").unlink()
    db = tmp_path / "never.duckdb"
    assert csr(["run", "--db", str(db), "--set", f"relevance.model_dir={scorer}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"csr: error: relevance.model_dir: no weights in {scorer}: expected model.safetensors or "
                   "model.safetensors.index.json (csr loads safetensors only)"]
    assert not db.exists()


def test_an_hf_checkpoint_lacking_a_tensor_is_refused_by_the_loader(scorer_dirs, tmp_path):
    scorer = _copy(scorer_dirs["hf-clip"], tmp_path / "clip")
    state = load_file(scorer / "model.safetensors")
    del state["text_projection.weight"]
    save_file(state, scorer / "model.safetensors", metadata={"format": "pt"})
    _check(scorer)  # a well-formed file: only loading can tell a tensor is missing
    with pytest.raises(MissingWeightsError) as error:
        load_relevance_scorer(scorer)
    assert str(error.value) == (f"{scorer}: the weights lack 1 of the model's parameters (text_projection.weight); "
                                "they would be initialised randomly")


# --- the relevance stage -----------------------------------------------------------------------------------
def test_the_relevance_stage_scores_with_an_hf_dir_and_records_its_kind(scorers, scorer_dirs, tmp_path):
    from storage import stages
    from storage.artifacts import replace_stage_rows, rows_for, write_items
    from storage.store import close_all, open_store
    from tasks.common import model_fingerprint
    from tasks.relevance import score_relevance

    db = tmp_path / "csr.duckdb"
    store = open_store(db)
    paths = []
    for i, image in enumerate(IMAGES[:2]):
        paths.append(tmp_path / f"im{i}.png")
        image.save(paths[-1])
    replace_stage_rows(store, "prompts", "prompts-k", pd.DataFrame(
        [{"prompt_id": f"p{i}", "round": 1, "image_path": str(path), "image_sha256": None, "status": "ok",
          "instruction": "Describe.", "error": None} for i, path in enumerate(paths)]))
    sentences = {"p0": ["A red cup.", "A dog."], "p1": ["The sky.", "A red cup."]}
    nodes = pd.DataFrame([{"prompt_id": pid, "node_id": node, "parent_id": None if node == 0 else node - 1,
                           "depth": node, "text": "" if node == 0 else texts[node - 1], "token_count": 3,
                           "logprob_sum": -1.0, "score": -0.5, "cum_score": -0.5, "is_final": node == 2,
                           "finish_reason": "eos", "kept": True}
                          for pid, texts in sentences.items() for node in range(3)])
    stages.begin_stage(store, "generate_candidates", "tree-k", {}, {}, n_items=2)
    write_items(store, "tree_nodes", "tree-k", nodes, list(sentences))
    stages.finish_stage(store, "tree-k")

    scorer_dir = scorer_dirs["hf-clip"]
    scorer_key = model_fingerprint(scorer_dir)
    key = score_relevance.fn(str(db), RelevanceConfig(model_dir=str(scorer_dir), batch_size=3),
                             RuntimeConfig(progress=False), scorer_key, str(scorer_dir), "tree-k", "prompts-k")
    record = stages.get_stage(store, key)
    assert record.status == "complete" and record.config == {"scorer": scorer_key, "scorer_kind": "hf-clip"}
    rows = rows_for(store, "relevance_scores", key, order_by="prompt_id, node_id")
    texts = [text for pid in sentences for text in sentences[pid]]
    expected = scorers["hf-clip"].cosine(IMAGES[:2], texts, [0, 0, 1, 1])
    assert rows["node_id"].tolist() == [1, 2, 1, 2] and set(rows["scorer"]) == {scorer_key}
    np.testing.assert_allclose(rows["cosine"].to_numpy(), expected, atol=1e-6, rtol=0)
    close_all()


@pytest.mark.gpu
@pytest.mark.parametrize("kind", KINDS)
def test_hf_relevance_on_cuda_equals_cpu(kind, scorers, scorer_dirs):
    on_cuda = load_relevance_scorer(scorer_dirs[kind], device="cuda")
    np.testing.assert_allclose(on_cuda.cosine(IMAGES, TEXTS, INDEX), scorers[kind].cosine(IMAGES, TEXTS, INDEX),
                               atol=1e-4, rtol=0)
