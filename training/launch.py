"""DPO on several processes: `accelerate launch` of this module, one `train_dpo` in each process.

`train_dpo_processes` is what the DPO stage calls. With one process it is `train_dpo` in the caller's process.
With N > 1 it writes the pairs into `out_dir/launch/` without pickle (`pairs.jsonl` plus one PNG per image,
lossless), then runs

    python -m accelerate.commands.launch --num_processes N --main_process_port P --mixed_precision M
        (--multi_gpu | --config_file F) -m training.launch out_dir/launch/spec.json

and waits for it. Each process loads the pairs and calls `train_dpo`; rank 0 alone writes steps.jsonl, the adapter
and result.json (training/dpo.py). Back in the caller, the step records are handed to `on_log` once, from
steps.jsonl, so metrics reach the store once whatever N is. A rerun after a kill resumes from the newest complete
checkpoint, under N processes too: the caller prunes incomplete checkpoints and the step records past the one kept
before it launches.

`dpo.batch_size` stays the global batch: each process takes `batch_size / N` pairs a step and DDP averages the
gradients, so N processes train what one would with the same `batch_size`, within float rounding (the losses
average over pairs; `sft`'s average over each process's tokens and `aot`'s sort within each process's pairs
differ more, and so does dropout, drawn per process).
"""
from __future__ import annotations

import ctypes
import importlib.util
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from csr_core.config import ACCELERATE_CONFIGS
from csr_core.validation import ConfigError
from training.dpo_config import DPOConfig

if TYPE_CHECKING:  # torch and transformers load only when training does; flows.inputs imports this module
    from training.dpo import TrainResult
    from training.pairs import DPOExample

log = logging.getLogger("csr")

ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = ROOT / "configs" / "accelerate"
LAUNCH_DIR = "launch"  # under the run dir: the pairs, the spec, the launcher's output
OUTPUT_TAIL_LINES = 20
PR_SET_PDEATHSIG = 1


def accelerate_config_file(name: str) -> Path | None:
    """runtime.accelerate_config as a file: None for "" (plain DDP from flags), configs/accelerate/NAME.yaml for a
    shipped name, else the path as given."""
    if not name:
        return None
    return CONFIG_DIR / f"{name}.yaml" if name in ACCELERATE_CONFIGS else Path(name).expanduser()


def deepspeed_installed() -> bool:
    return importlib.util.find_spec("deepspeed") is not None


def check_launch_settings(processes: int, accelerate_config: str, dpo: DPOConfig) -> None:
    """runtime.dpo_processes and runtime.accelerate_config, before any work: the config file is there and reads
    as accelerate's, DeepSpeed is installed when it asks for it, and the global batch splits evenly."""
    if processes > 1 and dpo.batch_size % processes:
        raise ConfigError("runtime.dpo_processes", f"dpo.batch_size {dpo.batch_size} does not split evenly over "
                          f"{processes} processes (each takes batch_size / dpo_processes pairs a step); pick a "
                          "divisor of dpo.batch_size")
    path = accelerate_config_file(accelerate_config)
    if path is None:
        return
    settings = _read_accelerate_config(path)
    if settings.get("distributed_type") == "DEEPSPEED" and not deepspeed_installed():
        raise ConfigError("runtime.accelerate_config", f"{accelerate_config} ({path}) uses DeepSpeed, which is not "
                          "installed (pip install deepspeed); or use ddp")


def _read_accelerate_config(path: Path) -> dict:
    import yaml

    field = "runtime.accelerate_config"
    if not path.is_file():
        raise ConfigError(field, f"not found: {path}")
    try:
        settings = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
    except (ValueError, yaml.YAMLError) as error:
        raise ConfigError(field, f"{path} does not parse: {str(error).splitlines()[0]}") from None
    if not isinstance(settings, dict) or "distributed_type" not in settings:
        raise ConfigError(field, f"{path} is not an accelerate config (no distributed_type)")
    return settings


def train_dpo_processes(
    model_dir: str | Path,
    pairs: Sequence[DPOExample],
    cfg: DPOConfig,
    out_dir: str | Path,
    *,
    processes: int = 1,
    accelerate_config: str = "",
    on_log: Callable[[dict], None] | None = None,
    resume: bool = True,
    trust_remote_code: bool = False,
) -> TrainResult:
    """`train_dpo` on `processes` processes (see the module docstring); the same result and `on_log` records."""
    from training.dpo import (
        TrainResult,
        _checkpoint_step,
        _clear_previous_run,
        _replay_steps,
        last_complete_checkpoint,
        train_dpo,
    )

    if processes == 1:
        return train_dpo(model_dir, pairs, cfg, out_dir, on_log=on_log, resume=resume,
                         trust_remote_code=trust_remote_code)
    check_launch_settings(processes, accelerate_config, cfg)
    out_dir = Path(out_dir)
    result_file, step_file = out_dir / "result.json", out_dir / "steps.jsonl"
    if not (resume and result_file.exists()):
        if not resume:
            _clear_previous_run(out_dir)
        kept = last_complete_checkpoint(out_dir / "checkpoints")
        out_dir.mkdir(parents=True, exist_ok=True)
        _replay_steps(step_file, None, up_to=_checkpoint_step(kept))  # forget the steps a resume logs again
        spec = write_launch_spec(model_dir, pairs, cfg, out_dir, trust_remote_code)
        run_launcher(launch_command(spec, processes, accelerate_config, cfg), out_dir / LAUNCH_DIR / "output.log")
        if not result_file.exists():
            raise RuntimeError(f"accelerate launch finished without {result_file}; see "
                               f"{out_dir / LAUNCH_DIR / 'output.log'}")
        shutil.rmtree(spec.parent / "images")  # the pairs' copies; spec.json and output.log stay
        (spec.parent / "pairs.jsonl").unlink()
    _replay_steps(step_file, on_log)
    return TrainResult(**json.loads(result_file.read_text()))


