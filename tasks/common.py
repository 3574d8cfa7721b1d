"""What every stage task shares: its key, the skip-when-complete check, item-wise resume."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from csr_core.config import RuntimeConfig
from csr_core.keys import stage_key
from storage import stages
from storage.artifacts import write_items
from storage.store import Store
from tasks.executors import WorkerSpec, executor_for


def stage_task(**options: Any):
    """Make a stage function a Prefect task, built on its first call; `.fn` calls the function itself.

    Building lazily keeps Prefect out of commands that run stages directly (`csr rescore` with no Prefect API
    configured), which then start in a fraction of a second. DuckDB decides what is complete, so Prefect's
    own result caching stays off.
    """
    def wrap(fn: Callable) -> StageTask:
        return StageTask(fn, options)

    return wrap


class StageTask:
    def __init__(self, fn: Callable, options: dict[str, Any]):
        self.fn, self.options, self._task = fn, options, None
        functools.update_wrapper(self, fn)

    def __call__(self, *args, **kwargs):
        if self._task is None:
            from prefect import task
            from prefect.cache_policies import NONE

            self._task = task(cache_policy=NONE, persist_result=False, **self.options)(self.fn)
        return self._task(*args, **kwargs)

log = logging.getLogger("csr")


def logger():
    """Prefect's run logger inside a run, the module logger outside one (plain function calls).

    A process that never imported Prefect is in no run, and importing it just to find out costs a second.
    """
    if "prefect" not in sys.modules:
        return log
    try:
        from prefect.logging import get_run_logger

        return get_run_logger()
    except Exception:
        return log


@dataclass(frozen=True)
class StageSpec:
    """A stage instance: its name, the config it hashes, its upstream stage keys."""

    stage: str
    config: Any
    upstream: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return stage_key(self.stage, self.config, self.upstream)


def skip_if_complete(store: Store, spec: StageSpec) -> bool:
    if stages.is_complete(store, spec.key):
        logger().info("cache hit: %s %s is complete, skipping", spec.stage, spec.key)
        return True
    return False


def run_whole_stage(store: Store, spec: StageSpec, work: Callable[[str], None], n_items: int | None = None) -> str:
    """Run a stage that writes its slice in one go (`work(key)`), unless its key is complete."""
    if skip_if_complete(store, spec):
        return spec.key
    stages.begin_stage(store, spec.stage, spec.key, spec.config, spec.upstream, n_items)
    try:
        work(spec.key)
    except BaseException as exc:
        stages.finish_stage(store, spec.key, "failed", f"{type(exc).__name__}: {exc}")
        raise
    stages.finish_stage(store, spec.key)
    return spec.key


@dataclass
class ChunkResult:
    """What processing one chunk of items produced: rows for the stage's table, and failures."""

    rows: pd.DataFrame
    done: list[str]
    failed: dict[str, str] = field(default_factory=dict)


def run_item_stage(
    store: Store,
    spec: StageSpec,
    *,
    table: str,
    items: Sequence[str],
    worker: WorkerSpec,
    prepare: Callable[[list[str]], Any],
    runtime: RuntimeConfig,
    chunk_size: int | None = None,
    retry_failed: bool = False,
) -> str:
    """Run an item-wise stage: skip finished items, commit each chunk's rows and progress together.

    Each chunk of `chunk_size` items (default `runtime.chunk_size`) is one shard: `prepare(chunk)` builds its
    payload here (reading DuckDB), `worker` computes its `ChunkResult` in this process or on a Ray actor
    (`runtime.executor`), and this process commits it as it arrives. A crash loses at most the chunks in
    flight; the rerun resumes at the first unfinished item. Workers are built only when some item is left to
    do. Failed items are recorded and skipped on resume; `retry_failed` runs them again, in a complete stage too.
    """
    n_failed = stages.n_failed_items(store, spec.key) if retry_failed else 0
    retry = n_failed > 0
    if retry:
        logger().info("%s %s: retrying %d failed items", spec.stage, spec.key, n_failed)
    elif skip_if_complete(store, spec):
        return spec.key
    stages.begin_stage(store, spec.stage, spec.key, spec.config, spec.upstream, len(items))
    finished = stages.finished_items(store, spec.key, retry_failed=retry)
    todo = [item for item in items if item not in finished]
    if finished:
        logger().info("resuming %s %s: %d of %d items already done", spec.stage, spec.key, len(finished), len(items))
    try:
        if todo:
            shards = ((chunk, prepare(chunk)) for chunk in chunked(todo, chunk_size or runtime.chunk_size))
            with executor_for(worker, runtime, spec.stage) as executor:
                _commit_shards(store, spec, table, executor.run(shards), len(items), len(items) - len(todo),
                               runtime.progress)
    except BaseException as exc:
        stages.finish_stage(store, spec.key, "failed", f"{type(exc).__name__}: {exc}")
        raise
    stages.finish_stage(store, spec.key)
    return spec.key


