"""The Prefect API a `csr` command's flows report to: the configured server, or a temporary one of csr's own.

With `PREFECT_API_URL` set (in the environment or the active Prefect profile), the server must answer its
health check before any work starts. Without it, Prefect would start a temporary server itself; csr starts
the same server (Prefect's ASGI app under uvicorn, as `prefect.server.api.server.SubprocessASGIServer` does)
so that it can promise what Prefect's does not: the server stops when csr exits, whether normally, by Ctrl-C,
or by SIGTERM, and on Linux it also dies with csr after a SIGKILL (the kernel's parent-death signal), so no
server is left holding the caller's terminal.
"""
from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HEALTH_TIMEOUT_S = 10.0
PR_SET_PDEATHSIG = 1


class PrefectUnavailable(RuntimeError):
    """The Prefect API cannot be reached or started; the message says which and how to fix it."""


@contextmanager
def prefect_api() -> Iterator[str]:
    """The API URL flows will use during the block, checked or started before anything runs."""
    from prefect.settings import PREFECT_API_URL

    url = configured_api_url() or (PREFECT_API_URL.value() or "").strip()  # or a test harness's setting
    if url:
        check_reachable(url)
        yield url
        return
    with temporary_server() as url:
        yield url


def configured_api_url() -> str:
    """PREFECT_API_URL from the environment or the active profile, read without importing Prefect (1 s)."""
    url = os.environ.get("PREFECT_API_URL", "").strip()
    if url:
        return url
    home = Path(os.environ.get("PREFECT_HOME", Path.home() / ".prefect")).expanduser()
    profiles_file = Path(os.environ.get("PREFECT_PROFILES_PATH", home / "profiles.toml")).expanduser()
    try:
        profiles = tomllib.loads(profiles_file.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return ""
    active = os.environ.get("PREFECT_PROFILE") or profiles.get("active", "")
    return str(profiles.get("profiles", {}).get(active, {}).get("PREFECT_API_URL", "")).strip()


def check_reachable(url: str, timeout_s: float = HEALTH_TIMEOUT_S) -> None:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=timeout_s) as response:
            if response.status == 200:
                return
            problem = f"HTTP {response.status}"
    except Exception as exc:  # URLError, timeouts, refused connections, bad URLs
        problem = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
    raise PrefectUnavailable(f"PREFECT_API_URL={url} does not answer ({problem}); start that server, fix the "
                             "URL, or unset PREFECT_API_URL to let csr start a temporary one")


@contextmanager
def temporary_server() -> Iterator[str]:
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings

    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    with tempfile.TemporaryFile(mode="w+") as log:
        process = _start(port, log)
        try:
            _wait_healthy(process, url, float(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()), log)
            os.environ["PREFECT_API_URL"] = url  # for any subprocess the flows start
            with temporary_settings(updates={PREFECT_API_URL: url}):
                yield url
        finally:
            _send_queued_logs()
            os.environ.pop("PREFECT_API_URL", None)
            _stop(process)


def free_port() -> int:
    try:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]
    except OSError as exc:
        raise PrefectUnavailable(f"no free local port for a temporary Prefect server ({exc}); set "
                                 "PREFECT_API_URL to a running server") from None


def _start(port: int, log) -> subprocess.Popen:
    import prefect

    env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
    env.pop("PREFECT_API_URL", None)
    command = [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(prefect.__file__).parent.parent), "--factory",
               "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port),
               "--log-level", "error", "--lifespan", "on"]
    return subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                            preexec_fn=_die_with_parent if sys.platform == "linux" else None)


def _die_with_parent() -> None:
    """In the child, before exec: the kernel sends SIGTERM when csr's process dies, even by SIGKILL."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _wait_healthy(process: subprocess.Popen, url: str, timeout_s: float, log) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:
                if response.status == 200:
                    return
        except Exception:
            pass
        time.sleep(0.1)
    log.seek(0)
    tail = " ".join(log.read().split()[-40:])
    state = f"exited with code {process.returncode}" if process.poll() is not None else f"not up after {timeout_s:g} s"
    raise PrefectUnavailable(f"the temporary Prefect server {state}{': ' + tail if tail else ''}; raise "
                             "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS or set PREFECT_API_URL")


def _send_queued_logs(timeout_s: float = 10.0) -> None:
    """Run logs Prefect still holds for the API go out while the temporary server can take them (stopped first,
    it would leave them to fail at exit with "Error logging to API")."""
    if "prefect.logging.handlers" not in sys.modules:
        return
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=timeout_s)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
