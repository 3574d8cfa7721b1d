"""Where the batched search spends its time, per engine: torch.profiler's top ops and the share of the KV-cache
copies (`aten::cat`, `aten::index_select`) in the self CPU time of building the trees.

`node` is `NodeBatch` (every row with its own prefix copy, `DynamicCache` concatenating and beam-reordering it),
`shared` is `tree_attention.PrefixSharedBatch`. Same settings as bench/tree_search.py (diversity off):

    python bench/tree_profile.py                                  # tiny LLaVA built from config
    python bench/tree_profile.py --shape tiny-576 --num-prompts 8 # LLaVA-1.5's 576 image tokens
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from shapes import LLAVA_SHAPES, build_shape
from torch.profiler import ProfilerActivity, profile
from tree_search import ENGINES, load_prompts

from csr_core.adapters.vlm import VLMAdapter
from csr_core.tree import SearchConfig, build_trees

CACHE_COPIES = ("aten::cat", "aten::index_select")


def profiled_build(vlm, prompts, cfg, top: int) -> None:
    build_trees(vlm, prompts[:1], SearchConfig(**{**cfg.__dict__, "max_depth": 1}))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        build_trees(vlm, prompts, cfg)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    shares = {name: sum(e.self_cpu_time_total for e in events if e.key == name) / total for name in CACHE_COPIES}
    print(events.table(sort_by="self_cpu_time_total", row_limit=top))
    print(f"self CPU total {total / 1e6:.2f}s; " + ", ".join(f"{n}: {s:.1%}" for n, s in shares.items())
          + f" (together {sum(shares.values()):.1%})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", help="LLaVA-family save_pretrained dir (default: a tiny one from config)")
    parser.add_argument("--shape", choices=LLAVA_SHAPES, help="instead: that architecture, random weights")
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--max-depth", type=int, default=6)
    parser.add_argument("--max-response-tokens", type=int, default=120)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--top", type=int, default=12, help="ops to list per engine")
    parser.add_argument("--engine", nargs="+", choices=ENGINES, default=list(ENGINES))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.shape:
        vlm = build_shape(args.shape, "cpu", torch.float32)
    else:
        if args.model_dir is None:
            from csr_testing.tiny_models import make_tiny_llava

            args.model_dir = make_tiny_llava(Path(tempfile.mkdtemp()) / "tiny-llava")
        vlm = VLMAdapter.from_pretrained(args.model_dir)
    cfg = SearchConfig(num_token_beams=5, num_beam_groups=1, diversity_penalty=0.0, max_depth=args.max_depth,
                       max_response_tokens=args.max_response_tokens)
    prompts = load_prompts(args.num_prompts, 0)
    for engine in args.engine:
        print(f"== {engine}: {args.shape or args.model_dir}, {len(prompts)} prompts, {args.threads} thread(s)")
        profiled_build(ENGINES[engine](vlm.model, vlm.processor), prompts, cfg, args.top)


if __name__ == "__main__":
    main()
