"""Shared fixtures: a Prefect test server, and one tiny miniature world built once per session."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    import torch

    skips = {"gpu": None if torch.cuda.is_available() else pytest.mark.skip(reason="gpu: no CUDA device"),
             "slow": None if config.getoption("--run-slow") else pytest.mark.skip(reason="slow: run with --run-slow")}
    for item in items:
        for marker, skip in skips.items():
            if skip is not None and marker in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory, prefect_harness):
    """A tiny world built once: its data dir and a DuckDB file holding the world stages."""
    from flows.config import load_config
    from flows.pipeline import world_flow
    from storage.store import close_all

    root = tmp_path_factory.mktemp("world")
    overrides = [f"db={root / 'world.duckdb'}", f"data_dir={root / 'data'}"]
    world_flow(config_files=[str(ROOT / "configs" / "tiny.yaml")], overrides=overrides)
    close_all()
    cfg = load_config([ROOT / "configs" / "tiny.yaml"], overrides)
    return {"db": Path(cfg.db), "data_dir": Path(cfg.data_dir)}


@pytest.fixture
def tiny_run(tiny_world, tmp_path):
    """Settings for a tiny CSR run on a private copy of the session's world database."""
    from storage.store import close_all

    db = tmp_path / "csr.duckdb"
    shutil.copy(tiny_world["db"], db)
    yield {"config_files": [str(ROOT / "configs" / "tiny.yaml")],
           "overrides": [f"db={db}", f"data_dir={tiny_world['data_dir']}"], "db": db,
           "data_dir": tiny_world["data_dir"], "world_db": tiny_world["db"]}
    close_all()