def _commit_shards(store: Store, spec: StageSpec, table: str, results: Iterable[tuple[list[str], ChunkResult]],
                   total: int, done: int, show_progress: bool) -> None:
    with tqdm(total=total, initial=done, desc=spec.stage, disable=not show_progress, unit="item",
              leave=False) as bar:
        for chunk, result in results:
            write_items(store, table, spec.key, result.rows, result.done, result.failed)
            for item, reason in result.failed.items():
                logger().warning("%s: item %s failed: %s", spec.stage, item, reason)
            bar.update(len(chunk))
            logger().info("%s %s: committed %d/%d items", spec.stage, spec.key, bar.n, total)


def chunked(items: Sequence[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# Where a stage's files are: never part of its key (their content is).
PATH_FIELDS = ("source", "image_dir", "vocab", "coco_dir", "pope_files", "pope_image_dir")


def without_paths(config) -> dict:
    """A config dataclass as key data, less the fields that only say where files are."""
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in PATH_FIELDS}


def images_fingerprint(image_dir: str | Path, names: Iterable[str]) -> str:
    """Identity of the images a prompt or eval file names: each name with its file size.

    Relative names and sizes, not the directory, so a moved project keeps its keys; sizes, not hashes,
    so 12,856 COCO images cost a stat each per run rather than gigabytes of reading.
    """
    digest = hashlib.sha256()
    for name in sorted(set(names)):
        try:
            size = (Path(image_dir) / name).stat().st_size
        except (OSError, ValueError):  # missing, or a name the file system cannot hold
            size = -1
        digest.update(f"{name}\0{size}\n".encode("utf-8", "surrogatepass"))
    return "images-" + digest.hexdigest()[:16]


def model_fingerprint(model_dir: str | Path) -> str:
    """A cheap identity of a model directory: its config files' content and its weight files' sizes.

    Hashing the weights of a 7B model on every run would cost minutes; a retrained or merged model
    rewrites its config and weights, which changes this fingerprint.
    """
    root = Path(model_dir)
    if not root.is_dir():
        raise ValueError(f"model directory not found: {model_dir}")
    digest = hashlib.sha256()
    for path in sorted(root.iterdir()):
        if path.suffix == ".json":
            digest.update(path.name.encode() + path.read_bytes())
        elif path.suffix in (".safetensors", ".bin", ".pt"):
            digest.update(f"{path.name}:{path.stat().st_size}".encode())
    return "model-" + digest.hexdigest()[:16]


class TrainingProgress:
    """A progress bar per training phase, fed by `(phase, step, total, loss)` callbacks."""

    def __init__(self, prefix: str, show: bool = True):
        self.prefix, self.show, self.bars = prefix, show, {}

    def __call__(self, phase: str, step: int, total: int, loss: float) -> None:
        if not self.show:
            return
        bar = self.bars.get(phase)
        if bar is None:
            bar = self.bars[phase] = tqdm(total=total, desc=f"{self.prefix} {phase}", leave=False)
        bar.update(step - bar.n)
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