def write_launch_spec(model_dir: str | Path, pairs: Sequence[DPOExample], cfg: DPOConfig, out_dir: Path,
                      trust_remote_code: bool) -> Path:
    """The pairs as pairs.jsonl + images/N.png (an image object shared by several pairs written once) and
    spec.json."""
    launch_dir = out_dir / LAUNCH_DIR
    images = launch_dir / "images"
    images.mkdir(parents=True, exist_ok=True)
    written: dict[int, str] = {}
    with (launch_dir / "pairs.jsonl").open("w") as f:
        for pair in pairs:
            name = written.get(id(pair.image))
            if name is None:
                name = written[id(pair.image)] = f"images/{len(written):06d}.png"
                pair.image.save(launch_dir / name, format="PNG", compress_level=1)
            f.write(json.dumps({"image": name, "prompt": pair.prompt, "chosen": pair.chosen,
                                "rejected": pair.rejected}) + "\n")
    spec = {"model_dir": str(model_dir), "out_dir": str(out_dir), "pairs": "pairs.jsonl", "dpo": asdict(cfg),
            "trust_remote_code": trust_remote_code}
    spec_file = launch_dir / "spec.json"
    spec_file.write_text(json.dumps(spec, indent=2))
    return spec_file


def read_launch_spec(spec_file: Path) -> tuple[dict, list[DPOExample], DPOConfig]:
    from PIL import Image

    from training.pairs import DPOExample

    spec = json.loads(spec_file.read_text())
    pairs = []
    for line in (spec_file.parent / spec["pairs"]).read_text().splitlines():
        row = json.loads(line)
        with Image.open(spec_file.parent / row["image"]) as image:
            image.load()
            pairs.append(DPOExample(image, row["prompt"], row["chosen"], row["rejected"]))
    return spec, pairs, DPOConfig(**spec["dpo"])


def launch_command(spec_file: Path, processes: int, accelerate_config: str, cfg: DPOConfig) -> list[str]:
    """`accelerate launch` of this module on `spec_file`. With no config file, `--multi_gpu` asks for torchrun's
    one-process-per-device DDP; processes that train on CPU (`dpo.device`, or no CUDA) join over gloo."""
    from training.dpo import _on_cuda

    path = accelerate_config_file(accelerate_config)
    precision = "bf16" if cfg.bf16 and _on_cuda(cfg) else "no"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes),
               "--main_process_port", str(free_port()), "--mixed_precision", precision]
    if path is None:
        command += ["--multi_gpu", "--num_machines", "1", "--dynamo_backend", "no"]
    else:
        command += ["--config_file", str(path)]
        if _read_accelerate_config(path).get("distributed_type") == "DEEPSPEED":
            command += ["--gradient_accumulation_steps", str(cfg.grad_accum)]
    return [*command, "-m", "training.launch", str(spec_file)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_launcher(command: list[str], output: Path) -> None:
    """Run `command` in its own process group, its output to `output`; stop the group if this process is
    interrupted (and, on Linux, when it dies). A failure raises with the last lines it wrote."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    log.info("DPO on several processes: %s", " ".join(command))
    with output.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                   preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        try:
            code = process.wait()
        except BaseException:
            _stop(process)
            raise
    if code != 0:
        lines = output.read_text(errors="replace").splitlines()
        own = [line for line in lines if line.startswith("[rank")]  # what the processes wrote, torchrun's prefix
        tail = "\n".join((own or lines)[-OUTPUT_TAIL_LINES:])
        raise RuntimeError(f"accelerate launch exited with {code} (whole output in {output}); the last lines "
                           f"{'its processes' if own else 'it'} wrote:\n{tail}")


def _stop(process: subprocess.Popen) -> None:
    for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
            process.wait(timeout=wait_s)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def _die_with_parent() -> None:
    """In the launcher, before exec: the kernel sends SIGTERM when the caller dies, even by SIGKILL."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def main(argv: Sequence[str] | None = None) -> int:
    """One process of a launched training: `python -m training.launch SPEC`, under `accelerate launch`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) != 1:
        print("usage: accelerate launch ... -m training.launch SPEC_JSON", file=sys.stderr)
        return 2
    from training.dpo import train_dpo

    if sys.platform == "linux":  # torchrun starts each process in its own session: die with it, even by SIGKILL
        parent = os.getppid()
        _die_with_parent()
        if os.getppid() != parent:
            return 1
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec, pairs, cfg = read_launch_spec(Path(argv[0]))
    train_dpo(spec["model_dir"], pairs, cfg, spec["out_dir"], resume=True,
              trust_remote_code=spec["trust_remote_code"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
