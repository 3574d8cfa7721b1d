"""Stage keys: a stable hash of what a stage computes from.

A key changes when the stage's validated config, any upstream stage key or the csr version
changes, and only then; so a stage whose key is complete in the store need not run again.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from csr_core import __version__


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace; dataclasses become dicts, tuples lists."""
    return json.dumps(plain_data(value), sort_keys=True, separators=(",", ":"), allow_nan=False)


def stage_key(stage: str, config: Any, upstream: Mapping[str, str], version: str = __version__) -> str:
    payload = canonical_json({"stage": stage, "config": config, "upstream": dict(upstream), "version": version})
    return f"{stage}-{hashlib.sha256(payload.encode()).hexdigest()[:16]}"


def plain_data(value: Any) -> Any:
    """Dataclasses as dicts, tuples as lists: the form configs are hashed and stored in."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain_data(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): plain_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_data(v) for v in value]
    return value
