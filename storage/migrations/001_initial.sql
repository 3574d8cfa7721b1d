-- csr artifact store, schema version 1.
-- Every stage artifact carries the stage_key of the stage that wrote it; a stage's slice is
-- replaced in one transaction (see storage/store.py).

CREATE TABLE stages (
    stage_key    VARCHAR PRIMARY KEY,
    stage        VARCHAR NOT NULL,
    config       JSON NOT NULL,
    upstream     JSON NOT NULL,        -- {"name": "stage_key", ...}
    csr_version  VARCHAR NOT NULL,
    status       VARCHAR NOT NULL,     -- running | complete | failed
    n_items      INTEGER,
    n_done       INTEGER DEFAULT 0,
    n_failed     INTEGER DEFAULT 0,
    started_at   TIMESTAMP,
    ended_at     TIMESTAMP,
    seconds      DOUBLE,
    error        VARCHAR
);

-- Per-item progress of item-wise stages: what makes a partial stage resumable.
CREATE TABLE stage_items (
    stage_key  VARCHAR NOT NULL,
    item_id    VARCHAR NOT NULL,
    status     VARCHAR NOT NULL,       -- done | failed
    error      VARCHAR,
    updated_at TIMESTAMP NOT NULL,
    PRIMARY KEY (stage_key, item_id)
);

CREATE TABLE world_scenes (
    stage_key    VARCHAR NOT NULL,
    scene_id     VARCHAR NOT NULL,
    split        VARCHAR NOT NULL,     -- train | pool | eval
    theme        VARCHAR NOT NULL,
    objects      JSON NOT NULL,        -- [{"name","color",...}] exact ground truth
    image_path   VARCHAR NOT NULL,
    image_sha256 VARCHAR NOT NULL
);

CREATE TABLE prompts (
    stage_key    VARCHAR NOT NULL,
    prompt_id    VARCHAR NOT NULL,
    round        INTEGER NOT NULL,
    image_path   VARCHAR NOT NULL,
    image_sha256 VARCHAR,              -- NULL when the image could not be read
    instruction  VARCHAR,
    status       VARCHAR NOT NULL,     -- ok | invalid
    error        VARCHAR
);

CREATE TABLE tree_nodes (
    stage_key     VARCHAR NOT NULL,
    prompt_id     VARCHAR NOT NULL,
    node_id       INTEGER NOT NULL,
    parent_id     INTEGER,
    depth         INTEGER NOT NULL,
    text          VARCHAR NOT NULL,
    token_count   INTEGER NOT NULL,
    logprob_sum   DOUBLE NOT NULL,
    score         DOUBLE NOT NULL,     -- length-normalised log-prob (transformers' sequences_scores)
    cum_score     DOUBLE NOT NULL,
    is_final      BOOLEAN NOT NULL,
    finish_reason VARCHAR NOT NULL,
    kept          BOOLEAN NOT NULL
);

CREATE TABLE relevance_scores (
    stage_key  VARCHAR NOT NULL,
    tree_key   VARCHAR NOT NULL,       -- the tree_nodes slice these scores belong to
    prompt_id  VARCHAR NOT NULL,
    node_id    INTEGER NOT NULL,
    scorer     VARCHAR NOT NULL,
    cosine     DOUBLE NOT NULL         -- raw cos(image, sentence); R_I = max(100 * cosine, 0)
);

CREATE TABLE path_rewards (
    stage_key      VARCHAR NOT NULL,
    prompt_id      VARCHAR NOT NULL,
    leaf_id        INTEGER NOT NULL,
    node_ids       INTEGER[] NOT NULL,
    text           VARCHAR NOT NULL,
    n_sentences    INTEGER NOT NULL,
    self_term      DOUBLE NOT NULL,
    relevance_term DOUBLE NOT NULL,
    reward         DOUBLE NOT NULL
);

CREATE TABLE preference_pairs (
    stage_key        VARCHAR NOT NULL,
    prompts_key      VARCHAR NOT NULL,
    prompt_id        VARCHAR NOT NULL,
    round            INTEGER NOT NULL,
    lam              DOUBLE NOT NULL,
    mode             VARCHAR NOT NULL,
    chosen           VARCHAR NOT NULL,
    rejected         VARCHAR NOT NULL,
    chosen_reward    DOUBLE NOT NULL,
    rejected_reward  DOUBLE NOT NULL,
    chosen_nodes     INTEGER[] NOT NULL,
    rejected_nodes   INTEGER[] NOT NULL
);

CREATE TABLE models (
    model_key    VARCHAR PRIMARY KEY,  -- the stage key that produced it, or a fingerprint for a base model
    path         VARCHAR NOT NULL,
    parent_key   VARCHAR,
    pairs_key    VARCHAR,              -- the preference_pairs slice that trained it
    round        INTEGER NOT NULL,
    created_at   TIMESTAMP NOT NULL
);

CREATE TABLE training_runs (
    stage_key     VARCHAR PRIMARY KEY,
    base_key      VARCHAR NOT NULL,
    pairs_key     VARCHAR NOT NULL,
    adapter_dir   VARCHAR NOT NULL,
    merged_dir    VARCHAR NOT NULL,
    n_pairs       INTEGER NOT NULL,
    steps         INTEGER NOT NULL,
    seconds       DOUBLE NOT NULL
);

CREATE TABLE training_metrics (
    stage_key VARCHAR NOT NULL,
    step      INTEGER NOT NULL,
    name      VARCHAR NOT NULL,        -- loss, rewards/chosen, rewards/rejected, rewards/margins, ...
    value     DOUBLE NOT NULL
);

CREATE TABLE eval_responses (
    stage_key  VARCHAR NOT NULL,
    model_key  VARCHAR NOT NULL,
    item_id    VARCHAR NOT NULL,
    task       VARCHAR NOT NULL,       -- describe_greedy | describe_sampled | pope_<split>
    sample     INTEGER NOT NULL,
    question   VARCHAR,
    label      BOOLEAN,                -- POPE ground truth
    response   VARCHAR NOT NULL
);

CREATE TABLE eval_results (
    stage_key  VARCHAR NOT NULL,
    model_key  VARCHAR NOT NULL,
    round      INTEGER NOT NULL,
    split      VARCHAR NOT NULL,       -- greedy | sampled | random | popular | adversarial | pairs
    metric     VARCHAR NOT NULL,
    value      DOUBLE,
    n          INTEGER
);
