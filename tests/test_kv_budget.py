"""Batching the sentence search by a KV budget (`runtime.kv_budget_gb`): the adapter's byte count against what the
engines allocate, waves of prompts under a budget with the unbudgeted search's trees, and the setting's place
outside every stage key."""

import logging
import weakref

import pandas as pd
import pytest
import torch
from PIL import Image

from csr_core.adapters import tree_attention
from csr_core.adapters.vlm import NodeBatch, VLMAdapter
from csr_core.beams import Candidate
from csr_core.config import ModelConfig, RuntimeConfig
from csr_core.reward import RewardConfig
from csr_core.tree import PromptInput, SearchConfig, build_trees, tree_signature
from csr_testing.tiny_models import make_tiny_llava
from flows.config import load_config
from tasks.generate import TreeWorker, generate_spec

SEARCH = SearchConfig(max_new_tokens=8, max_depth=3, max_response_tokens=30)
TEXTS = ["<image>\nDescribe the image in detail.", "What is in this picture? <image>", "<image>\nwhere is the dog",
         "<image>\nwhat colour is it", "<image>\nname every object you can see", "<image>\nis it a room"]


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    torch.set_num_threads(2)
    return make_tiny_llava(tmp_path_factory.mktemp("llava"))


@pytest.fixture(scope="module")
def vlm(llava_dir):
    return VLMAdapter.from_pretrained(llava_dir)


def _images(n):
    gen = torch.Generator().manual_seed(0)
    sizes = [(40, 30), (24, 24), (32, 48), (20, 20), (30, 40), (48, 32)]
    return [Image.fromarray((torch.rand(h, w, 3, generator=gen) * 255).byte().numpy()) for w, h in sizes[:n]]


def _prompts(n=None):
    n = len(TEXTS) if n is None else n
    return [PromptInput(f"p{i}", image, TEXTS[i]) for i, image in enumerate(_images(n))]


def _allocated(cache, prefixes) -> int:
    """Bytes of the distinct storages a TreeCache / DynamicCache holds that are not the prefixes' own."""
    given = {t.untyped_storage().data_ptr() for p in prefixes for layer in p.kv for t in layer}
    storages = {}
    for layer in cache.layers:
        prefix = getattr(layer, "prefix", None)
        for tensor in (layer.keys, layer.values) + ((prefix.keys, prefix.values) if prefix else ()):
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in given:
                storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def _batch_inputs(vlm):
    """Three nodes of two prompts (two nodes share one prefix), tails of different lengths."""
    images = _images(3)
    first, second = vlm.encode_prefix(images[0], TEXTS[0]), vlm.encode_prefix(images[2], TEXTS[2])
    assert first.cache_len != second.cache_len
    return [first, first, second], [[5, 6, 7], [], [8, 9]]


@pytest.mark.parametrize("max_new_tokens", [8, 20])  # under and over MIN_BEAM_COLUMNS (16) columns a beam slot
def test_the_estimate_is_the_bytes_the_shared_prefix_engine_allocates(vlm, max_new_tokens):
    prefixes, responses = _batch_inputs(vlm)
    params = SEARCH.beam_params
    beams = params.num_beams
    estimate = vlm.batch_kv_bytes(prefixes, responses, [max_new_tokens] * 3, params)
    layers, (_, kv_heads, _, head_dim) = len(prefixes[0].kv), prefixes[0].kv[0][0].shape
    token = layers * 2 * kv_heads * head_dim * 4  # float32
    columns = 2 * max(p.cache_len for p in prefixes) + 3 * (4 + beams * max(max_new_tokens, 16))
    assert estimate == columns * token
    with torch.inference_mode():
        batch = tree_attention.PrefixSharedBatch(vlm.model, prefixes, responses, vlm.device,
                                                 max_new_tokens=max_new_tokens)
        batch.prefill()
        held = []
        parents = torch.arange(3).repeat_interleave(beams)
        for _ in range(max_new_tokens - 1):  # every row continues to the last token: the buffers never grow
            batch.step(parents, torch.full((len(parents),), 9))
            held.append(_allocated(batch.cache, prefixes))
            parents = torch.arange(3 * beams).roll(1)
    assert held == [estimate] * (max_new_tokens - 1)
    # one prompt: its prefix is used in place, nothing copied
    alone = vlm.batch_kv_bytes(prefixes[:2], responses[:2], [max_new_tokens] * 2, params)
    assert alone == 2 * (4 + beams * max(max_new_tokens, 16)) * token


