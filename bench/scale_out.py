"""Scale-out of the sentence-tree search on Ray: prompts/s with 1 and N workers, and the scaling efficiency.

Both runs send the `TreeWorker` shards the generation stage sends (one chunk a shard) through the same
`RayExecutor`; model loading is outside the timing (each actor first runs one warm-up prompt).
Each worker gets `--threads` torch threads, so on a CPU machine N workers want N x threads free cores.

    python bench/scale_out.py                                  # tiny LLaVA from config, 1 vs 2 CPU workers
    python bench/scale_out.py --model-dir <data-dir>/world/models/vlm-base --num-prompts 32
    python bench/scale_out.py --model-dir /models/llava-1.5-7b-hf --workers 8 --gpus-per-worker 1 --device cuda
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from PIL import Image

from csr_core.config import ModelConfig, RuntimeConfig
from csr_core.reward import RewardConfig
from csr_core.tree import SearchConfig
from tasks.executors import RayExecutor, WorkerSpec, ray_connect
from tasks.generate import TreeWorker


def prompt_frame(n: int, image_dir: Path, seed: int) -> pd.DataFrame:
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        pixels = (torch.rand(64, 64, 3, generator=gen) * 255).to(torch.uint8).numpy()
        path = image_dir / f"p{i:04d}.png"
        Image.fromarray(pixels).save(path)
        rows.append({"prompt_id": f"p{i:04d}", "image_path": str(path), "instruction": "Describe this image."})
    return pd.DataFrame(rows).set_index("prompt_id")


def shards(prompts: pd.DataFrame, size: int) -> list:
    ids = list(prompts.index)
    return [(ids[i:i + size], prompts.loc[ids[i:i + size], ["image_path", "instruction"]])
            for i in range(0, len(ids), size)]


def timed_run(spec: WorkerSpec, runtime: RuntimeConfig, prompts: pd.DataFrame) -> tuple[float, int]:
    """Seconds for every shard once the actors hold their models (one warm-up shard each), and the nodes."""
    with RayExecutor(spec, runtime, "bench") as executor:
        list(executor.run(shards(prompts.iloc[:runtime.workers], 1)))
        started = time.perf_counter()
        results = [result for _, result in executor.run(shards(prompts, runtime.chunk_size))]
        seconds = time.perf_counter() - started
    return seconds, sum(len(r.rows) for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", help="a save_pretrained VLM dir (default: a tiny LLaVA built from config)")
    parser.add_argument("--num-prompts", type=int, default=16)
    parser.add_argument("--chunk-size", type=int, default=2, help="prompts a shard")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--gpus-per-worker", type=float, default=0.0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-depth", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="csr-scale-out-"))
    model_dir = args.model_dir
    if model_dir is None:
        from csr_testing.tiny_models import make_tiny_llava

        model_dir = str(make_tiny_llava(root / "tiny-llava", seed=args.seed))
    (root / "images").mkdir()
    prompts = prompt_frame(args.num_prompts, root / "images", args.seed)
    search = SearchConfig(max_depth=args.max_depth, max_new_tokens=24, max_response_tokens=96)
    results = {}
    for workers in (1, args.workers):
        runtime = RuntimeConfig(device=args.device, chunk_size=args.chunk_size, threads=args.threads,
                                progress=False, executor="ray", workers=workers,
                                gpus_per_worker=args.gpus_per_worker)
        ray_connect(runtime)
        spec = WorkerSpec(TreeWorker, {"model_dir": model_dir, "model_cfg": ModelConfig(), "runtime": runtime,
                                       "search": search, "reward": RewardConfig()})
        seconds, nodes = timed_run(spec, runtime, prompts)
        results[workers] = seconds
        print(f"{workers} worker(s): {args.num_prompts} prompts, {nodes} nodes in {seconds:.2f}s = "
              f"{args.num_prompts / seconds:.2f} prompts/s")
    speedup = results[1] / results[args.workers]
    print(f"speed-up {speedup:.2f}x on {args.workers} workers = {speedup / args.workers:.0%} of linear "
          f"(model: {model_dir}, {args.threads} thread(s) a worker, {args.chunk_size} prompts a shard)")


if __name__ == "__main__":
    main()
