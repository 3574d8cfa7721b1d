"""Queries behind the report, the sweep table, the controls and the TRL export (read-only)."""
from __future__ import annotations

import pandas as pd

from storage.store import Store, holder_pid, writer_running

CSR_MODES = ("rank", "value")  # preference_pairs.mode of CSR's own pairs; controls write "random" | "oracle"


def read_path_rewards(store: Store, pairs_key: str) -> pd.DataFrame:
    """The complete paths a calibrate_select stage scored, in path order (leaf creation order)."""
    return store.df("SELECT * FROM path_rewards WHERE stage_key = ? ORDER BY prompt_id, leaf_id", [pairs_key])


def eval_metrics(store: Store, model_keys: list[str] | None = None) -> pd.DataFrame:
    """Model evaluation metrics (long form) of complete evaluate stages, with each stage's config as text.

    Two evaluations compare only under the same `eval_config` (same items, settings and vocabulary).
    """
    sql = ("SELECT e.stage_key AS eval_key, CAST(s.config AS VARCHAR) AS eval_config, e.model_key, e.round, "
           "e.split, e.metric, e.value, e.n FROM eval_results e JOIN stages s ON s.stage_key = e.stage_key "
           "WHERE s.stage = 'evaluate' AND s.status = 'complete'")
    params: list = []
    if model_keys is not None:
        sql += " AND e.model_key IN (SELECT unnest(?))"
        params.append(list(model_keys))
    return store.df(sql + " ORDER BY e.round, e.model_key, e.split, e.metric", params)


def model_arms(store: Store) -> pd.DataFrame:
    """Every registered model with what trained it: parent, pairs (λ, mode), DPO seed and prompt seed.

    Base models have no pairs (lam, mode and seeds NULL).
    """
    return store.df(
        "SELECT m.model_key, m.round, m.parent_key, m.pairs_key, pp.lam, pp.mode, pp.n_pairs, "
        "  TRY_CAST(json_extract_string(d.config, '$.dpo.seed') AS INTEGER) AS dpo_seed, "
        "  TRY_CAST(json_extract_string(p.config, '$.prompts.seed') AS INTEGER) AS prompt_seed "
        "FROM models m "
        "LEFT JOIN (SELECT stage_key, any_value(lam) AS lam, any_value(mode) AS mode, count(*) AS n_pairs "
        "           FROM preference_pairs GROUP BY stage_key) pp ON pp.stage_key = m.pairs_key "
        "LEFT JOIN stages d ON d.stage_key = m.model_key "
        "LEFT JOIN (SELECT DISTINCT stage_key, prompts_key FROM preference_pairs) k ON k.stage_key = m.pairs_key "
        "LEFT JOIN stages p ON p.stage_key = k.prompts_key "
        "ORDER BY m.round, m.model_key")


def pair_accuracies(store: Store) -> pd.DataFrame:
    """Preference accuracy by pairs key (the pair_accuracy stages), with the pairs' round, λ and mode."""
    return store.df(
        "SELECT json_extract_string(s.upstream, '$.pairs') AS pairs_key, e.round, pp.lam, pp.mode, "
        "  max(CASE WHEN e.metric = 'accuracy' THEN e.value END) AS accuracy, "
        "  max(CASE WHEN e.metric = 'n_tied' THEN e.value END) AS n_tied, max(e.n) AS n_pairs "
        "FROM eval_results e JOIN stages s ON s.stage_key = e.stage_key "
        "LEFT JOIN (SELECT stage_key, any_value(lam) AS lam, any_value(mode) AS mode FROM preference_pairs "
        "           GROUP BY stage_key) pp ON pp.stage_key = json_extract_string(s.upstream, '$.pairs') "
        "WHERE s.stage = 'pair_accuracy' AND s.status = 'complete' "
        "GROUP BY ALL ORDER BY e.round, pp.lam")


def pair_rewards(store: Store) -> pd.DataFrame:
    """Chosen and rejected rewards of CSR's own pairs (controls excluded), by pairs key, round, λ, mode."""
    return store.df(
        "SELECT stage_key AS pairs_key, round, lam, mode, chosen_reward, rejected_reward "
        "FROM preference_pairs WHERE mode IN (SELECT unnest(?)) ORDER BY round, lam, stage_key, prompt_id",
        [list(CSR_MODES)])


def training_summary(store: Store) -> pd.DataFrame:
    """Each DPO run: pairs, steps, seconds, and its last logged loss and reward accuracy."""
    return store.df(
        "SELECT r.stage_key AS model_key, r.pairs_key, r.n_pairs, r.steps, r.seconds, "
        "  arg_max(CASE WHEN t.name = 'loss' THEN t.value END, CASE WHEN t.name = 'loss' THEN t.step END) "
        "    AS final_loss, "
        "  arg_max(CASE WHEN t.name = 'rewards/accuracies' THEN t.value END, "
        "          CASE WHEN t.name = 'rewards/accuracies' THEN t.step END) AS final_reward_accuracy "
        "FROM training_runs r LEFT JOIN training_metrics t ON t.stage_key = r.stage_key "
        "GROUP BY ALL ORDER BY r.stage_key")


