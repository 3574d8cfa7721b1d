"""The generation flow in a child process, as a user's `csr run` would be, optionally SIGKILLed mid-stage."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GENERATE = textwrap.dedent("""
    import sys
    from flows.stages import generate_flow
    generate_flow(config_files=[sys.argv[1]], overrides=sys.argv[2:])
""")


def run_generate(config_files: list[str], overrides: list[str], kill_after_commits: int | None = None) -> int:
    """The flow's exit code; with `kill_after_commits`, SIGKILLed once it has logged that many committed chunks."""
    env = {**os.environ, "PREFECT_LOGGING_LEVEL": "INFO", "PYTHONUNBUFFERED": "1"}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.Popen([sys.executable, "-c", GENERATE, *config_files, *overrides], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    commits = 0
    for line in proc.stdout:
        if "generate_candidates" in line and "committed" in line:
            commits += 1
            if kill_after_commits is not None and commits >= kill_after_commits:
                proc.send_signal(signal.SIGKILL)
                break
    proc.wait(timeout=600)
    return proc.returncode