def test_the_estimate_bounds_a_real_search_and_node_batch_from_above(vlm, monkeypatch):
    prefixes, responses = _batch_inputs(vlm)
    params, budgets = SEARCH.beam_params, [8, 8, 8]
    seen = []
    step = tree_attention.PrefixSharedBatch.step

    def recording_step(self, parent_rows, tokens):
        out = step(self, parent_rows, tokens)
        seen.append(_allocated(self.cache, prefixes))
        return out

    monkeypatch.setattr(tree_attention.PrefixSharedBatch, "step", recording_step)
    vlm.search_sentences(prefixes, responses, budgets, params)
    estimate = vlm.batch_kv_bytes(prefixes, responses, budgets, params)
    assert seen and max(seen) <= estimate and seen[0] == estimate  # dead nodes are dropped later, never added

    node = VLMAdapter(vlm.model, vlm.processor, engine="node")
    bound = node.batch_kv_bytes(prefixes, responses, budgets, params)
    with torch.inference_mode():
        batch = NodeBatch(vlm.model, prefixes, responses, vlm.device)
        batch.prefill()
        parents = torch.arange(3).repeat_interleave(params.num_beams)
        most = 0
        for _ in range(7):
            batch.step(parents, torch.full((len(parents),), 9))
            most = max(most, _allocated(batch.cache, prefixes))
            parents = torch.arange(len(parents))
    assert most <= bound < 1.3 * most


class Recording:
    """A VLMAdapter that logs its calls and checks, at every batch, that the prefixes still alive plus the batch's
    own allocation fit the budget (a batch of one node excepted)."""

    def __init__(self, vlm, budget=None):
        self.vlm, self.budget = vlm, budget
        self.events, self.alive, self.most_alive = [], [], 0

    def __getattr__(self, name):
        return getattr(self.vlm, name)

    def encode_prefix(self, image, instruction):
        prefix = self.vlm.encode_prefix(image, instruction)
        self.alive.append(weakref.ref(prefix))
        self.events.append("encode")
        return prefix

    def search_sentences(self, prefixes, responses, max_new_tokens, params):
        self.events.append(len(prefixes))
        alive = [p() for p in self.alive if p() is not None]
        self.most_alive = max(self.most_alive, len(alive))
        if self.budget is not None and len(prefixes) > 1:
            held = sum(self.vlm.prefix_kv_bytes(p) for p in alive)
            assert held + self.vlm.batch_kv_bytes(prefixes, responses, max_new_tokens, params) <= self.budget
        return self.vlm.search_sentences(prefixes, responses, max_new_tokens, params)

    @property
    def calls(self):
        return sum(1 for e in self.events if e != "encode")

    @property
    def waves(self):
        """Runs of prompt encodings between batches."""
        return sum(1 for i, e in enumerate(self.events) if e == "encode" and (i == 0 or self.events[i - 1] != "encode"))


def _signatures(trees):
    return {pid: tree_signature(nodes) for pid, nodes in trees.items()}


def _assert_same_scores(trees, expected):
    """Other batch shapes round float32 sums differently in the last bits, nothing more."""
    for pid, nodes in expected.items():
        got = sorted((n.depth, n.token_ids, n.cum_score) for n in trees[pid])
        want = sorted((n.depth, n.token_ids, n.cum_score) for n in nodes)
        assert [g[:2] for g in got] == [w[:2] for w in want]
        assert [g[2] for g in got] == pytest.approx([w[2] for w in want], abs=1e-5)


