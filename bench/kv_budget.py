"""KV-cache memory of the sentence search at LLaVA-1.5-7B's shape: bytes per live beam and prompts per GPU.

Counted from the tensors each engine keeps (32 layers x 2 (keys, values) x 32 KV heads x 128 x 2 bytes = 512 KiB a
token in bf16/fp16), for the paper's search: 5 beams per node (5 groups of 1), 3 live nodes per prompt (top 1 +
bottom 2), so 15 live rows a prompt; a prefix of 576 image + ~40 prompt tokens; a row at most 1 + 400 tokens past
it (the last prompt token, the response so far, the sentence being searched, up to 70 new tokens).

- `node` (`NodeBatch`): every row holds its prompt's prefix, its node's tail and its own new tokens.
- `per-beam tail` (prefix once per prompt, each row its whole tail in a buffer of its own).
- `shared` (`tree_attention.PrefixSharedBatch`): prefix once per prompt, each node's tail once, each beam slot
  its new tokens (the buffer reserves `new_tokens` columns a slot).

    python bench/kv_budget.py                  # analytic
    python bench/kv_budget.py --measure        # also counts the bytes both engines allocate, on CPU, with a
                                               # 2-layer model of the 7B's decoder shape (short tails)
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

GIB = 1 << 30


@dataclass(frozen=True)
class Shape:
    layers: int = 32
    kv_heads: int = 32
    head_dim: int = 128
    dtype_bytes: int = 2

    @property
    def token_bytes(self) -> int:
        """Keys and values of one token in every layer."""
        return self.layers * 2 * self.kv_heads * self.head_dim * self.dtype_bytes


@dataclass(frozen=True)
class Search:
    prefix: int = 616  # 576 image tokens + ~40 prompt tokens
    response: int = 330  # response so far; with the last prompt token and `new_tokens`, a row's 401 tokens
    new_tokens: int = 70
    nodes: int = 3  # live nodes a prompt
    beams: int = 5  # live rows a node

    @property
    def tail(self) -> int:
        return 1 + self.response

    @property
    def rows(self) -> int:
        return self.nodes * self.beams


def tokens_per_prompt(search: Search) -> dict[str, dict[str, float]]:
    """Tokens of KV each engine stores per prompt: prefix part, tail part, and the tail part per live row."""
    s = search
    tails = {
        "node": s.rows * (s.tail + s.new_tokens),
        "per-beam tail": s.rows * (s.tail + s.new_tokens),
        "shared": s.nodes * (s.tail + s.beams * s.new_tokens),
    }
    prefixes = {"node": s.rows * s.prefix, "per-beam tail": s.prefix, "shared": s.prefix}
    return {name: {"prefix": prefixes[name], "tail": tails[name], "tail per row": tails[name] / s.rows}
            for name in tails}


def report(shape: Shape, search: Search, gpu_gib: float, weights_gib: float) -> None:
    free = (gpu_gib - weights_gib) * GIB
    print(f"{shape.token_bytes / 1024:.0f} KiB of KV a token; {search.rows} live rows a prompt "
          f"({search.nodes} nodes x {search.beams} beams), prefix {search.prefix}, node tail {search.tail}, "
          f"{search.new_tokens} new tokens a beam; {gpu_gib:g} GiB - {weights_gib:g} GiB of weights")
    print(f"{'engine':<14} {'tail KV per live beam':>22} {'prefix KV a prompt':>19} {'KV a prompt':>12} "
          f"{'prompts that fit':>17}")
    for name, tokens in tokens_per_prompt(search).items():
        per_prompt = (tokens["prefix"] + tokens["tail"]) * shape.token_bytes
        print(f"{name:<14} {tokens['tail per row'] * shape.token_bytes / 2**20:>18.1f} MiB "
              f"{tokens['prefix'] * shape.token_bytes / 2**20:>15.0f} MiB {per_prompt / GIB:>8.2f} GiB "
              f"{int(free // per_prompt):>17}")


def measure(search: Search, layers: int) -> None:
    """Bytes the caches of both engines hold after prefill and `search.new_tokens` steps, with `layers` decoder
    layers of the 7B shape in bf16 (random weights, random prefix KV: no vision tower runs)."""
    from csr_core.adapters.tree_attention import PrefixSharedBatch
    from csr_core.adapters.vlm import NodeBatch, PrefixState
    from csr_testing.tiny_models import build_llava

    text = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": layers, "num_attention_heads": 32,
            "num_key_value_heads": 32, "max_position_embeddings": 4096}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    model, _ = build_llava(vision, text, image_size=16, patch_size=4, dtype=torch.bfloat16)
    token_bytes = Shape(layers=layers).token_bytes
    gen = torch.Generator().manual_seed(0)
    kv = tuple(tuple(torch.randn(1, 32, search.prefix, 128, generator=gen).bfloat16() for _ in range(2))
               for _ in range(layers))
    prefixes, responses = [PrefixState(kv=kv, last_token=5)] * search.nodes, [[7] * search.response] * search.nodes
    steps = [torch.arange(search.nodes).repeat_interleave(search.beams)]
    steps += [torch.arange(search.rows).roll(1)] * (search.new_tokens - 1)
    engines = {"node": lambda: NodeBatch(model, prefixes, responses, "cpu"),
               "shared": lambda: PrefixSharedBatch(model, prefixes, responses, "cpu", max_new_tokens=search.new_tokens)}
    for name, tokens in tokens_per_prompt(search).items():
        if name not in engines:
            continue
        with torch.inference_mode():
            batch = engines[name]()
            batch.prefill()
            for parents in steps:
                batch.step(parents, torch.full((len(parents),), 9))
        held = cache_bytes(batch.cache)
        analytic = (tokens["prefix"] + tokens["tail"]) * token_bytes
        per_row = (held - tokens["prefix"] * token_bytes) / search.rows / 2**20
        print(f"{name:<7} holds {held / 2**20:7.1f} MiB of KV (analytic {analytic / 2**20:7.1f}); tail part per live "
              f"beam {per_row:6.2f} MiB, {per_row * 32 / layers:.1f} MiB with 32 layers")


def cache_bytes(cache) -> int:
    """Bytes of the distinct storages a cache's layers hold (keys, values and, for `TreeCache`, prefixes)."""
    storages = {}
    for layer in cache.layers:
        prefix = getattr(layer, "prefix", None)
        for tensor in (layer.keys, layer.values) + ((prefix.keys, prefix.values) if prefix else ()):
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu-gib", type=float, default=80.0)
    parser.add_argument("--weights-gib", type=float, default=14.0)
    parser.add_argument("--prefix", type=int, default=Search.prefix)
    parser.add_argument("--response", type=int, default=Search.response)
    parser.add_argument("--new-tokens", type=int, default=Search.new_tokens)
    parser.add_argument("--measure", action="store_true", help="also count the bytes both engines allocate")
    parser.add_argument("--measure-layers", type=int, default=2)
    args = parser.parse_args()
    search = Search(prefix=args.prefix, response=args.response, new_tokens=args.new_tokens)
    report(Shape(), search, args.gpu_gib, args.weights_gib)
    if args.measure:
        torch.set_num_threads(2)
        small = Search(prefix=search.prefix, response=24, new_tokens=16)
        print(f"\nmeasured: {args.measure_layers} decoder layers, bf16, prefix {small.prefix}, node tails of "
              f"{small.tail}, {small.new_tokens} new tokens a beam, {small.rows} rows")
        measure(small, args.measure_layers)


if __name__ == "__main__":
    main()