def newest_pairs_key(store: Store) -> str | None:
    """The most recently completed stage that wrote preference pairs (CSR's or a control's)."""
    return store.scalar(
        "SELECT stage_key FROM stages WHERE stage IN ('calibrate_select', 'control_pairs') AND status = 'complete' "
        "AND stage_key IN (SELECT DISTINCT stage_key FROM preference_pairs) ORDER BY ended_at DESC LIMIT 1")


def stage_status(store: Store) -> pd.DataFrame:
    """What `csr status` shows: a row per stage with live item counts, its time and error.

    A `running` stage whose process no longer holds the writer lock shows as `interrupted`: it died
    (killed, crashed, machine lost) and resumes when the same command runs again.
    """
    frame = store.df(
        "SELECT s.stage, s.stage_key, s.status, s.n_items, "
        "  (SELECT count(*) FROM stage_items i WHERE i.stage_key = s.stage_key AND i.status = 'done') AS n_done, "
        "  (SELECT count(*) FROM stage_items i WHERE i.stage_key = s.stage_key AND i.status = 'failed') AS n_failed, "
        "  round(s.seconds, 1) AS seconds, strftime(s.started_at, '%Y-%m-%d %H:%M:%S') AS started, s.pid, s.error "
        "FROM stages s ORDER BY s.started_at DESC")
    alive = holder_pid(store.path) if writer_running(store.path) else None
    gone = (frame["status"] == "running") & (frame["pid"] != alive)
    frame.loc[gone, "status"] = "interrupted"
    return frame.drop(columns="pid")


def invalid_prompt_count(store: Store) -> int:
    return int(store.scalar("SELECT count(*) FROM prompts WHERE status = 'invalid'"))


def pairs_summary(store: Store, pairs_keys: list[str]) -> pd.DataFrame:
    """Per pairs stage: pairs, mean reward gap (chosen better by the stage's own measure), response lengths."""
    return store.df(
        "SELECT stage_key AS pairs_key, count(*) AS n_pairs, "
        "avg(CASE WHEN mode = 'rank' THEN rejected_reward - chosen_reward ELSE chosen_reward - rejected_reward END)"
        " AS reward_gap, avg(len(string_split(chosen, ' '))) AS chosen_words, "
        "avg(len(string_split(rejected, ' '))) AS rejected_words "
        "FROM preference_pairs WHERE stage_key IN (SELECT unnest(?)) GROUP BY 1", [pairs_keys])


def pair_agreement(store: Store, pairs_keys: list[str], reference_key: str) -> pd.DataFrame:
    """Per pairs stage: the share of the reference stage's prompts given the same chosen and rejected paths."""
    return store.df(
        "SELECT p.stage_key AS pairs_key, avg(CASE WHEN p.chosen_nodes = r.chosen_nodes "
        "AND p.rejected_nodes = r.rejected_nodes THEN 1.0 ELSE 0.0 END) AS agreement "
        "FROM preference_pairs p JOIN preference_pairs r ON r.stage_key = ? AND r.prompt_id = p.prompt_id "
        "WHERE p.stage_key IN (SELECT unnest(?)) GROUP BY 1", [reference_key, pairs_keys])


def accuracy_of(store: Store, accuracy_keys: list[str]) -> pd.DataFrame:
    return store.df("SELECT stage_key AS accuracy_key, value AS accuracy FROM eval_results "
                    "WHERE stage_key IN (SELECT unnest(?)) AND split = 'pairs' AND metric = 'accuracy'",
                    [accuracy_keys])


def evaluations(store: Store, eval_keys: list[str] | None = None) -> pd.DataFrame:
    """Complete evaluate stages with their model, round and model path, oldest first (`eval_keys`: only those)."""
    sql = ("SELECT s.stage_key AS eval_key, json_extract_string(s.upstream, '$.model') AS model_key, "
           "  (SELECT min(e.round) FROM eval_results e WHERE e.stage_key = s.stage_key) AS round, "
           "  m.path AS model_path, s.ended_at FROM stages s "
           "LEFT JOIN models m ON m.model_key = json_extract_string(s.upstream, '$.model') "
           "WHERE s.stage = 'evaluate' AND s.status = 'complete'")
    params: list = []
    if eval_keys is not None:
        sql += " AND s.stage_key IN (SELECT unnest(?))"
        params.append(list(eval_keys))
    return store.df(sql + " ORDER BY s.ended_at, s.stage_key", params)


def eval_answers(store: Store, eval_key: str, task: str) -> pd.DataFrame:
    """An evaluation's responses of one task (describe_greedy, pope_random, ...) in their stored order."""
    return store.df("SELECT item_id, image, sample, position, question_id, question, label, response "
                    "FROM eval_responses WHERE stage_key = ? AND task = ? ORDER BY position, sample, rowid",
                    [eval_key, task])


def eval_tasks(store: Store, eval_key: str) -> list[str]:
    return [r[0] for r in store.rows("SELECT DISTINCT task FROM eval_responses WHERE stage_key = ? ORDER BY task",
                                     [eval_key])]