def test_a_budget_decodes_in_waves_and_smaller_batches_with_the_same_trees(vlm, caplog):
    prompts = _prompts()
    plain = Recording(vlm)
    expected = build_trees(plain, prompts, SEARCH)
    assert plain.waves == 1 and plain.events[: len(prompts)] == ["encode"] * len(prompts)
    prefix = max(vlm.prefix_kv_bytes(vlm.encode_prefix(p.image, p.instruction)) for p in prompts)
    root = vlm.batch_kv_bytes([vlm.encode_prefix(prompts[0].image, prompts[0].instruction)], [()],
                              [SEARCH.max_new_tokens], SEARCH.beam_params)
    one_prompt = 2 * prefix + 3 * root  # its prefix, the next one's, three nodes
    budgets = [100 * one_prompt, 2 * one_prompt, one_prompt, int(0.7 * one_prompt)]
    calls, waves, alive = [], [], []
    caplog.set_level(logging.WARNING, logger="csr")
    for budget in budgets:
        recording = Recording(vlm, budget)
        trees = build_trees(recording, prompts, SEARCH, kv_budget_bytes=budget)
        assert list(trees) == [p.prompt_id for p in prompts]
        assert _signatures(trees) == _signatures(expected)
        _assert_same_scores(trees, expected)
        if budget == budgets[0]:
            assert trees == expected  # the same batches: bit for bit
        calls.append(recording.calls)
        waves.append(recording.waves)
        alive.append(recording.most_alive)
    assert calls[0] == plain.calls == SEARCH.max_depth  # the whole chunk in one batch a step
    assert calls == sorted(set(calls)) and calls[-1] > 3 * calls[0]  # more batches as the budget shrinks
    assert waves[0] == 1 and waves == sorted(waves) and waves[-1] >= 4  # prompts enter as earlier ones finish
    assert plain.most_alive == len(prompts) > alive[-1]
    assert not caplog.records


