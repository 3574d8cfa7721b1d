"""Image-relevance scoring speed: batched `OpenClipRelevance.cosine` vs one call per sentence (the paper's code).

Both score the same (image, sentence) pairs; the baseline preprocesses and encodes the image and the sentence
for every pair. Prints pairs per second for each and the ratio.

    python bench/relevance.py                          # tiny open_clip model built from config
    python bench/relevance.py --model-dir <open_clip local dir> --threads 2
    python bench/relevance.py --arch ViT-L-14-336 --device cuda   # open_clip's architecture, random weights
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

from csr_core.adapters.relevance import OpenClipRelevance

WORDS = ["a", "man", "woman", "dog", "cat", "sits", "stands", "on", "the", "red", "blue", "table", "near", "car",
         "street", "tree", "holding", "ball"]


def make_pairs(num_images: int, per_image: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    images = [
        Image.fromarray((torch.rand(224, 224, 3, generator=gen) * 255).to(torch.uint8).numpy())
        for _ in range(num_images)
    ]
    texts, index = [], []
    for i in range(num_images):
        for _ in range(per_image):
            picks = torch.randint(len(WORDS), (8,), generator=gen).tolist()
            texts.append(" ".join(WORDS[j] for j in picks) + ".")
            index.append(i)
    return images, texts, index


def per_pair(scorer: OpenClipRelevance, images, texts, index) -> list[float]:
    return [scorer.cosine([images[i]], [t], [0])[0] for t, i in zip(texts, index)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", help="open_clip local dir (default: a tiny one from config)")
    parser.add_argument("--arch", help="instead: an architecture bundled with open_clip, random weights")
    parser.add_argument("--num-images", type=int, default=8)
    parser.add_argument("--sentences-per-image", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model_dir = args.model_dir
    if args.arch:
        from shapes import open_clip_arch

        model_dir, scorer = f"{args.arch} (random weights)", open_clip_arch(args.arch, args.device)
    else:
        if model_dir is None:
            from csr_testing.tiny_models import make_tiny_clip

            model_dir = make_tiny_clip(Path(tempfile.mkdtemp()) / "tiny-clip", seed=args.seed)
        scorer = OpenClipRelevance.from_pretrained(model_dir, device=args.device)
    images, texts, index = make_pairs(args.num_images, args.sentences_per_image, args.seed)
    scorer.cosine(images[:1], texts[:2], [0, 0])  # warm-up

    start = time.perf_counter()
    batched = scorer.cosine(images, texts, index)
    t_batched = time.perf_counter() - start
    start = time.perf_counter()
    single = per_pair(scorer, images, texts, index)
    t_single = time.perf_counter() - start
    max_diff = max(abs(a - b) for a, b in zip(batched, single))
    n = len(texts)
    print(f"model: {model_dir}  pairs: {n} ({args.num_images} images)  threads: {args.threads}")
    print(f"batched  : {n / t_batched:.1f} pairs/s ({t_batched:.2f}s)")
    print(f"per-pair : {n / t_single:.1f} pairs/s ({t_single:.2f}s)")
    print(f"speed-up : {t_single / t_batched:.2f}x   max |cos diff|: {max_diff:.2e}")


if __name__ == "__main__":
    main()
