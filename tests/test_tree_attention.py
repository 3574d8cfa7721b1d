"""The shared-prefix search engine (`adapters/tree_attention.py`) against plain attention and against `NodeBatch`."""

import types

import pytest
import torch
from PIL import Image

from csr_core.adapters import tree_attention
from csr_core.adapters.tree_attention import (
    TREE_ATTENTION,
    Groups,
    PrefixSharedBatch,
    SlidingWindowError,
    TreeCache,
    attend,
    merge,
)
from csr_core.adapters.tree_attention import (
    tree_attention as tree_attention_fn,
)
from csr_core.adapters.vlm import NodeBatch, PrefixState, VLMAdapter
from csr_core.tree import PromptInput, SearchConfig, build_trees, tree_signature
from csr_testing.tiny_models import make_tiny_llava

HEADS, KV_HEADS, DIM = 4, 2, 8
IMAGES = [Image.new("RGB", (40, 30), (200, 10, 10)), Image.new("RGB", (32, 48), (0, 0, 255))]


@pytest.fixture(params=["fused", "matmul"])
def kernel(request, monkeypatch):
    """Both attention paths: torch's CPU flash kernel and the plain matmul one."""
    if request.param == "matmul":
        monkeypatch.setattr(tree_attention, "FUSED_CPU", None)
    elif tree_attention.FUSED_CPU is None:
        pytest.skip("this torch has no CPU flash-attention kernel")
    return request.param


