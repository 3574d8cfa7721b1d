"""The GPU path: the same components and pipeline on a CUDA device, in float32 and bfloat16.

Marked `gpu` and skipped where torch sees no CUDA device (CI has none); every path here also runs on CPU in
the other test files, which these tests compare against.
"""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

from csr_core.adapters.relevance import OpenClipRelevance
from csr_core.adapters.vlm import VLMAdapter
from csr_core.tree import PromptInput, SearchConfig, build_trees, tree_signature
from csr_testing.tiny_models import make_tiny_clip, make_tiny_llava
from training.dpo_config import DPOConfig

pytestmark = pytest.mark.gpu

SEARCH = SearchConfig(num_token_beams=4, num_beam_groups=2, diversity_penalty=1.0, max_new_tokens=12, max_depth=3,
                      max_response_tokens=40)
COLOURS = ((200, 10, 10), (10, 10, 230), (20, 180, 20))


@pytest.fixture(autouse=True)
def exact_float32():
    """cuDNN convolutions (the vision towers' patch embeddings) default to TF32, which rounds like bfloat16."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    return make_tiny_llava(tmp_path_factory.mktemp("llava"))


def _prompts():
    return [PromptInput(f"p{i}", Image.new("RGB", (40, 30), colour), "<image>\nDescribe the image in detail.")
            for i, colour in enumerate(COLOURS)]


def test_sentence_tree_on_cuda_matches_cpu(llava_dir):
    on_cpu = build_trees(VLMAdapter.from_pretrained(llava_dir), _prompts(), SEARCH)
    on_cuda = build_trees(VLMAdapter.from_pretrained(llava_dir, device="cuda"), _prompts(), SEARCH)
    assert sum(len(nodes) for nodes in on_cpu.values()) > len(on_cpu) * 4  # several levels, not just roots
    for pid, nodes in on_cpu.items():
        assert tree_signature(on_cuda[pid]) == tree_signature(nodes)
        logprobs = sorted(n.logprob_sum for n in nodes)
        assert sorted(n.logprob_sum for n in on_cuda[pid]) == pytest.approx(logprobs, abs=1e-3)


def test_bfloat16_tree_on_cuda_scores_every_node(llava_dir):
    vlm = VLMAdapter.from_pretrained(llava_dir, device="cuda", dtype="bfloat16")
    assert vlm.model.dtype == torch.bfloat16 and vlm.model.device.type == "cuda"
    trees = build_trees(vlm, _prompts(), SEARCH)
    nodes = [n for tree in trees.values() for n in tree if n.node_id > 0]
    assert nodes and all(math.isfinite(n.logprob_sum) and n.logprob_sum <= 0 for n in nodes)
    assert all(n.token_count == len(n.token_ids) > 0 for n in nodes)
    texts = vlm.generate([p.image for p in _prompts()], [p.instruction for p in _prompts()], max_new_tokens=8)
    assert len(texts) == len(COLOURS) and all(len(t) == 1 for t in texts)


def test_relevance_on_cuda_matches_cpu(tmp_path):
    clip_dir = make_tiny_clip(tmp_path / "clip")
    images = [Image.new("RGB", (40, 30), colour) for colour in COLOURS]
    texts, index = ["a red square.", "a blue square.", "a green dog.", "a dog " * 100], [0, 1, 2, 2]
    on_cpu = OpenClipRelevance.from_pretrained(clip_dir).cosine(images, texts, index)
    cuda_scorer = OpenClipRelevance.from_pretrained(clip_dir, device="cuda")
    assert next(cuda_scorer.model.parameters()).device.type == "cuda"
    assert cuda_scorer.cosine(images, texts, index) == pytest.approx(on_cpu, abs=1e-5)


def test_bfloat16_dpo_on_cuda_trains_merges_and_reloads(llava_dir, tmp_path):
    from transformers import TrainerCallback

    from training.dpo import merge_adapter, train_dpo
    from training.pairs import DPOExample

    class WhereTrained(TrainerCallback):
        seen: tuple = ()

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            weight = next(p for p in model.parameters() if p.requires_grad)
            base = next(p for p in model.parameters() if not p.requires_grad)
            WhereTrained.seen = (weight.device.type, base.dtype)

    pairs = [DPOExample(image=Image.new("RGB", (20, 16), colour), prompt="<image>\nDescribe the image.",
                            chosen="a red wall.", rejected="a dog and a cat on a bus near a tree.")
             for colour in COLOURS]
    cfg = DPOConfig.paper().with_overrides(device="cuda", bf16=True, max_steps=2, batch_size=2, learning_rate=1e-3,
                                           save_steps=1, max_length=96)
    logs = []
    result = train_dpo(llava_dir, pairs, cfg, tmp_path / "dpo", on_log=logs.append, callbacks=[WhereTrained()])
    assert WhereTrained.seen == ("cuda", torch.bfloat16)
    assert [r["step"] for r in logs] == [1, 2] and result.steps == 2
    assert logs[0]["loss"] == pytest.approx(math.log(2), abs=1e-2)  # policy == reference at step 1
    assert all(math.isfinite(r["loss"]) for r in logs)

    merged = merge_adapter(llava_dir, result.adapter_dir, tmp_path / "merged")
    vlm = VLMAdapter.from_pretrained(merged, device="cuda", dtype="bfloat16")
    assert build_trees(vlm, _prompts()[:1], SEARCH)["p0"]


def test_csr_run_on_cuda_end_to_end(tiny_run):
    from flows.pipeline import csr_pipeline
    from storage.store import close_all, query_rows

    cuda = ["runtime.device=cuda", "model.dtype=bfloat16", "dpo.device=cuda", "dpo.bf16=true"]
    csr_pipeline(config_files=tiny_run["config_files"], overrides=[*tiny_run["overrides"], *cuda])
    close_all()
    db = tiny_run["db"]
    assert query_rows(db, "SELECT count(*) FROM stages WHERE status != 'complete'")[0][0] == 0
    n_nodes, n_scored = query_rows(db, "SELECT count(*), count(cosine) FROM tree_v WHERE node_id > 0")[0]
    assert n_nodes > 0 and n_scored == n_nodes
    assert {r[0] for r in query_rows(db, "SELECT DISTINCT round FROM eval_results WHERE split = 'greedy'")} == {0, 1}
    assert query_rows(db, "SELECT count(*) FROM training_metrics WHERE name = 'loss'")[0][0] >= 1


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    from csr_testing.tiny_families import make_tiny_vlm

    return make_tiny_vlm("qwen2_5_vl", tmp_path_factory.mktemp("qwen2_5_vl"))


def _sized_prompts():
    sizes = ((48, 40), (32, 80), (80, 32))
    return [PromptInput(f"p{i}", Image.new("RGB", size, COLOURS[i]), "<image>\nDescribe the image in detail.")
            for i, size in enumerate(sizes)]


def test_qwen2_5_vl_tree_on_cuda_matches_cpu_and_bfloat16_stays_close(qwen_dir):
    from csr_testing.baselines import response_logprobs

    prompts = _sized_prompts()
    on_cpu = build_trees(VLMAdapter.from_pretrained(qwen_dir), prompts, SEARCH)
    on_cuda = build_trees(VLMAdapter.from_pretrained(qwen_dir, device="cuda"), prompts, SEARCH)
    for pid, nodes in on_cpu.items():
        assert tree_signature(on_cuda[pid]) == tree_signature(nodes)
    bf16 = VLMAdapter.from_pretrained(qwen_dir, device="cuda", dtype="bfloat16")
    trees = build_trees(bf16, prompts, SEARCH)
    for prompt in prompts:
        paths = {}
        for node in trees[prompt.prompt_id]:
            paths[node.node_id] = (paths[node.parent_id] if node.parent_id is not None else ()) + node.token_ids
            if node.node_id == 0:
                continue
            full = response_logprobs(bf16, prompt.image, prompt.instruction, paths[node.node_id])
            assert node.logprob_sum == pytest.approx(sum(full[len(full) - node.token_count :]), abs=0.1)


def test_qwen2_5_vl_bfloat16_dpo_on_cuda_merges_and_searches(qwen_dir, tmp_path):
    from training.dpo import merge_adapter, train_dpo
    from training.pairs import DPOExample

    pairs = [DPOExample(p.image, p.instruction, "a red wall.", "a dog and a cat on a bus.") for p in _sized_prompts()]
    cfg = DPOConfig.paper().with_overrides(device="cuda", bf16=True, max_steps=2, batch_size=2, learning_rate=1e-3,
                                           save_steps=1, max_length=256)
    result = train_dpo(qwen_dir, pairs, cfg, tmp_path / "dpo")
    assert result.steps == 2
    merged = merge_adapter(qwen_dir, result.adapter_dir, tmp_path / "merged")
    vlm = VLMAdapter.from_pretrained(merged, device="cuda", dtype="bfloat16")
    assert build_trees(vlm, _sized_prompts()[:1], SEARCH)["p0"]
    (p_yes,) = vlm.yes_probability([pairs[0].image], ["Is there a dog?"])
    assert math.isfinite(p_yes) and 0 < p_yes < 1
