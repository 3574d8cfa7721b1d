"""One DPO round with TRL's `DPOTrainer` and a PEFT LoRA adapter, resumable from its checkpoints.

Layout of `out_dir`:
    checkpoints/checkpoint-N/   Trainer checkpoints (adapter in safetensors; optimizer/scheduler/RNG states are
                                torch-serialised by transformers, which exact resumption needs); a resume
                                continues from the newest complete one and deletes any a kill cut short
    adapter/                    the final LoRA adapter (adapter_config.json + adapter_model.safetensors)
    steps.jsonl                 one JSON record per optimizer step, as handed to `on_log`
    result.json                 written last: the round is done, a rerun returns it without training

Under `accelerate launch` (training/launch.py) every process runs `train_dpo` on `cfg.batch_size / N` pairs a
step; rank 0 alone prunes incomplete checkpoints, writes steps.jsonl, the adapter and result.json, and calls
`on_log`, while the others wait for it before they resume from the same checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import TrainerCallback

from csr_core.validation import ConfigError
from training.dpo_config import DPOConfig, num_decoder_layers
from training.pairs import DPOExample, trl_dataset

log = logging.getLogger("csr")

STEP_METRICS = (
    "loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
    "learning_rate",
    "grad_norm",
    "rewards/image_margins",  # training.conditional.IMAGE_MARGIN_METRIC, with mDPO's terms on
)


@dataclass(frozen=True)
class TrainResult:
    adapter_dir: str
    steps: int
    seconds: float
    final_metrics: dict
    resumed_from_step: int  # 0 when training started from scratch


class _StepLogger(TrainerCallback):
    """Hands every per-step log (with step and epoch) to `on_log` and appends it to steps.jsonl; keeps the
    summary log for the result."""

    def __init__(self, sink: Callable[[dict], None] | None, step_file: Path, main: bool = True):
        self.sink = sink
        self.step_file = step_file
        self.main = main  # under several processes every one logs the same gathered values; rank 0 records them
        self.summary: dict = {}

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = dict(logs or {})
        if "train_runtime" in logs:
            self.summary = logs
            return
        if "loss" not in logs or not self.main:
            return
        record = {k: float(v) for k, v in logs.items() if k in STEP_METRICS}
        record.update(step=int(state.global_step), epoch=float(state.epoch or 0.0))
        with self.step_file.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.sink is not None:
            self.sink(dict(record))


def train_dpo(
    model_dir: str | Path,
    pairs: Sequence[DPOExample],
    cfg: DPOConfig,
    out_dir: str | Path,
    *,
    on_log: Callable[[dict], None] | None = None,
    resume: bool = True,
    callbacks: Sequence[TrainerCallback] = (),
    trust_remote_code: bool = False,
) -> TrainResult:
    """Train a LoRA adapter on `pairs` with DPO against the frozen model in `model_dir` (policy = reference).

    With `resume`, a finished round (result.json) is returned as is and an interrupted one continues from its
    last checkpoint; without it, a previous run in `out_dir` is deleted and training starts from scratch.
    `on_log` gets one dict per optimizer step: loss, rewards/{chosen,rejected,margins,accuracies},
    logps/{chosen,rejected}, learning_rate, grad_norm, step, epoch (with mDPO's terms on, also
    rewards/image_margins). Steps already trained (a finished round,
    or the steps up to the checkpoint a resumed one continues from) are replayed to it from steps.jsonl, so
    every caller sees the whole history, whichever process trained it.
    """
    out_dir = Path(out_dir)
    result_file = out_dir / "result.json"
    step_file = out_dir / "steps.jsonl"
    if resume and result_file.exists():
        _replay_steps(step_file, on_log)
        return TrainResult(**json.loads(result_file.read_text()))

    from accelerate import PartialState
    from trl import DPOTrainer

    from training.conditional import ImageConditionedDPOTrainer, crop_box

    checkpoint_dir = out_dir / "checkpoints"
    args = trl_args(cfg, checkpoint_dir, processes=launched_processes())  # sets up the process group, if any
    state = PartialState()
    main = state.is_main_process
    if main:
        if not resume:
            _clear_previous_run(out_dir)
        last_checkpoint = last_complete_checkpoint(checkpoint_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        _replay_steps(step_file, on_log, up_to=_checkpoint_step(last_checkpoint))
    state.wait_for_everyone()  # the others resume from the checkpoint rank 0 kept, after it pruned the rest
    if not main:
        last_checkpoint = last_complete_checkpoint(checkpoint_dir, delete=False)
    model, processor = load_model_and_processor(model_dir, cfg, trust_remote_code)
    logger = _StepLogger(on_log, step_file, main)
    trainer_class, extra, boxes = DPOTrainer, {}, []
    if cfg.image_conditioned:
        trainer_class = ImageConditionedDPOTrainer
        extra = {"condition_weight": cfg.image_condition_weight, "anchor_weight": cfg.anchor_weight}
        boxes = [crop_box(i, cfg.seed, cfg.image_crop_keep) for i in range(len(pairs))]
    trainer = trainer_class(
        model=model,
        ref_model=None,
        args=args,
        train_dataset=trl_dataset(pairs, eos_token=response_closer(processor, model), crop_boxes=boxes),
        processing_class=processor,
        peft_config=lora_config(cfg, model),
        callbacks=[logger, *callbacks],
        **extra,
    )
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=last_checkpoint)
    seconds = time.perf_counter() - started

    adapter_dir = out_dir / "adapter"
    _save_adapter(trainer, adapter_dir, main)
    result = TrainResult(
        adapter_dir=str(adapter_dir),
        steps=int(trainer.state.global_step),
        seconds=seconds,
        final_metrics={k: v for k, v in logger.summary.items() if isinstance(v, int | float)},
        resumed_from_step=_checkpoint_step(last_checkpoint),
    )
    if main:
        result_file.write_text(json.dumps(asdict(result), indent=2))
    state.wait_for_everyone()
    return result


def launched_processes() -> int:
    """How many processes train together: WORLD_SIZE, which `accelerate launch` (torchrun, DeepSpeed's launcher)
    sets in each; 1 in a plain process."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _save_adapter(trainer, adapter_dir: Path, main: bool) -> None:
    """The LoRA adapter in safetensors, written by rank 0. Under DeepSpeed every process takes part in gathering
    the weights first (ZeRO-3 shards them; the accelerate config must set zero3_save_16bit_model)."""
    state_dict = trainer.accelerator.get_state_dict(trainer.deepspeed) if trainer.is_deepspeed_enabled else None
    if main:
        trainer.model.save_pretrained(adapter_dir, state_dict=state_dict)


def load_model_and_processor(model_dir: str | Path, cfg: DPOConfig, trust_remote_code: bool = False):
    """Load a VLM and its processor from a local save_pretrained directory (never from the network)."""
    from transformers import AutoProcessor

    from csr_core.adapters.vlm import load_vlm_weights

    dtype = torch.bfloat16 if cfg.bf16 and _on_cuda(cfg) else torch.float32
    model = load_vlm_weights(model_dir, dtype=dtype, local_files_only=True, trust_remote_code=trust_remote_code)
    processor = AutoProcessor.from_pretrained(
        model_dir, local_files_only=True, trust_remote_code=trust_remote_code
    )
    processor.tokenizer.padding_side = "left"
    return model, processor


def response_closer(processor, model) -> str:
    """What a response must end with for DPO to see where it stops: the EOS token, unless the chat template
    already closes an assistant turn with one of the model's EOS tokens (Qwen's `<|im_end|>`, Gemma 3's
    `<end_of_turn>`, Idefics3's `<end_of_utterance>`); llava-1.5's template ends a turn with a space."""
    from csr_core.adapters.vlm import eos_token_ids

    tokenizer = processor.tokenizer
    messages = [{"role": "user", "content": [{"type": "text", "text": "q"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "RESPONSE"}]}]
    try:
        after = processor.apply_chat_template(messages, tokenize=False).rsplit("RESPONSE", 1)[-1]
    except (ValueError, TypeError):  # no chat template: nothing closes the turn
        after = ""
    closers = tokenizer.convert_ids_to_tokens(eos_token_ids(model, tokenizer))
    return "" if any(token in after for token in closers if token) else (tokenizer.eos_token or "")


def lora_config(cfg: DPOConfig, model):
    """PEFT LoRA settings for `model`: its family names the language model's module, its decoder-layer count
    resolves `cfg.lora_layers`. A scope that matches no module of the model is refused here, before training."""
    from peft import LoraConfig

    from csr_core.adapters.families import family_for

    regex = cfg.lora_target_regex(num_decoder_layers(model.config.to_dict()),
                                  family_for(model.config.model_type).decoder_scope)
    if not any(re.fullmatch(regex, name) for name, _ in model.named_modules()):
        raise ConfigError("lora_scope", f"LoRA targets {regex!r} match no module of this "
                          f"{model.config.model_type} model; check lora_scope and lora_target_modules")
    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=regex,
        bias="none",
        task_type="CAUSAL_LM",
    )


