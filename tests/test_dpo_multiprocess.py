"""DPO on two processes (DDP over gloo, on CPU) against one process with the same global batch.

The DPO stage runs with `runtime.dpo_processes=2` (`accelerate launch` of training/launch.py) and with 1, on the
tiny LLaVA, 8 pairs, batch_size 4 (2 pairs a process a step), 6 steps over 3 epochs, lr 5e-3. Measured here: every
step's loss within 2e-7 of one process's (the log-probs, ~-46, within 4e-6), the adapters within 4e-7, the merged
models' logits within 1e-6, while training moved the logits by 0.8. The tests allow LOSS_ATOL, WEIGHT_ATOL and
LOGIT_ATOL (and 1e-5 relative for the other step metrics), the README's tolerance.
"""
from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from csr_core.config import ModelConfig, RuntimeConfig
from csr_testing.tiny_models import make_tiny_llava
from training.dpo_config import DPOConfig
from training.pairs import DPOExample

LOSS_ATOL = 1e-5  # per-step loss (and the other step metrics), 2 processes vs 1
WEIGHT_ATOL = 1e-5  # LoRA adapter weights
LOGIT_ATOL = 1e-4  # logits of the merged models, reloaded with AutoModelForImageTextToText
COLOURS = ("red", "blue", "green", "white", "black", "yellow", "purple", "orange")
CFG = DPOConfig.world().with_overrides(batch_size=4, max_steps=6, max_length=96, save_steps=1, learning_rate=5e-3)
TWO = RuntimeConfig(dpo_processes=2)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory):
    torch.set_num_threads(2)
    return make_tiny_llava(tmp_path_factory.mktemp("tiny_llava"))


@pytest.fixture(scope="module")
def pairs():
    return [DPOExample(image=Image.new("RGB", (20, 16), colour), prompt="<image>\nDescribe the image in detail.",
                       chosen=f"a {colour} wall and a dog.",
                       rejected="a dog and a cat on a bus near a tree." if i % 2 else "a cat.")
            for i, colour in enumerate(COLOURS)]


def _run_stage(tiny_llava, pairs, root: Path, runtime: RuntimeConfig, monkeypatch) -> dict:
    """The DPO stage (tasks/dpo.py) on its own store, pairs handed in; what it wrote and how often it logged."""
    import pandas as pd

    import tasks.dpo
    from storage.artifacts import append_training_metrics, model_path
    from storage.store import close_all, open_store

    calls: list[int] = []

    def counted(store, key, step, metrics):
        calls.append(step)
        append_training_metrics(store, key, step, metrics)

    monkeypatch.setattr(tasks.dpo, "read_pairs", lambda store, key: pd.DataFrame({"prompt_id": range(len(pairs))}))
    monkeypatch.setattr(tasks.dpo, "dpo_examples", lambda rows: list(pairs))
    monkeypatch.setattr(tasks.dpo, "append_training_metrics", counted)
    db = root / "csr.duckdb"
    key = tasks.dpo.dpo_finetune.fn(str(db), CFG, ModelConfig(), "model-base", str(tiny_llava), "pairs-x",
                                    str(root / "data"), 1, runtime=runtime)
    store = open_store(db)
    metrics = store.df("SELECT step, name, value FROM training_metrics WHERE stage_key = ? ORDER BY step, name",
                       [key])
    merged = model_path(store, key)
    close_all()
    return {"key": key, "metrics": metrics, "calls": calls, "merged": merged,
            "run_dir": root / "data" / "runs" / key}


@pytest.fixture(scope="module")
def one_process(tiny_llava, pairs, tmp_path_factory):
    with pytest.MonkeyPatch.context() as monkeypatch:
        return _run_stage(tiny_llava, pairs, tmp_path_factory.mktemp("one"), RuntimeConfig(), monkeypatch)


def _by_step(metrics, name: str) -> list[float]:
    return metrics[metrics.name == name].sort_values("step").value.tolist()


