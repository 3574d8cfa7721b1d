"""Stage 5, DPO fine-tune: LoRA DPO on a round's pairs, merged into the next round's policy."""
from __future__ import annotations

from pathlib import Path

from csr_core.config import ModelConfig, RuntimeConfig
from storage.artifacts import append_training_metrics, model_path, read_pairs, register_model, write_training_run
from storage.store import open_store
from tasks.common import StageSpec, run_whole_stage, stage_task
from tasks.io import dpo_examples
from training.dpo_config import DPOConfig


def dpo_spec(cfg: DPOConfig, model_key: str, pairs_key: str) -> StageSpec:
    return StageSpec("dpo_finetune", {"dpo": cfg}, {"model": model_key, "pairs": pairs_key})


@stage_task(name="dpo-finetune")
def dpo_finetune(db: str, cfg: DPOConfig, model_cfg: ModelConfig, model_key: str, model_dir: str, pairs_key: str,
                 data_dir: str, round_: int, runtime: RuntimeConfig | None = None) -> str:
    """Train (on `runtime.dpo_processes` processes), merge in this process and register the round's model;
    returns its model key (= this stage's key)."""
    from training.dpo import merge_adapter
    from training.launch import train_dpo_processes

    runtime = runtime or RuntimeConfig()

    store = open_store(db)
    spec = dpo_spec(cfg, model_key, pairs_key)
    run_dir = Path(data_dir) / "runs" / spec.key

    def work(key: str) -> None:
        rows = read_pairs(store, pairs_key)
        if rows.empty:
            raise ValueError(f"no preference pairs in {pairs_key}: nothing to train on")
        pairs = dpo_examples(rows)
        result = train_dpo_processes(model_dir, pairs, cfg, run_dir, processes=runtime.dpo_processes,
                                     accelerate_config=runtime.accelerate_config,
                                     trust_remote_code=model_cfg.trust_remote_code,
                                     on_log=lambda m: append_training_metrics(store, key, int(m.pop("step")), m))
        merged = merge_adapter(model_dir, result.adapter_dir, run_dir / "model",
                               trust_remote_code=model_cfg.trust_remote_code)
        write_training_run(store, key, {"base_key": model_key, "pairs_key": pairs_key, "adapter_dir":
                                        result.adapter_dir, "merged_dir": str(merged), "n_pairs": len(pairs),
                                        "steps": result.steps, "seconds": result.seconds})
        register_model(store, key, str(merged), round_, parent_key=model_key, pairs_key=pairs_key)

    if model_path(store, spec.key) is not None and not Path(model_path(store, spec.key)).is_dir():
        raise FileNotFoundError(f"model {spec.key} is registered at {model_path(store, spec.key)}, which is gone")
    return run_whole_stage(store, spec, work)

