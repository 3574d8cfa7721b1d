"""DPO step time and peak GPU memory with the paper preset (LoRA r128 on every linear layer, bf16 on CUDA).

Saves a model of LLaVA-1.5-7B's shape with random weights (bench/shapes.py) to a temporary directory, as
`csr run` would find a user's model, then trains `--steps` optimizer steps on synthetic 336-px pairs through
`training.dpo.train_dpo`. Prints seconds per step after the first and torch's peak allocated memory.

    python bench/dpo_step.py --device cuda                 # ~14 GB written to --tmp
    python bench/dpo_step.py --device cpu --layers 1       # smoke run
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

from shapes import llava_15_7b

from training.dpo import train_dpo
from training.dpo_config import DPOConfig
from training.pairs import DPOExample

SENTENCE = "the man is holding a red cup near the table."


def synthetic_pairs(n: int, seed: int) -> list[DPOExample]:
    gen = torch.Generator().manual_seed(seed)
    pairs = []
    for _ in range(n):
        pixels = (torch.rand(336, 336, 3, generator=gen) * 255).to(torch.uint8).numpy()
        pairs.append(DPOExample(image=Image.fromarray(pixels), prompt="<image>\nDescribe this image in detail.",
                                    chosen=" ".join([SENTENCE] * 6), rejected=" ".join([SENTENCE] * 7)))
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--tmp", default=None, help="where the model is saved (default: the system temp dir)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(dir=args.tmp))
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    started = time.perf_counter()
    vlm = llava_15_7b(args.device, dtype, args.layers)
    vlm.model.save_pretrained(work / "model")
    vlm.processor.save_pretrained(work / "model")
    del vlm
    if args.device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    print(f"model: llava-1.5-7b shape, {args.layers} layers, saved in {time.perf_counter() - started:.1f}s")

    cfg = DPOConfig.paper().with_overrides(device=args.device, max_steps=args.steps, batch_size=args.batch_size,
                                           seed=args.seed)
    stamps: list[float] = []
    result = train_dpo(work / "model", synthetic_pairs(args.steps * args.batch_size, args.seed), cfg, work / "dpo",
                       on_log=lambda record: stamps.append(time.perf_counter()))
    per_step = (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else float("nan")
    print(f"cfg: {cfg}")
    print(f"steps: {result.steps}  batch: {args.batch_size}  seconds a step (after the first): {per_step:.2f}  "
          f"train_dpo total: {result.seconds:.1f}s")
    if args.device == "cuda":
        print(f"peak GPU memory allocated: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
