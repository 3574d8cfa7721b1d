"""Where an item-wise stage's shards run: in this process, or on Ray actors that each hold the stage's models.

A stage hands over a `WorkerSpec` (a class, constructed once per worker with plain-data arguments, and called
with one shard's payload) and an iterable of `(items, payload)` shards; the executor yields `(items, result)`
as shards finish. The flow process stays the only DuckDB writer: payloads go out as plain data (paths, rows,
texts), results come back and the caller commits them as they arrive.

On Ray, the actors are long-lived (one model load each), one per GPU or CPU slot. An actor that dies mid-shard
(killed, SIGKILLed, its node lost) is replaced and its shard runs again on a live actor, so every shard's
result arrives exactly once. Inside a Prefect run every shard is a Prefect task run, so the UI shows progress
per shard. This module does not know what a shard computes, nor anything about DuckDB.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import os
import queue
import socket
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from csr_core.config import RuntimeConfig
from csr_core.validation import ConfigError

MAX_ATTEMPTS = 3  # runs of one shard, counting those cut short by a dying worker


@dataclass(frozen=True)
class WorkerSpec:
    cls: type
    kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self):
        return self.cls(**self.kwargs)


class LocalExecutor:
    """Shards in order, in this process, on one worker built at the first shard."""

    def __init__(self, spec: WorkerSpec):
        self.spec, self.worker = spec, None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def run(self, shards: Iterable[tuple[list[str], Any]]) -> Iterator[tuple[list[str], Any]]:
        for items, payload in shards:
            if self.worker is None:
                self.worker = self.spec.build()
            yield items, self.worker(payload)

    def close(self) -> None:
        self.worker = None


class WorkerDied(RuntimeError):
    """A shard's worker died every time it ran the shard."""


class RayExecutor:
    """`runtime.workers` actors on the Ray cluster `ray_connect` joined, shards dealt to whichever is free."""

    def __init__(self, spec: WorkerSpec, runtime: RuntimeConfig, stage: str):
        import ray

        ray_connect(runtime)
        _check_cluster_fits(runtime)
        options = {"num_cpus": 1, "num_gpus": runtime.gpus_per_worker, "max_restarts": 0}
        self.actor_class = ray.remote(**options)(ShardActor)
        self.spec, self.stage = spec, stage
        self.n_workers = runtime.workers
        self.idle: queue.Queue = queue.Queue()
        self.lock = threading.Lock()
        self.started = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _new_actor(self):
        with self.lock:
            self.started += 1
        return self.actor_class.remote(self.spec)

    def run(self, shards: Iterable[tuple[list[str], Any]]) -> Iterator[tuple[list[str], Any]]:
        """Results as shards finish; the actors, started at the first run, serve later runs until `close`."""
        while self.started < self.n_workers:
            self.idle.put(self._new_actor())

        def run_shard(items: list[str], payload: Any) -> Any:
            return self._run_shard(items, payload)

        shard_task = _as_task(run_shard, f"{self.stage}-shard")
        pool = concurrent.futures.ThreadPoolExecutor(self.n_workers, thread_name_prefix=f"{self.stage}-shard")
        pending: dict[concurrent.futures.Future, list[str]] = {}
        source = iter(shards)
        try:
            while True:
                while len(pending) < 2 * self.n_workers:  # payloads are built as workers free up, not all at once
                    shard = next(source, None)
                    if shard is None:
                        break
                    items, payload = shard
                    run_in_context = contextvars.copy_context().run
                    pending[pool.submit(run_in_context, shard_task, items, payload)] = items
                if not pending:
                    return
                done, _ = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
                for future in done:
                    items = pending.pop(future)
                    yield items, future.result()
        finally:
            for future in pending:
                future.cancel()
            pool.shutdown(wait=True, cancel_futures=True)

    def _run_shard(self, items: list[str], payload: Any) -> Any:
        import ray
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

        for attempt in range(1, MAX_ATTEMPTS + 1):
            actor = self.idle.get()
            try:
                result = ray.get(actor.run.remote(payload))
            except (ActorDiedError, ActorUnavailableError, RayActorError) as error:
                _log().warning("%s: a worker died running items %s..%s (attempt %d of %d): %s; retrying on "
                               "another", self.stage, items[0], items[-1], attempt, MAX_ATTEMPTS,
                               type(error).__name__)
                ray.kill(actor, no_restart=True)
                self.idle.put(self._new_actor())
                continue
            except ray.exceptions.RayTaskError as error:
                self.idle.put(actor)
                raise error.as_instanceof_cause() from None
            self.idle.put(actor)
            return result
        raise WorkerDied(f"{self.stage}: items {items[0]}..{items[-1]}: a worker died on each of "
                         f"{MAX_ATTEMPTS} attempts")

    def close(self) -> None:
        import ray

        while not self.idle.empty():
            ray.kill(self.idle.get_nowait(), no_restart=True)
        self.started = 0