def reference(query, keys, values, scaling, softcap=None):
    """Plain softmax attention of one row: query (heads, q, D) over keys (kv_heads, L, D), causal over the last q."""
    keys = keys.repeat_interleave(HEADS // KV_HEADS, dim=0)
    values = values.repeat_interleave(HEADS // KV_HEADS, dim=0)
    scores = query @ keys.transpose(-1, -2) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    q, length = query.shape[1], keys.shape[1]
    causal = torch.arange(length)[None] <= torch.arange(length - q, length)[:, None]
    scores = scores.masked_fill(~causal, float("-inf"))
    return (torch.softmax(scores, dim=-1) @ values).transpose(0, 1)


def random_prefix(length, gen, layers=1):
    kv = tuple(tuple(torch.randn(1, KV_HEADS, length, DIM, generator=gen) for _ in range(2)) for _ in range(layers))
    return PrefixState(kv=kv, last_token=0)


def test_groups_lay_rows_out_per_group_and_back():
    rows = torch.randn(7, KV_HEADS, 3, DIM)
    group_of_row = torch.tensor([2, 0, 2, 2, 0, 3, 2])  # unsorted, ragged, group 1 empty
    groups = Groups.of(group_of_row, 4, "cpu")
    assert groups.width == 4 and groups.order is not None
    blocks = groups.blocks(rows).view(4, KV_HEADS, 4, 3, DIM)
    for group in range(4):
        members = (group_of_row == group).nonzero().flatten()
        assert torch.equal(blocks[group, :, : len(members)], rows[members].transpose(0, 1))
    assert torch.equal(groups.rows(groups.blocks(rows)), rows)
    sorted_even = Groups.of(torch.tensor([0, 0, 1, 1, 2, 2]), 3, "cpu")
    assert sorted_even.order is None and sorted_even.width == 2


def test_merge_of_partial_softmaxes_is_exact(kernel):
    gen = torch.Generator().manual_seed(0)
    query = torch.randn(3, KV_HEADS, 5, DIM, generator=gen)
    keys, values = torch.randn(3, KV_HEADS, 11, DIM, generator=gen), torch.randn(3, KV_HEADS, 11, DIM, generator=gen)
    parts = [attend(query, keys[:, :, a:b], values[:, :, a:b], None, 0.4) for a, b in ((0, 4), (4, 5), (5, 11))]
    whole = torch.softmax(query @ keys.transpose(-1, -2) * 0.4, dim=-1) @ values
    torch.testing.assert_close(merge(parts), whole, atol=1e-5, rtol=0)


class Attention(types.SimpleNamespace):
    """What `tree_attention` reads of a transformers attention module."""


def run_cache(cache, layer, query, key, value, scaling, softcap=None):
    cache.update(key, value, 0)
    module = Attention(layer_idx=0, scaling=scaling, sliding_window=None)
    out, weights = tree_attention_fn(module, query, key, value, None, scaling=scaling, csr_tree=cache, softcap=softcap)
    assert weights is None
    return out


@pytest.mark.parametrize("softcap", [None, 2.0])
def test_tree_attention_equals_plain_attention_over_each_rows_sequence(kernel, softcap):
    """Ragged prefixes of 3 prompts, ragged node tails prefilled causally, then decode steps whose beam reorders
    repeat and drop rows, with a node buffer that has to grow: every row equals attention over its whole sequence."""
    gen = torch.Generator().manual_seed(1)
    scaling = DIM**-0.5
    prompts = [random_prefix(n, gen) for n in (5, 9, 1)]
    node_prompts = [0, 1, 0, 2, 1]
    tails = [3, 1, 6, 2, 4]
    cache = TreeCache([prompts[p] for p in node_prompts], tails, "cpu", beam_columns=1)
    sequences = [[list(prompts[p].kv[0][0][0].unbind(1)), list(prompts[p].kv[0][1][0].unbind(1))] for p in node_prompts]

    width = max(tails)
    query = torch.randn(len(tails), HEADS, width, DIM, generator=gen)
    key, value = (torch.randn(len(tails), KV_HEADS, width, DIM, generator=gen) for _ in range(2))
    cache.begin_prefill()
    out = run_cache(cache, 0, query, key, value, scaling, softcap)
    for row, n in enumerate(tails):
        sequences[row][0] += list(key[row, :, width - n :].unbind(1))
        sequences[row][1] += list(value[row, :, width - n :].unbind(1))
        expected = reference(query[row, :, width - n :], torch.stack(sequences[row][0], 1),
                             torch.stack(sequences[row][1], 1), scaling, softcap)
        torch.testing.assert_close(out[row, width - n :], expected, atol=1e-5, rtol=0)

    steps = ([0, 0, 0, 1, 2, 2, 3, 4, 4], [8, 1, 1, 0, 5, 3], [0, 0, 1, 2, 3, 4, 5, 5], [7, 6, 0], [2, 1, 0, 0],
             [1, 1, 2, 2, 3, 3, 0], [0, 5, 6, 6])  # uneven beams, dead nodes and prompts, then 6 beams for one node
    for parents in steps:
        sequences = [[list(sequences[p][0]), list(sequences[p][1])] for p in parents]
        rows = len(parents)
        query = torch.randn(rows, HEADS, 1, DIM, generator=gen)
        key, value = (torch.randn(rows, KV_HEADS, 1, DIM, generator=gen) for _ in range(2))
        cache.begin_step(torch.tensor(parents))
        out = run_cache(cache, 0, query, key, value, scaling, softcap)
        for row in range(rows):
            sequences[row][0].append(key[row, :, 0])
            sequences[row][1].append(value[row, :, 0])
            expected = reference(query[row], torch.stack(sequences[row][0], 1), torch.stack(sequences[row][1], 1),
                                 scaling, softcap)
            torch.testing.assert_close(out[row], expected, atol=1e-5, rtol=0)


def test_the_attention_needs_its_cache():
    with pytest.raises(TypeError, match="PrefixSharedBatch"):
        tree_attention_fn(Attention(layer_idx=0), torch.zeros(1, 2, 1, 4), None, None, None)


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    torch.set_num_threads(2)
    return VLMAdapter.from_pretrained(make_tiny_llava(tmp_path_factory.mktemp("llava")))


def node_batch_pair(vlm, max_new_tokens):
    vocab = vlm.tokenizer.get_vocab()
    a = vlm.encode_prefix(IMAGES[0], "<image>\ndescribe this image in detail")
    b = vlm.encode_prefix(IMAGES[1], "hi")
    prefixes = [a, b, a, b]
    responses = [[vocab["a"], vocab["dog"], vocab["."]], [], [vocab["the"]],
                 [vocab["red"], vocab["cat"], vocab["is"], vocab["on"], vocab["."]]]
    kwargs = {"mrope": vlm.family.mrope}
    return (NodeBatch(vlm.model, prefixes, responses, vlm.device, **kwargs),
            PrefixSharedBatch(vlm.model, prefixes, responses, vlm.device, max_new_tokens=max_new_tokens, **kwargs))


STEPS = ([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3], [0, 1, 1, 3, 5, 5, 6, 7, 8, 9, 11, 11], [0, 2, 4, 6, 8, 10],
         [5, 5, 4, 3, 2, 1, 0, 0], [0, 1, 2, 3, 4, 5, 6, 7])


def assert_same_logits(vlm, node, shared):
    with torch.inference_mode():
        torch.testing.assert_close(shared.prefill(), node.prefill(), atol=1e-5, rtol=0)
        gen = torch.Generator().manual_seed(0)
        for parents in STEPS:
            tokens = torch.randint(5, 50, (len(parents),), generator=gen)
            parents = torch.tensor(parents)
            torch.testing.assert_close(shared.step(parents, tokens), node.step(parents, tokens), atol=1e-5, rtol=0)


@pytest.mark.parametrize("max_new_tokens", [None, 2])
def test_prefix_shared_batch_gives_node_batch_logits(tiny_vlm, kernel, max_new_tokens):
    node, shared = node_batch_pair(tiny_vlm, max_new_tokens)
    assert len({p.cache_len for p in node.prefixes}) == 2
    text_config = tiny_vlm.model.config.get_text_config(decoder=True)
    before = text_config._attn_implementation
    assert_same_logits(tiny_vlm, node, shared)
    assert text_config._attn_implementation == before != TREE_ATTENTION
    assert tiny_vlm.model.config.vision_config._attn_implementation == before


def test_shared_adapter_builds_the_same_trees(tiny_vlm):
    shared = VLMAdapter(tiny_vlm.model, tiny_vlm.processor)  # the shared-prefix engine, the search's default
    node = VLMAdapter(tiny_vlm.model, tiny_vlm.processor, engine="node")
    gen = torch.Generator().manual_seed(0)
    prompts = [PromptInput(f"p{i}", Image.fromarray((torch.rand(24, 24, 3, generator=gen) * 255).byte().numpy()),
                           text) for i, text in enumerate(["<image>\ndescribe this image in detail", "what is it",
                                                           "<image>\nwhere is the dog"])]
    for cfg in (SearchConfig(num_token_beams=5, num_beam_groups=1, diversity_penalty=0.0, max_depth=3),
                SearchConfig(max_depth=2, max_new_tokens=12, max_batch_nodes=4)):
        ours, theirs = build_trees(shared, prompts, cfg), build_trees(node, prompts, cfg)
        assert len(ours["p0"]) > 5
        assert all(tree_signature(ours[k]) == tree_signature(theirs[k]) for k in theirs)


def tiny_families():
    return pytest.importorskip("csr_testing.tiny_families")


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl", "gemma3", "idefics3", "llava_onevision"])
def test_families_give_node_batch_logits(family):
    """Qwen's 3-D positions, Gemma 3's sliding-window layers (the window outlasts every row), Idefics3, and
    LLaVA-OneVision's Qwen2 decoder."""
    model, processor = tiny_families().build_tiny_vlm(family)
    vlm = VLMAdapter(model, processor)
    node, shared = node_batch_pair(vlm, max_new_tokens=len(STEPS))
    assert_same_logits(vlm, node, shared)


def test_a_sliding_window_a_row_could_outgrow_is_refused_and_the_adapter_falls_back():
    model, processor = tiny_families().build_tiny_vlm("gemma3")
    vlm = VLMAdapter(model, processor)
    prefix = vlm.encode_prefix(IMAGES[0], "hi")
    PrefixSharedBatch(model, [prefix], [[]], vlm.device, max_new_tokens=400)
    with pytest.raises(SlidingWindowError, match="past the 512-token"):
        PrefixSharedBatch(model, [prefix], [[]], vlm.device, max_new_tokens=600)
    with pytest.raises(SlidingWindowError, match="contiguous"):
        PrefixSharedBatch(model, [prefix], [[]], vlm.device, contiguous=True)
    shared = VLMAdapter(model, processor)
    params = SearchConfig(max_new_tokens=600, max_response_tokens=900).beam_params
    expected = VLMAdapter(model, processor, engine="node").search_sentences([prefix], [[]], [600], params)
    assert shared.search_sentences([prefix], [[]], [600], params) == expected


def test_attention_refuses_a_row_that_outgrows_a_sliding_window():
    gen = torch.Generator().manual_seed(2)
    cache = TreeCache([random_prefix(5, gen)], [3], "cpu")
    cache.begin_prefill()
    query = torch.randn(1, HEADS, 3, DIM, generator=gen)
    key, value = (torch.randn(1, KV_HEADS, 3, DIM, generator=gen) for _ in range(2))
    cache.update(key, value, 0)
    module = Attention(layer_idx=0, scaling=1.0, sliding_window=8)
    tree_attention_fn(module, query, key, value, None, csr_tree=cache)
    module.sliding_window = 7
    with pytest.raises(SlidingWindowError, match="8 tokens, past the 7-token"):
        tree_attention_fn(module, query, key, value, None, csr_tree=cache)