def _logits(model_dir) -> torch.Tensor:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(model_dir, local_files_only=True).eval()
    processor = AutoProcessor.from_pretrained(model_dir, local_files_only=True)
    inputs = processor(images=[Image.new("RGB", (20, 16), "red")],
                       text=["<image>\nDescribe the image in detail. a red wall and a dog."], return_tensors="pt")
    with torch.no_grad():
        return model(**inputs).logits


def test_two_processes_train_what_one_does_and_log_once(tiny_llava, pairs, one_process, tmp_path, monkeypatch):
    two = _run_stage(tiny_llava, pairs, tmp_path, TWO, monkeypatch)
    assert two["key"] == one_process["key"]  # the process count is how to run, not what: not in the key
    steps = [1, 2, 3, 4, 5, 6]
    assert two["calls"] == one_process["calls"] == steps  # each step handed to the store once
    step_file = (two["run_dir"] / "steps.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in step_file] == steps  # rank 0 alone wrote it
    counts = two["metrics"].groupby(["step", "name"]).size()
    assert set(counts) == {1} and sorted(set(two["metrics"].step)) == steps

    one_loss, two_loss = _by_step(one_process["metrics"], "loss"), _by_step(two["metrics"], "loss")
    assert one_loss[0] == pytest.approx(math.log(2), abs=1e-6) and two_loss[0] == pytest.approx(math.log(2), abs=1e-6)
    assert one_loss[-1] < one_loss[0] - 0.05  # it trained
    assert two_loss == pytest.approx(one_loss, abs=LOSS_ATOL)
    for name in ("rewards/margins", "rewards/chosen", "logps/rejected", "grad_norm"):
        assert _by_step(two["metrics"], name) == pytest.approx(_by_step(one_process["metrics"], name), rel=1e-5,
                                                              abs=LOSS_ATOL)

    from safetensors.torch import load_file

    one_adapter = load_file(one_process["run_dir"] / "adapter" / "adapter_model.safetensors")
    two_adapter = load_file(two["run_dir"] / "adapter" / "adapter_model.safetensors")
    assert one_adapter.keys() == two_adapter.keys()
    for name, weight in one_adapter.items():
        torch.testing.assert_close(two_adapter[name], weight, rtol=0, atol=WEIGHT_ATOL)

    merged_one, merged_two, base = _logits(one_process["merged"]), _logits(two["merged"]), _logits(tiny_llava)
    torch.testing.assert_close(merged_two, merged_one, rtol=0, atol=LOGIT_ATOL)
    assert (merged_one - base).abs().max() > 100 * LOGIT_ATOL  # the tolerance is far below what training moved
    assert not (two["run_dir"] / "launch" / "images").exists()  # the pairs' copies are gone; the log stays
    assert (two["run_dir"] / "launch" / "output.log").is_file()


def test_a_killed_two_process_training_resumes_from_its_last_checkpoint(tiny_llava, pairs, one_process, tmp_path,
                                                                        caplog):
    """SIGKILL to the launcher once checkpoint-2 is complete (its processes die with it); the rerun continues
    from the newest complete checkpoint on two processes and ends where an uninterrupted run does."""
    from safetensors.torch import load_file

    from training.dpo import last_complete_checkpoint
    from training.launch import launch_command, train_dpo_processes, write_launch_spec

    out = tmp_path / "run"
    spec = write_launch_spec(tiny_llava, pairs, CFG, out, False)
    with (tmp_path / "killed.log").open("w") as log:
        launcher = subprocess.Popen(launch_command(spec, 2, "", CFG), stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
    state = out / "checkpoints" / "checkpoint-2" / "trainer_state.json"
    deadline = time.monotonic() + 300
    while not state.is_file() and launcher.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(launcher.pid, signal.SIGKILL)
    launcher.wait()
    _wait_for_no_process_with(str(spec))
    assert state.is_file(), (tmp_path / "killed.log").read_text()[-3000:]
    assert not (out / "result.json").exists() and not (out / "adapter").exists()
    kept = Path(last_complete_checkpoint(out / "checkpoints", delete=False))
    cut = out / "checkpoints" / "checkpoint-6"  # as if a kill had cut the last save short: no trainer_state.json
    assert not cut.exists()
    cut.mkdir()
    (cut / "adapter_model.safetensors").write_bytes(b"")

    logs = []
    with caplog.at_level(logging.WARNING, logger="csr"):
        resumed = train_dpo_processes(tiny_llava, pairs, CFG, out, processes=2, on_log=logs.append)
    assert any(f"incomplete DPO checkpoint {cut}" in r.getMessage() for r in caplog.records)  # pruned, once
    assert resumed.resumed_from_step == int(kept.name.split("-")[1]) >= 2
    assert resumed.steps == 6
    assert [record["step"] for record in logs] == [1, 2, 3, 4, 5, 6]  # the steps past checkpoint-N logged once
    assert [json.loads(line)["step"] for line in (out / "steps.jsonl").read_text().splitlines()] == [1, 2, 3, 4, 5, 6]
    reference = load_file(one_process["run_dir"] / "adapter" / "adapter_model.safetensors")
    weights = load_file(out / "adapter" / "adapter_model.safetensors")
    for name, weight in reference.items():
        torch.testing.assert_close(weights[name], weight, rtol=0, atol=WEIGHT_ATOL)


def _wait_for_no_process_with(text: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                if text in cmdline.read_bytes().decode(errors="replace"):
                    alive.append(cmdline.parent.name)
            except OSError:
                continue
        if not alive:
            return
        time.sleep(0.2)
    raise AssertionError(f"processes {alive} outlived their launcher")


def test_a_failed_launch_raises_with_its_last_lines(pairs, tmp_path):
    from training.launch import train_dpo_processes

    missing = tmp_path / "no_model"
    with pytest.raises(RuntimeError, match="accelerate launch exited with") as error:
        train_dpo_processes(missing, pairs[:4], CFG, tmp_path / "run", processes=2)
    assert str(missing) in str(error.value)  # the processes' own error, from the output's last lines
    assert str(tmp_path / "run" / "launch" / "output.log") in str(error.value)
    assert not (tmp_path / "run" / "result.json").exists()


@pytest.mark.parametrize(("settings", "message"), [
    (["runtime.dpo_processes=2", "runtime.accelerate_config=zero9"],
     "runtime.accelerate_config: unknown 'zero9': expected '' (plain DDP), one of ddp, zero2, zero3"),
    (["runtime.dpo_processes=2", "runtime.accelerate_config=/nowhere/accelerate.yaml"],
     "runtime.accelerate_config: not found: /nowhere/accelerate.yaml"),
    (["runtime.accelerate_config=ddp"], "runtime.accelerate_config: 'ddp' needs runtime.dpo_processes > 1"),
    (["runtime.dpo_processes=0"], "runtime.dpo_processes: must be >= 1, got 0"),
    (["runtime.dpo_processes=3"],
     "runtime.dpo_processes: dpo.batch_size 4 does not split evenly over 3 processes"),
    (["runtime.dpo_processes=2", "runtime.accelerate_config=zero2"],
     f"runtime.accelerate_config: zero2 ({ROOT / 'configs' / 'accelerate' / 'zero2.yaml'}) uses DeepSpeed, which is "
     "not installed (pip install deepspeed)"),
    (["runtime.dpo_processes=4", "runtime.accelerate_config=zero3"], "runtime.accelerate_config: zero3 ("),
], ids=["unknown-name", "missing-file", "one-process", "zero-processes", "batch-not-divisible", "zero2-no-deepspeed",
        "zero3-no-deepspeed"])
def test_bad_launch_settings_stop_before_any_work(settings, message, tmp_path, capsys, monkeypatch):
    import training.launch
    from flows.cli import main

    monkeypatch.setattr(training.launch, "deepspeed_installed", lambda: False)  # as here; also where it is installed
    db = tmp_path / "never.duckdb"
    args = ["run", "--db", str(db), "--data-dir", str(tmp_path / "data")]
    for setting in settings:
        args += ["--set", setting]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"csr: error: {message}") and len(err.splitlines()) == 1, err
    assert not db.exists() and not (tmp_path / "data").exists()


def test_shipped_accelerate_configs_read_and_a_user_file_is_taken_as_given(tmp_path):
    import yaml

    from csr_core.validation import ConfigError
    from training.launch import accelerate_config_file, check_launch_settings, launch_command

    for name, kind in (("ddp", "MULTI_GPU"), ("zero2", "DEEPSPEED"), ("zero3", "DEEPSPEED")):
        settings = yaml.safe_load(accelerate_config_file(name).read_text())
        assert settings["distributed_type"] == kind and settings["use_cpu"] is False
    assert yaml.safe_load(accelerate_config_file("zero2").read_text())["deepspeed_config"]["zero_stage"] == 2
    zero3 = yaml.safe_load(accelerate_config_file("zero3").read_text())["deepspeed_config"]
    assert zero3["zero_stage"] == 3 and zero3["zero3_save_16bit_model"] is True
    mine = tmp_path / "mine.yaml"
    mine.write_text("distributed_type: MULTI_GPU\nnum_processes: 2\n")
    check_launch_settings(2, str(mine), CFG)
    command = launch_command(tmp_path / "spec.json", 2, str(mine), CFG)
    assert command[command.index("--config_file") + 1] == str(mine) and "--multi_gpu" not in command
    assert command[-3:] == ["-m", "training.launch", str(tmp_path / "spec.json")]
    assert command[command.index("--mixed_precision") + 1] == "no"  # CPU training: no bf16, whatever the file says
    (tmp_path / "bad.yaml").write_text("just: words\n")
    with pytest.raises(ConfigError, match="not an accelerate config"):
        check_launch_settings(2, str(tmp_path / "bad.yaml"), CFG)
    plain = launch_command(tmp_path / "spec.json", 2, "", CFG)
    assert "--multi_gpu" in plain and "--config_file" not in plain


def test_the_launched_pairs_read_back_as_they_were(pairs, tmp_path):
    from training.launch import read_launch_spec, write_launch_spec

    odd = [DPOExample(Image.effect_noise((24, 18), 40).convert("RGB"), "<image>\nWhat is it?", "noise.", "a cat."),
           *pairs[:2]]
    spec_file = write_launch_spec("/models/x", odd, CFG, tmp_path, True)
    assert not list(tmp_path.rglob("*.pkl")) and not list(tmp_path.rglob("*.pt"))
    spec, back, cfg = read_launch_spec(spec_file)
    assert cfg == CFG and spec["model_dir"] == "/models/x" and spec["trust_remote_code"] is True
    for original, read in zip(odd, back, strict=True):
        assert (read.prompt, read.chosen, read.rejected) == (original.prompt, original.chosen, original.rejected)
        assert read.image.mode == original.image.mode and read.image.tobytes() == original.image.tobytes()


def test_csr_run_trains_its_round_on_two_processes(tiny_run):
    """The tiny pipeline with runtime.dpo_processes=2: the flow hands runtime to the DPO stage, which launches."""
    from flows.pipeline import csr_pipeline
    from storage.store import close_all, query_rows

    summary = csr_pipeline(config_files=tiny_run["config_files"],
                           overrides=[*tiny_run["overrides"], "runtime.dpo_processes=2"])
    close_all()
    (key,) = [r["model"] for r in summary["rounds"]]
    db = tiny_run["db"]
    assert query_rows(db, "SELECT status FROM stages WHERE stage_key = ?", [key]) == [("complete",)]
    assert (tiny_run["data_dir"] / "runs" / key / "launch" / "output.log").is_file()  # it ran under accelerate
    rows = query_rows(db, "SELECT step, count(*) FILTER (name = 'loss'), count(DISTINCT name) = count(*) "
                          "FROM training_metrics WHERE stage_key = ? GROUP BY step ORDER BY step", [key])
    assert rows == [(1, 1, True), (2, 1, True)]  # tiny.yaml: 2 steps, each stored once
    (path,) = query_rows(db, "SELECT path FROM models WHERE model_key = ?", [key])[0]
    assert path
