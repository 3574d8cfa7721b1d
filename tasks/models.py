"""Loading the models the stages call. The only place tasks construct a VLM or a CLIP model."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from csr_core.config import ModelConfig, RuntimeConfig


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_vlm(model_dir: str, model_cfg: ModelConfig, runtime: RuntimeConfig, delimiters: str = "suffix",
             stop_at_eos: bool = True):
    from csr_core.adapters.vlm import VLMAdapter

    require_readable_dir(model_dir, "model")
    if runtime.threads:
        torch.set_num_threads(runtime.threads)
    dtype = getattr(torch, model_cfg.dtype)
    return VLMAdapter.from_pretrained(model_dir, device=resolve_device(runtime.device), dtype=dtype,
                                      trust_remote_code=model_cfg.trust_remote_code, delimiters=delimiters,
                                      stop_at_eos=stop_at_eos)


def load_relevance(model_dir: str, runtime: RuntimeConfig):
    """An open_clip local dir or a transformers CLIP/SigLIP/SigLIP 2 dir, by what the dir holds."""
    from csr_core.adapters.relevance import load_relevance_scorer

    require_readable_dir(model_dir, "relevance scorer")
    return load_relevance_scorer(model_dir, device=resolve_device(runtime.device))


def require_readable_dir(path: str, what: str) -> None:
    """A model dir this process can read; Ray workers see only the paths their node has (a shared filesystem)."""
    if not Path(path).is_dir() or not os.access(path, os.R_OK | os.X_OK):
        raise FileNotFoundError(f"cannot read the {what} dir {path} on this machine "
                                "(Ray workers need it at the same path: a shared filesystem)")


def register_base_model(db: str, model_dir: str) -> str:
    """Record a base model (round 0) under its fingerprint; returns its model key."""
    from storage.artifacts import register_model
    from storage.store import open_store
    from tasks.common import model_fingerprint

    key = model_fingerprint(model_dir)
    register_model(open_store(db), key, str(model_dir), 0)
    return key


def registered_model_dir(db: str, model_key: str) -> str:
    from storage.artifacts import model_path
    from storage.store import open_store

    path = model_path(open_store(db), model_key)
    if path is None:
        raise LookupError(f"no model registered under {model_key}")
    return path