class ShardActor:
    """What runs inside a Ray worker: the stage's worker, built once, called once per shard. A worker that
    cannot be built (a model dir this node cannot read) raises its error at every call, where the flow sees
    it, instead of dying, which would look like a lost node and be retried."""

    def __init__(self, spec: WorkerSpec):
        self.worker, self.error = None, None
        try:
            self.worker = spec.build()
        except Exception as error:  # handed to the flow by run()
            self.error = error

    def run(self, payload):
        if self.error is not None:
            raise RuntimeError(f"worker on {socket.gethostname()}: {type(self.error).__name__}: {self.error}") \
                from self.error
        return self.worker(payload)

    def pid(self) -> int:
        return os.getpid()


def executor_for(spec: WorkerSpec, runtime: RuntimeConfig, stage: str):
    return RayExecutor(spec, runtime, stage) if runtime.executor == "ray" else LocalExecutor(spec)


def ray_connect(runtime: RuntimeConfig) -> None:
    """Join the cluster `runtime.ray_address` names ("auto", "host:port"), or start a local one ("")."""
    import ray

    if ray.is_initialized():
        return
    quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": "WARNING"}
    if runtime.ray_address:
        ray.init(address=runtime.ray_address, logging_level="WARNING", log_to_driver=False)
    else:
        ray.init(num_cpus=max(runtime.workers, os.cpu_count() or 1), **quiet)


def check_ray_settings(runtime: RuntimeConfig) -> None:
    """Before any work: Ray is installed and the cluster address answers."""
    if runtime.executor != "ray":
        return
    try:
        import ray  # noqa: F401
    except ImportError:
        raise ConfigError("runtime.executor", "ray is not installed (pip install 'ray>=2.40')") from None
    address = runtime.ray_address
    if address in ("", "auto"):
        if address == "auto" and not (os.environ.get("RAY_ADDRESS") or _local_cluster_file_exists()):
            raise ConfigError("runtime.ray_address", "auto: no running Ray cluster found on this machine "
                              "(start one with `ray start --head`, or give host:port)")
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError("runtime.ray_address", f"expected host:port, auto or empty, got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError as error:
        raise ConfigError("runtime.ray_address", f"cannot reach a Ray cluster at {address}: {error}") from None


def _check_cluster_fits(runtime: RuntimeConfig) -> None:
    """Actors the cluster cannot place would wait forever: say so instead."""
    import ray

    have = ray.cluster_resources()
    need = {"CPU": float(runtime.workers), "GPU": runtime.workers * runtime.gpus_per_worker}
    short = {name: (amount, have.get(name, 0.0)) for name, amount in need.items() if amount > have.get(name, 0.0)}
    if short:
        detail = ", ".join(f"{amount:g} {name} needed, {has:g} in the cluster" for name, (amount, has) in short.items())
        raise ConfigError("runtime.workers", f"{runtime.workers} workers with {runtime.gpus_per_worker:g} GPUs each "
                          f"do not fit the Ray cluster ({detail})")


def _local_cluster_file_exists() -> bool:
    from pathlib import Path

    return Path("/tmp/ray/ray_current_cluster").is_file()


def _as_task(fn: Callable, name: str) -> Callable:
    """`fn` as a Prefect task when called inside a Prefect run (each call a task run), else `fn` itself."""
    if "prefect" not in sys.modules:
        return fn
    from prefect.context import TaskRunContext

    if TaskRunContext.get() is None:
        return fn
    from prefect import task
    from prefect.cache_policies import NONE

    return task(name=name, cache_policy=NONE, persist_result=False)(fn)


def _log():
    from tasks.common import logger

    return logger()
