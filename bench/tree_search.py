"""Sentence-tree building speed: csr's batched search vs one `model.generate` call per node (the paper's code).

Both build the same trees (diversity off, one beam group, so transformers can run the baseline) with the same
tree code; only the node expansion differs. Prints nodes per second for each and the ratio.

    python bench/tree_search.py                      # tiny LLaVA built from config
    python bench/tree_search.py --model-dir <data-dir>/world/models/vlm-base --threads 2
    python bench/tree_search.py --shape llava-1.5-7b --device cuda --dtype bfloat16   # random weights, on a GPU
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

from shapes import LLAVA_SHAPES, llava_15_7b

from csr_core.adapters.vlm import LlavaAdapter
from csr_core.beams import Candidate
from csr_core.tree import PromptInput, SearchConfig, build_trees, tree_signature

DATASET = ROOT.parent / "shared" / "data" / "CSR-Prompt-Dataset-12k.json"
FALLBACK_INSTRUCTIONS = ["Describe this image in detail.\n<image>", "<image>\nWhat is happening in this picture?"]


class PerNodeGenerate:
    """The baseline: every node re-encodes image + prompt + response and calls `generate` on its own."""

    def __init__(self, vlm: LlavaAdapter):
        self.vlm = vlm
        self.stop_ids = sorted(vlm.delimiter_ids | vlm.eos_ids)

    def encode_prefix(self, image, instruction):
        return image, instruction

    def decode(self, token_ids):
        return self.vlm.decode(token_ids)

    @torch.inference_mode()
    def search_sentences(self, prefixes, responses, max_new_tokens, params):
        out = []
        for (image, instruction), response, budget in zip(prefixes, responses, max_new_tokens):
            inputs = self.vlm.model_inputs([image], [instruction])
            tail = torch.tensor([list(response)], dtype=torch.long, device=inputs["input_ids"].device)
            inputs["input_ids"] = torch.cat([inputs["input_ids"], tail], dim=1)
            inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
            gen = self.vlm.model.generate(
                **inputs, num_beams=params.num_beams, num_return_sequences=params.num_beams, do_sample=False,
                max_new_tokens=budget, eos_token_id=self.stop_ids, length_penalty=params.length_penalty,
                output_scores=True, return_dict_in_generate=True, early_stopping=False,
                suppress_tokens=sorted(self.vlm.suppress_ids) or None,
            )
            start = inputs["input_ids"].shape[1]
            out.append([self._candidate(seq[start:].tolist(), float(score), budget)
                        for seq, score in zip(gen.sequences, gen.sequences_scores)])
        return out

    def _candidate(self, tokens, score, budget):
        stop = next((i for i, t in enumerate(tokens) if t in self.stop_ids), None)
        tokens = tokens[: stop + 1] if stop is not None else tokens[:budget]
        last = tokens[-1]
        reason = "eos" if last in self.vlm.eos_ids else "delimiter" if last in self.vlm.delimiter_ids else "length"
        return Candidate(tuple(tokens), score * len(tokens), score, reason)


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
    parser.add_argument("--layers", type=int, default=32, help="with --shape: decoder layers (fewer for a smoke run)")
    parser.add_argument("--num-prompts", type=int, default=4)
    parser.add_argument("--num-beams", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=70)
    parser.add_argument("--max-depth", type=int, default=4)
    parser.add_argument("--max-response-tokens", type=int, default=400)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--paper-search", action="store_true",
                        help="csr alone with the paper's 5 beams in 5 diverse groups (transformers has no baseline)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model_dir = args.model_dir
    if args.shape:
        model_dir = f"{args.shape} ({args.layers} layers, random weights, {args.dtype or 'float32'})"
        vlm = llava_15_7b(args.device, getattr(torch, args.dtype or "float32"), args.layers)
    else:
        if model_dir is None:
            from csr_testing.tiny_models import make_tiny_llava

            model_dir = make_tiny_llava(Path(tempfile.mkdtemp()) / "tiny-llava", seed=args.seed)
        vlm = LlavaAdapter.from_pretrained(model_dir, device=args.device, dtype=args.dtype)
    groups, diversity = (args.num_beams, 3.0) if args.paper_search else (1, 0.0)
    cfg = SearchConfig(
        num_token_beams=args.num_beams, num_beam_groups=groups, diversity_penalty=diversity,
        max_new_tokens=args.max_new_tokens, max_depth=args.max_depth, max_response_tokens=args.max_response_tokens,
    )
    prompts = load_prompts(args.num_prompts, args.seed)
    build_trees(vlm, prompts[:1], SearchConfig(**{**cfg.__dict__, "max_depth": 1}))  # warm-up

    ours, n_ours, t_ours = timed_build(vlm, prompts, cfg)
    print(f"model: {model_dir}  prompts: {len(prompts)}  threads: {args.threads}  cfg: {cfg}")
    print(f"csr batched : {n_ours} nodes in {t_ours:.2f}s = {n_ours / t_ours:.1f} nodes/s, "
          f"{t_ours / len(prompts):.2f}s per prompt")
    if args.paper_search:
        return
    base, n_base, t_base = timed_build(PerNodeGenerate(vlm), prompts, cfg)
    same = all(tree_signature(ours[k]) == tree_signature(base[k]) for k in ours)
    print(f"per-node gen: {n_base} nodes in {t_base:.2f}s = {n_base / t_base:.1f} nodes/s")
    print(f"speed-up    : {(n_ours / t_ours) / (n_base / t_base):.2f}x   identical trees: {same}")


if __name__ == "__main__":
    main()
