-- λ-free parts of each complete path (per sentence, before weighting), stored once per tree, relevance scores
-- and filter settings; pairs for any λ are derived from them without the tree (csr_core/rescore.py).
CREATE TABLE path_parts (
    stage_key       VARCHAR NOT NULL,
    prompt_id       VARCHAR NOT NULL,
    path_index      INTEGER NOT NULL,     -- order of the path's leaf in the tree (the tie order)
    leaf_id         INTEGER NOT NULL,
    node_ids        INTEGER[] NOT NULL,
    text            VARCHAR NOT NULL,
    n_sentences     INTEGER NOT NULL,
    self_parts      DOUBLE[] NOT NULL,    -- rank mode: sibling ranks by cumulative self score; value: R_T
    relevance_parts DOUBLE[] NOT NULL     -- rank mode: sibling ranks by relevance; value: R_I
);
