-- POPE answers keep the model's odds of "Yes" against "No" (NULL for descriptions, and where
-- eval.pope_expected is off), so the expected metrics can be recomputed and near-even questions found in SQL.
ALTER TABLE eval_responses ADD COLUMN p_yes DOUBLE;
