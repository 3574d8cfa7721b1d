-- User-facing views, recreated on every open (they hold no data).

-- One row per selected preference pair, with its prompt and image. Only usable prompt rows join
-- (status 'ok'): an invalid row sharing a prompt id must never reach DPO.
CREATE OR REPLACE VIEW preference_pairs_v AS
SELECT pp.stage_key AS pairs_key, pp.round, pp.prompt_id, p.image_path, p.instruction,
       pp.chosen, pp.rejected, pp.chosen_reward, pp.rejected_reward,
       pp.chosen_reward - pp.rejected_reward AS reward_gap, pp.lam, pp.mode
FROM preference_pairs pp
JOIN prompts p ON p.stage_key = pp.prompts_key AND p.prompt_id = pp.prompt_id AND p.status = 'ok';

-- The candidate trees with their raw scores and image relevance (R_I = max(100 cos, 0)).
CREATE OR REPLACE VIEW tree_v AS
SELECT n.stage_key AS tree_key, n.prompt_id, n.node_id, n.parent_id, n.depth, n.text,
       n.token_count, n.logprob_sum, n.score, n.cum_score, exp(n.score) AS token_prob,
       n.is_final, n.finish_reason, n.kept,
       r.stage_key AS relevance_key, r.scorer, r.cosine,
       greatest(100 * r.cosine, 0) AS relevance_reward
FROM tree_nodes n
LEFT JOIN relevance_scores r
  ON r.tree_key = n.stage_key AND r.prompt_id = n.prompt_id AND r.node_id = n.node_id;

-- Stage runs, newest first, with their progress.
CREATE OR REPLACE VIEW stages_v AS
SELECT stage, stage_key, status, n_items, n_done, n_failed, seconds, started_at, ended_at, error
FROM stages ORDER BY started_at DESC;

-- Evaluation metrics by model and round, one column per split.
CREATE OR REPLACE VIEW eval_results_v AS
SELECT e.round, e.model_key, m.path AS model_path, e.split, e.metric, e.value, e.n, e.stage_key
FROM eval_results e LEFT JOIN models m ON m.model_key = e.model_key;

-- Which pairs trained which model from which parent.
CREATE OR REPLACE VIEW lineage_v AS
SELECT m.round, m.model_key, m.path, m.parent_key, parent.path AS parent_path, m.pairs_key,
       (SELECT count(*) FROM preference_pairs pp WHERE pp.stage_key = m.pairs_key) AS n_pairs
FROM models m LEFT JOIN models parent ON parent.model_key = m.parent_key;

-- CHAIR per described image, as the CHAIR tool reports it per caption: CHAIR_S (0/1), CHAIR_I, recall and the
-- hallucinated objects with the words that named them (eval.chair_mentions says whether repeats count).
CREATE OR REPLACE VIEW eval_chair_v AS
SELECT r.stage_key, e.round, r.model_key, substr(r.task, 10) AS split, r.item_id, r.image, r.sample,
       CASE WHEN len(r.hallucinated) > 0 THEN 1.0 ELSE 0.0 END AS chair_s,
       CASE WHEN len(r.mentioned) > 0 THEN len(r.hallucinated) / len(r.mentioned) ELSE 0.0 END AS chair_i,
       r.recall, r.mentioned, r.hallucinated, r.hallucinated_words, r.response
FROM eval_responses r
JOIN (SELECT DISTINCT stage_key, round FROM eval_results) e ON e.stage_key = r.stage_key
WHERE r.task LIKE 'describe_%' AND r.mentioned IS NOT NULL;
