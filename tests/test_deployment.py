"""The deployment round trip: a local Prefect server, `prefect deploy`, a process worker, a triggered run."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from storage.store import Store

ROOT = Path(__file__).resolve().parent.parent
PREFECT = str(Path(sys.executable).parent / "prefect")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _prefect(env, *args, timeout=180) -> str:
    done = subprocess.run([PREFECT, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"prefect {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _wait_healthy(env, seconds=120) -> None:
    import urllib.request

    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(env["PREFECT_API_URL"] + "/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise TimeoutError("the Prefect server did not start")


@pytest.fixture
def prefect_server(tmp_path):
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"),
           "PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_LOGGING_LEVEL": "INFO"}
    env.pop("PREFECT_API_KEY", None)
    server = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_healthy(env)
        yield env
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_deploy_trigger_and_run_writes_to_duckdb(prefect_server, tiny_run):
    env = prefect_server
    _prefect(env, "work-pool", "create", "csr-process", "--type", "process")
    _prefect(env, "deploy", "--all", "--no-prompt")
    listing = _prefect(env, "deployment", "ls")
    assert "csr-pipeline" in listing and "csr-evaluate" in listing and "csr-rescore" in listing

    params = {"config_files": tiny_run["config_files"], "overrides": tiny_run["overrides"]}
    _prefect(env, "deployment", "run", "csr-evaluate/csr-evaluate", "--params", json.dumps(params))
    worker = subprocess.run([PREFECT, "worker", "start", "--pool", "csr-process", "--run-once"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert worker.returncode == 0, worker.stdout[-3000:] + worker.stderr[-3000:]

    store = Store(tiny_run["db"], read_only=True)
    try:
        status = store.scalar("SELECT status FROM stages WHERE stage = 'evaluate'")
        assert status == "complete", worker.stdout[-3000:] + worker.stderr[-3000:]
        assert store.scalar("SELECT count(*) FROM eval_results") > 0
    finally:
        store.close()