def trl_args(cfg: DPOConfig, output_dir: Path, processes: int = 1):
    """TRL's settings for `cfg`. `cfg.batch_size` is the global batch: each of `processes` processes takes
    `cfg.batch_size / processes` pairs a step, so a config trains the same steps whatever the process count."""
    from trl import DPOConfig as TrlDPOConfig

    if cfg.batch_size % processes:
        raise ConfigError("batch_size", f"{cfg.batch_size} pairs a step do not split evenly over {processes} "
                          "processes")
    on_cuda = _on_cuda(cfg)
    args = TrlDPOConfig(
        output_dir=str(output_dir),
        beta=cfg.beta,
        loss_type=list(cfg.loss_type),
        loss_weights=list(cfg.loss_weights) or None,
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.num_epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size // processes,
        gradient_accumulation_steps=cfg.grad_accum,
        warmup_steps=cfg.warmup_ratio,  # a float in [0, 1) is a ratio of total steps
        weight_decay=cfg.weight_decay,
        lr_scheduler_type=cfg.lr_scheduler,
        max_grad_norm=cfg.max_grad_norm,
        disable_dropout=cfg.disable_dropout,
        max_length=cfg.max_length,
        seed=cfg.seed,
        data_seed=cfg.seed,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        logging_steps=1,
        gradient_checkpointing=cfg.gradient_checkpointing,
        bf16=cfg.bf16 and on_cuda,
        fp16=False,
        use_cpu=not on_cuda,
        report_to=[],
        dataloader_num_workers=0,
        remove_unused_columns=False,
        disable_tqdm=True,
    )
    if args.world_size != processes:
        raise RuntimeError(f"{args.world_size} processes train together, and the per-process batch was sized for "
                           f"{processes} (WORLD_SIZE)")
    return args


