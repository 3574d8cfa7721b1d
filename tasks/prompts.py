"""Stage 1, sample prompts: a seeded, fresh subset of the prompt pool for each round."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from PIL import Image

from csr_core.config import PromptConfig
from csr_core.prompts import PoolExhausted, parse_pool, sample_round
from csr_core.validation import ConfigError
from storage.artifacts import replace_stage_rows
from storage.store import open_store
from tasks.common import (
    StageSpec,
    file_sha256,
    images_fingerprint,
    logger,
    run_whole_stage,
    stage_task,
    without_paths,
)


def prompts_spec(cfg: PromptConfig, round_: int, pool_file: str, image_dir: str, pool_key: str) -> StageSpec:
    """Keyed by the pool's content (`pool_key`) and its images' names and sizes, never by where they are."""
    names = [row["image"] for row in read_prompt_file(pool_file) if isinstance(row, dict)
             and isinstance(row.get("image"), str)]
    config = {"prompts": without_paths(cfg), "round": round_, "images": images_fingerprint(image_dir, names)}
    return StageSpec("sample_prompts", config, {"pool": pool_key})


def read_prompt_file(path: str | Path) -> list:
    """The rows of a prompt file, checked whole before any work: UTF-8 JSON, a list, one valid row at least.

    Malformed rows are not an error here (the stage records them); a file no row of which is usable is.
    Raises `ConfigError("prompts.source", ...)` naming the file and the reason.
    """
    def fail(why: str) -> ConfigError:
        return ConfigError("prompts.source", f"{path}: {why}")

    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise fail("prompt file not found") from None
    except OSError as exc:
        raise fail(f"cannot read the prompt file: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise fail(f"not UTF-8 (byte {exc.start}: {exc.reason})") from None
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as exc:
        raise fail(f"not JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    if not isinstance(rows, list):
        raise fail(f"must hold a JSON list of prompt rows, got a JSON {_json_type(rows)}")
    valid, invalid = parse_pool(rows)
    if not valid:
        example = next(iter(invalid.items()), None)
        detail = f"; e.g. {example[0]}: {example[1]}" if example else ""
        raise fail(f"no valid prompt row among {len(rows)}{detail}")
    return rows


def retry_unless_bad_input(task, task_run, state) -> bool:
    """Retry transient failures only: a bad prompt file or an exhausted pool fails the same way again."""
    try:
        state.result()
    except (ConfigError, PoolExhausted):
        return False
    except Exception:
        return True
    return True


@stage_task(name="sample-prompts", retries=2, retry_delay_seconds=1, retry_condition_fn=retry_unless_bad_input)
def sample_prompts(db: str, cfg: PromptConfig, round_: int, pool_file: str, image_dir: str, pool_key: str) -> str:
    """Draw round `round_`'s prompts; record each with its image hash, or the reason it is unusable."""
    store = open_store(db)
    spec = prompts_spec(cfg, round_, pool_file, image_dir, pool_key)

    def work(key: str) -> None:
        valid, invalid = parse_pool(read_prompt_file(pool_file))
        by_id = {p.prompt_id: p for p in valid}
        picked = sample_round(list(by_id), cfg.n_per_round, round_, cfg.seed, cfg.when_exhausted)
        if len(picked) < cfg.n_per_round:
            logger().warning("round %d gets %d of prompts.n_per_round=%d prompts: the pool has %d valid prompts "
                             "(prompts.when_exhausted=%s)", round_, len(picked), cfg.n_per_round, len(by_id),
                             cfg.when_exhausted)
        records = [check_image(by_id[pid], image_dir, round_) for pid in picked]
        records += [_invalid_row(pid, reason, round_) for pid, reason in invalid.items()]
        replace_stage_rows(store, "prompts", key, pd.DataFrame(records))

    return run_whole_stage(store, spec, work)


def pool_fingerprint(pool_file: str) -> str:
    """Identity of a prompt pool file (its content hash)."""
    if not Path(pool_file).is_file():
        raise ValueError(f"prompt pool not found: {pool_file}")
    return "pool-" + file_sha256(pool_file)[:16]


def _json_type(value) -> str:
    return {dict: "object", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")


def check_image(prompt, image_dir: str, round_: int) -> dict:
    path = str(Path(image_dir) / prompt.image)
    record = {"prompt_id": prompt.prompt_id, "round": round_, "image_path": path,
              "instruction": prompt.instruction, "image_sha256": None, "status": "ok", "error": None}
    try:
        with Image.open(path) as image:
            image.verify()
        record["image_sha256"] = file_sha256(path)
    except FileNotFoundError:
        record.update(status="invalid", error=f"image not found: {path}")
    except Exception as exc:  # PIL raises many types for corrupt files
        record.update(status="invalid", error=f"unreadable image {path}: {type(exc).__name__}: {exc}")
    return record


def _invalid_row(prompt_id: str, reason: str, round_: int) -> dict:
    return {"prompt_id": prompt_id, "round": round_, "image_path": "", "instruction": None,
            "image_sha256": None, "status": "invalid", "error": f"malformed prompt row: {reason}"}
