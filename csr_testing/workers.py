"""Stage workers that misbehave on purpose, for the executors' failure tests."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tasks.generate import TreeWorker


class DiesOnceTreeWorker(TreeWorker):
    """A `TreeWorker` whose process SIGKILLs itself in the middle of the first shard any worker runs (the
    marker file, created first, makes it once across processes)."""

    def __init__(self, marker: str, **kwargs):
        super().__init__(**kwargs)
        self.marker = Path(marker)

    def __call__(self, prompts):
        try:
            self.marker.touch(exist_ok=False)
        except FileExistsError:
            return super().__call__(prompts)
        os.kill(os.getpid(), signal.SIGKILL)
