"""The λ sweep and its controls: one round, trained once per arm and seed, from the same candidates.

Per seed (the round's prompt sampling seed and the DPO seed), the candidates and their relevance scores are
generated once; each arm only rebuilds pairs and trains: λ arms recalibrate the stored rewards, the random
and oracle controls pick pairs among the same complete paths. Evaluation settings (and their seed) stay
fixed, so every arm is measured against the same evaluation of its parent. Everything is cached by stage key:
rerunning a sweep, or extending it by a seed or an arm, only runs what is new.
"""
from __future__ import annotations

import dataclasses

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from csr_core.controls import CONTROLS
from flows.config import RunConfig, check_lams, given_or_loaded
from flows.inputs import Inputs
from flows.pipeline import Policy, candidates, evaluate_policy, policy_for_round, policy_of, prepare
from report.data import load_report_data, paired_differences, sweep_deltas, sweep_summary
from report.stats import Interval, arm_label
from report.tables import paired_markdown, sweep_markdown
from storage.store import open_store
from tasks.calibrate import calibrate_select, pair_accuracy
from tasks.controls import control_pairs, has_ground_truth
from tasks.dpo import dpo_finetune


def seeded(cfg: RunConfig, seed: int) -> RunConfig:
    """The run config with `seed` as the round's prompt sampling seed and the DPO seed."""
    return dataclasses.replace(cfg, prompts=dataclasses.replace(cfg.prompts, seed=seed),
                               dpo=cfg.dpo.with_overrides(seed=seed))


def check_arms(cfg: RunConfig, lams: list[float], controls: list[str], seeds: list[int], round_: int) -> None:
    """Fail before any work on a bad λ, control, seed list or round."""
    check_lams(cfg, lams)
    unknown = [c for c in controls if c not in CONTROLS]
    if unknown:
        raise ValueError(f"controls: unknown {unknown} (known: {', '.join(CONTROLS)})")
    if not lams and not controls:
        raise ValueError("sweep: give at least one λ or one control")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be a non-empty list of distinct integers, got {seeds}")
    if round_ < 1:
        raise ValueError(f"round must be >= 1, got {round_}")


@flow(name="csr-sweep", log_prints=True)
def sweep(config_files: list[str] | None = None, overrides: list[str] | None = None,
          lams: list[float] | None = None, controls: list[str] | None = None, seeds: list[int] | None = None,
          round_: int = 1, config: RunConfig | None = None) -> dict:
    """Train and evaluate round `round_` once per arm (each λ, each control) and seed; tabulate the changes."""
    base = given_or_loaded(config, config_files, overrides)
    lams = [float(x) for x in (lams if lams is not None else [base.reward.lam])]
    controls, seeds = list(controls or []), [int(s) for s in (seeds if seeds is not None else [base.prompts.seed])]
    check_arms(base, lams, controls, seeds, round_)
    inputs = prepare(base)
    skipped = {}
    if "oracle" in controls and not has_ground_truth(inputs.pool_file, inputs.vocab_file):
        skipped["oracle"] = (f"skipping the oracle control: the prompt pool {inputs.pool_file} has no ground-truth "
                             f"'objects', or there is no object vocabulary ({inputs.vocab_file or 'none'})")
        print(skipped["oracle"])
        controls.remove("oracle")
    arms = []
    for seed in seeds:
        arms += sweep_seed(seeded(base, seed), inputs, lams, controls, seed, round_)
    table = sweep_table(base.db, [a["model"] for a in arms])
    create_markdown_artifact(markdown=table["markdown"], key="csr-sweep", description="CSR λ sweep and controls")
    return {"arms": arms, "skipped": skipped, **table}


def sweep_seed(cfg: RunConfig, inputs: Inputs, lams: list[float], controls: list[str], seed: int,
               round_: int) -> list[dict]:
    """All arms of one seed: shared candidates, then pairs -> DPO -> evaluation per arm."""
    policy = policy_for_round(cfg, inputs, round_)
    parent_eval = evaluate_policy(cfg, inputs, policy, round_ - 1)
    keys = candidates(cfg, inputs, policy, round_)
    arms = []
    for lam in lams:
        reward = dataclasses.replace(cfg.reward, lam=lam)
        pairs_key = calibrate_select(cfg.db, reward, keys["tree"], keys["relevance"], keys["prompts"])
        arms.append(train_arm(cfg, inputs, policy, round_, arm_label(lam, reward.mode), seed, pairs_key, keys))
    if controls:
        paths_key = calibrate_select(cfg.db, cfg.reward, keys["tree"], keys["relevance"], keys["prompts"])
        for control in controls:
            pairs_key = control_pairs(cfg.db, control, seed, paths_key, inputs.pool_file, inputs.vocab_file)
            arms.append(train_arm(cfg, inputs, policy, round_, control, seed, pairs_key, keys))
    for arm in arms:
        arm["parent_eval"] = parent_eval
    return arms


def train_arm(cfg: RunConfig, inputs: Inputs, policy: Policy, round_: int, arm: str, seed: int, pairs_key: str,
              keys: dict) -> dict:
    accuracy = pair_accuracy(cfg.db, pairs_key, inputs.pool_file, inputs.vocab_file)
    model = dpo_finetune(cfg.db, cfg.dpo, cfg.model, policy.key, policy.path, pairs_key, cfg.data_dir, round_,
                         runtime=cfg.runtime)
    evaluation = evaluate_policy(cfg, inputs, policy_of(cfg, model), round_)
    return {"arm": arm, "seed": seed, "round": round_, **keys, "pairs": pairs_key, "pair_accuracy": accuracy,
            "model": model, "eval": evaluation}


def sweep_table(db: str, model_keys: list[str]) -> dict:
    """Per seed and per arm (mean and 95% interval over seeds): changes vs the parent, and the Markdown table."""
    data = load_report_data(open_store(db), model_keys)
    deltas = sweep_deltas(data, model_keys)
    summary = sweep_summary(deltas, data)
    paired = paired_differences(deltas)
    markdown = sweep_markdown(summary) + ("\n\n" + paired_markdown(paired) if paired else "")
    print(markdown)
    per_seed = []
    if not deltas.empty:
        for (arm, seed, model), group in deltas.groupby(["arm", "seed", "model_key"], sort=True):
            changes = {f"{r.split}/{r.metric}": r.delta for r in group.itertuples()}
            per_seed.append({"arm": arm, "seed": int(seed), "model": model, "delta": changes})
    return {"per_seed": per_seed, "summary": [_plain_row(r) for r in summary],
            "paired": [_plain_row(r) for r in paired], "markdown": markdown}


def _plain_row(row: dict) -> dict:
    """Intervals as {"mean", "ci95", "n"} (JSON-able)."""
    return {key: {"mean": v.mean, "ci95": v.half_width, "n": v.n} if isinstance(v, Interval) else v
            for key, v in row.items()}
