"""Sentence-tree building speed: csr's batched search vs one `model.generate` call per node (the paper's code).

Both build the same trees (diversity off, one beam group, so transformers can run the baseline) with the same
tree code; only the node expansion differs. Prints nodes per second for each and the ratio. `--engine` picks csr's
batch: `shared` (`tree_attention.PrefixSharedBatch`, prefixes stored once per prompt: the search's engine) or
`node` (`NodeBatch`, every row with its own prefix copy: the engine before it); `--engine node shared` times both.

    python bench/tree_search.py                      # tiny LLaVA built from config
    python bench/tree_search.py --model-dir <data-dir>/world/models/vlm-base --threads 2
    python bench/tree_search.py --shape llava-1.5-7b --device cuda --dtype bfloat16   # random weights, on a GPU
    python bench/tree_search.py --engine node shared
    python bench/tree_search.py --shape tiny-576 --engine node shared   # LLaVA-1.5's 576 image tokens, on a CPU
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

from shapes import LLAVA_SHAPES, build_shape

from csr_core.adapters.vlm import VLMAdapter
from csr_core.tree import PromptInput, SearchConfig, build_trees, tree_signature
from csr_testing.baselines import PerNodeGenerate

DATASET = ROOT.parent / "shared" / "data" / "CSR-Prompt-Dataset-12k.json"
ENGINES = {engine: partial(VLMAdapter, engine=engine) for engine in ("node", "shared")}
FALLBACK_INSTRUCTIONS = ["Describe this image in detail.\n<image>", "<image>\nWhat is happening in this picture?"]


def load_prompts(n: int, seed: int) -> list[PromptInput]:
    instructions = FALLBACK_INSTRUCTIONS
    if DATASET.exists():
        instructions = [row["input"] for row in json.loads(DATASET.read_text())[:n]]
    gen = torch.Generator().manual_seed(seed)
    prompts = []
    for i in range(n):
        pixels = (torch.rand(64, 64, 3, generator=gen) * 255).to(torch.uint8).numpy()
        prompts.append(PromptInput(f"p{i}", Image.fromarray(pixels), instructions[i % len(instructions)]))
    return prompts


def timed_build(vlm, prompts, cfg):
    start = time.perf_counter()
    trees = build_trees(vlm, prompts, cfg)
    elapsed = time.perf_counter() - start
    nodes = sum(len(t) - 1 for t in trees.values())
    return trees, nodes, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", help="LLaVA-family save_pretrained dir (default: a tiny one from config)")
    parser.add_argument("--shape", choices=LLAVA_SHAPES, help="instead: that architecture, random weights")
    parser.add_argument("--layers", type=int, help="with --shape: decoder layers (default: the shape's own)")
    parser.add_argument("--num-prompts", type=int, default=4)
    parser.add_argument("--num-beams", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=70)
    parser.add_argument("--max-depth", type=int, default=4)
    parser.add_argument("--max-response-tokens", type=int, default=400)
    parser.add_argument("--max-batch-nodes", type=int, default=SearchConfig.max_batch_nodes,
                        help="live nodes a forward (the search's default: 64)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--paper-search", action="store_true",
                        help="csr alone with the paper's 5 beams in 5 diverse groups (transformers has no baseline)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engine", nargs="+", choices=ENGINES, default=["shared"],
                        help="csr's batch: shared (the search's engine), node (NodeBatch, the one before), or both")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model_dir = args.model_dir
    if args.shape:
        model_dir = f"{args.shape} ({args.layers or 'all'} layers, random weights, {args.dtype or 'float32'})"
        vlm = build_shape(args.shape, args.device, getattr(torch, args.dtype or "float32"), args.layers)
    else:
        if model_dir is None:
            from csr_testing.tiny_models import make_tiny_llava

            model_dir = make_tiny_llava(Path(tempfile.mkdtemp()) / "tiny-llava", seed=args.seed)
        vlm = VLMAdapter.from_pretrained(model_dir, device=args.device, dtype=args.dtype)
    groups, diversity = (args.num_beams, 3.0) if args.paper_search else (1, 0.0)
    cfg = SearchConfig(
        num_token_beams=args.num_beams, num_beam_groups=groups, diversity_penalty=diversity,
        max_new_tokens=args.max_new_tokens, max_depth=args.max_depth, max_response_tokens=args.max_response_tokens,
        max_batch_nodes=args.max_batch_nodes,
    )
    prompts = load_prompts(args.num_prompts, args.seed)
    warm_up = SearchConfig(**{**cfg.__dict__, "max_depth": 1})

    print(f"model: {model_dir}  prompts: {len(prompts)}  threads: {args.threads}  cfg: {cfg}")
    runs = {}
    for engine in args.engine:
        adapter = ENGINES[engine](vlm.model, vlm.processor, device=args.device)
        build_trees(adapter, prompts[:1], warm_up)
        runs[engine] = ours, n_ours, t_ours = timed_build(adapter, prompts, cfg)
        print(f"csr {engine:<7}: {n_ours} nodes in {t_ours:.2f}s = {n_ours / t_ours:.1f} nodes/s, "
              f"{t_ours / len(prompts):.2f}s per prompt")
    if len(runs) > 1:
        (a, *_), (b, *_) = runs.values()
        print(f"engines give identical trees: {all(tree_signature(a[k]) == tree_signature(b[k]) for k in a)}")
    if args.paper_search:
        return
    base, n_base, t_base = timed_build(PerNodeGenerate(vlm), prompts, cfg)
    print(f"per-node gen: {n_base} nodes in {t_base:.2f}s = {n_base / t_base:.1f} nodes/s")
    for engine, (ours, n_ours, t_ours) in runs.items():
        same = all(tree_signature(ours[k]) == tree_signature(base[k]) for k in ours)
        print(f"speed-up {engine:<7}: {(n_ours / t_ours) / (n_base / t_base):.2f}x   identical trees: {same}")


if __name__ == "__main__":
    main()