def test_a_budget_under_one_node_runs_every_node_alone_with_one_warning(vlm, caplog):
    prompts = _prompts(3)
    expected = build_trees(vlm, prompts, SEARCH)
    caplog.set_level(logging.WARNING, logger="csr")
    recording = Recording(vlm)
    trees = build_trees(recording, prompts, SEARCH, kv_budget_bytes=1)
    assert _signatures(trees) == _signatures(expected)
    _assert_same_scores(trees, expected)
    expanded = sum(1 for nodes in trees.values() for n in nodes if n.kept and not n.is_final)
    assert recording.calls == expanded and set(recording.events) == {"encode", 1}
    assert recording.most_alive == 2  # one prompt in flight at a time, the next one's prefix encoded ahead
    warnings = [r for r in caplog.records if r.name == "csr" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "runtime.kv_budget_gb" in warnings[0].getMessage()


class PureVLM:
    """No torch: every prefix 10 bytes, a batch 10 bytes per distinct prompt (when more than one) plus 1 a node."""

    def __init__(self):
        self.calls = []

    def encode_prefix(self, image, instruction):
        return [instruction]  # a fresh object per prompt

    def prefix_kv_bytes(self, prefix):
        return 10

    def batch_kv_bytes(self, prefixes, responses, max_new_tokens, params):
        prompts = len({id(p) for p in prefixes})
        return 10 * prompts * (prompts > 1) + len(prefixes)

    def search_sentences(self, prefixes, responses, max_new_tokens, params):
        self.calls.append(tuple(p[0] for p in prefixes))
        return [[Candidate((100 + j,), -(j + 1.0), -(j + 1) - len(r) / 10, "delimiter") for j in range(5)]
                for r in responses]

    def decode(self, token_ids):
        return f"word{token_ids[0]}."


def test_waves_and_packing_follow_the_byte_counts():
    prompts = [PromptInput(f"p{i}", None, f"q{i}") for i in range(3)]
    cfg = SearchConfig(max_depth=2)
    vlm = PureVLM()
    trees = build_trees(vlm, prompts, cfg, kv_budget_bytes=44)
    # step 1: p0 enters (10 held); p1 is encoded (20 held) but p0's and p1's roots in one batch (20 + 2) and room
    # for p2's prefix (10) would make 52: p1 waits while p0's root, then its 3 kept children, decode; p0 done
    # (10 held), p1 enters, and p2 (20 held, none after it): 20 + 22 fits; their 6 children batch to the 24 bytes
    # the held prefixes leave: 4 (20 + 4), then 2 (of one prompt: 2).
    assert vlm.calls == [("q0",), ("q0",) * 3, ("q1", "q2"), ("q1", "q1", "q1", "q2"), ("q2", "q2")]
    assert trees == build_trees(PureVLM(), prompts, cfg)
    no_bytes = type("NoBytes", (), {"encode_prefix": PureVLM.encode_prefix, "prefix_kv_bytes": PureVLM.prefix_kv_bytes})
    with pytest.raises(TypeError, match="a KV budget needs vlm.batch_kv_bytes"):
        build_trees(no_bytes(), prompts, cfg, kv_budget_bytes=44)
    with pytest.raises(ValueError, match="positive"):
        build_trees(PureVLM(), prompts, cfg, kv_budget_bytes=0)


def test_tree_worker_searches_under_the_runtime_budget(llava_dir, tmp_path, monkeypatch):
    import tasks.generate

    budgets = []

    def recording_build_trees(*args, kv_budget_bytes=None, **kwargs):
        budgets.append(kv_budget_bytes)
        return build_trees(*args, kv_budget_bytes=kv_budget_bytes, **kwargs)

    monkeypatch.setattr(tasks.generate, "build_trees", recording_build_trees)
    paths = []
    for i, image in enumerate(_images(3)):
        paths.append(str(tmp_path / f"{i}.png"))
        image.save(paths[-1])
    chunk = pd.DataFrame({"image_path": paths, "instruction": TEXTS[:3]}, index=["a", "b", "c"])

    def rows(runtime):
        worker = TreeWorker(str(llava_dir), ModelConfig(), runtime, SEARCH, RewardConfig())
        return worker(chunk)

    budgeted, plain = rows(RuntimeConfig(kv_budget_gb=1e-4)), rows(RuntimeConfig())
    assert budgets == [107374, None]  # 1e-4 GiB, in bytes; none without a budget
    pd.testing.assert_frame_equal(budgeted.rows, plain.rows)
    assert budgeted.done == plain.done == ["a", "b", "c"]


def test_the_budget_is_validated_and_is_in_no_stage_key():
    with pytest.raises(ValueError) as info:
        load_config(overrides=["runtime.kv_budget_gb=-1"])
    assert str(info.value).startswith("runtime.kv_budget_gb: must be >= 0, got -1"), str(info.value)
    assert load_config(overrides=["runtime.kv_budget_gb=40"]).runtime.kv_budget_gb == 40.0

    def key(overrides):
        cfg = load_config(overrides=overrides)
        return generate_spec(cfg.search, cfg.reward, "model-a", "prompts-a", "clip-a").key

    assert key(["runtime.kv_budget_gb=40"]) == key([])
    assert key(["runtime.kv_budget_gb=40", "search.prune_by=calibrated"]) == key(["search.prune_by=calibrated"])


@pytest.mark.parametrize("family", ["qwen2_vl", "gemma3", "idefics3"])
def test_the_estimate_and_budgeted_trees_hold_for_other_families(family):
    """Qwen's 3-D positions, Gemma 3's own head_dim and sliding-window layers (the window outlasts every row),
    Idefics3's image splitting: the count is the engine's bytes, and a budget leaves the trees as they were."""
    model, processor = pytest.importorskip("csr_testing.tiny_families").build_tiny_vlm(family)
    vlm = VLMAdapter(model, processor)
    prefixes, responses = _batch_inputs(vlm)
    params = SEARCH.beam_params
    with torch.inference_mode():
        batch = tree_attention.PrefixSharedBatch(model, prefixes, responses, vlm.device, mrope=vlm.family.mrope,
                                                 max_new_tokens=8)
        batch.prefill()
        batch.step(torch.arange(3).repeat_interleave(params.num_beams), torch.full((3 * params.num_beams,), 9))
    assert _allocated(batch.cache, prefixes) == vlm.batch_kv_bytes(prefixes, responses, [8] * 3, params)
    prompts = _prompts(4)
    expected = build_trees(vlm, prompts, SEARCH)
    prefix = max(vlm.prefix_kv_bytes(prefixes[i]) for i in (0, 2))
    recording = Recording(vlm, 3 * prefix + 2 * vlm.batch_kv_bytes(prefixes[:1], [()], [8], params))
    trees = build_trees(recording, prompts, SEARCH, kv_budget_bytes=recording.budget)
    assert recording.waves > 1 and recording.calls > SEARCH.max_depth
    assert _signatures(trees) == _signatures(expected)
    _assert_same_scores(trees, expected)