def _on_cuda(cfg: DPOConfig) -> bool:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' requested but CUDA is not available")
    return cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())


def _replay_steps(step_file: Path, on_log: Callable[[dict], None] | None, up_to: int | None = None) -> None:
    """Hand the logged steps (those <= `up_to`, if given) to `on_log`; with `up_to`, forget later ones, which
    a resumed training logs again."""
    lines = step_file.read_text().splitlines() if step_file.exists() else []
    records = [json.loads(line) for line in lines if line.strip()]
    if up_to is not None:
        records = [r for r in records if r["step"] <= up_to]
        step_file.write_text("".join(json.dumps(r) + "\n" for r in records))
    if on_log is not None:
        for record in records:
            on_log(dict(record))


def _clear_previous_run(out_dir: Path) -> None:
    for name in ("result.json", "steps.jsonl", "checkpoints", "adapter"):
        path = out_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


ADAPTER_WEIGHTS = "adapter_model.safetensors"
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")  # transformers' PREFIX_CHECKPOINT_DIR-<step>


def last_complete_checkpoint(checkpoint_dir: Path, *, delete: bool = True) -> str | None:
    """The newest `checkpoint-N` that a kill did not cut short, or None; incomplete ones are deleted (with
    `delete`; the processes other than rank 0 of a launched training only skip them).

    The Trainer writes a checkpoint's adapter, optimizer, scheduler and RNG states first and
    `trainer_state.json` last, so a checkpoint is complete when that file parses and the adapter weights are
    there. An incomplete one is removed (and logged): resuming from it fails, and left in place the Trainer's
    rotation would count it among the checkpoints it keeps.
    """
    if not checkpoint_dir.is_dir():
        return None
    candidates = [p for p in checkpoint_dir.iterdir() if p.is_dir() and _CHECKPOINT.fullmatch(p.name)]
    for checkpoint in sorted(candidates, key=lambda p: _checkpoint_step(str(p)), reverse=True):
        problem = _incomplete(checkpoint)
        if problem is None:
            return str(checkpoint)
        if delete:
            log.warning("skipping incomplete DPO checkpoint %s (%s); deleting it", checkpoint, problem)
            shutil.rmtree(checkpoint)
    return None


def _incomplete(checkpoint: Path) -> str | None:
    from transformers.trainer import TRAINER_STATE_NAME

    state_file = checkpoint / TRAINER_STATE_NAME
    if not state_file.is_file():
        return f"no {TRAINER_STATE_NAME}"
    try:
        json.loads(state_file.read_text())
    except ValueError as error:
        return f"{TRAINER_STATE_NAME} does not parse: {error}"
    if not (checkpoint / ADAPTER_WEIGHTS).is_file():
        return f"no {ADAPTER_WEIGHTS}"
    return None


def _checkpoint_step(checkpoint: str | None) -> int:
    return int(Path(checkpoint).name.split("-")[-1]) if checkpoint else 0


def merge_adapter(
    base_model_dir: str | Path,
    adapter_dir: str | Path,
    out_dir: str | Path,
    *,
    trust_remote_code: bool = False,
) -> Path:
    """Merge a LoRA adapter into its base model and save a full model directory (safetensors + processor).

    The merged directory loads exactly like the base and becomes the next round's policy and reference.
    Written to a temporary sibling and renamed, so an interrupted merge never leaves a half-written model.
    """
    from peft import PeftModel
    from transformers import AutoProcessor

    from csr_core.adapters.vlm import load_vlm_weights

    out_dir = Path(out_dir)
    if (out_dir / "config.json").exists():
        return out_dir
    base = load_vlm_weights(base_model_dir, dtype="auto", local_files_only=True, trust_remote_code=trust_remote_code)
    merged = PeftModel.from_pretrained(base, str(adapter_dir), local_files_only=True).merge_and_unload()
    processor = AutoProcessor.from_pretrained(
        base_model_dir, local_files_only=True, trust_remote_code=trust_remote_code
    )
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    merged.save_pretrained(partial)
    processor.save_pretrained(partial)
    shutil.rmtree(out_dir, ignore_errors=True)
    partial.rename(out_dir)
    return out_dir
