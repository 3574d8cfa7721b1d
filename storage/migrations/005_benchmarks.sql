-- Benchmarks from their own files (COCO CHAIR, POPE question files): the exact sample an evaluation used, and
-- per response what CHAIR found in it.
-- eval_items: an eval_set stage's sample (role 'describe': the CHAIR images with their ground truth; 'pope':
-- the images POPE's questions were built from) and every evaluate stage's described items.
CREATE TABLE eval_items (
    stage_key  VARCHAR NOT NULL,
    role       VARCHAR NOT NULL,       -- describe | pope
    position   INTEGER NOT NULL,       -- order of the sample (ascending image id for COCO)
    item_id    VARCHAR NOT NULL,       -- COCO: the image id
    image      VARCHAR NOT NULL,       -- file name under the image folder
    objects    VARCHAR[] NOT NULL      -- ground truth, canonical names
);
-- eval_questions: an eval_set stage's POPE questions per split, in question-file order.
CREATE TABLE eval_questions (
    stage_key   VARCHAR NOT NULL,
    split       VARCHAR NOT NULL,      -- random | popular | adversarial
    position    INTEGER NOT NULL,
    question_id VARCHAR NOT NULL,
    item_id     VARCHAR NOT NULL,
    image       VARCHAR NOT NULL,
    question    VARCHAR NOT NULL,
    object      VARCHAR,               -- the object asked about; NULL for a question read from a file
    label       BOOLEAN NOT NULL
);
ALTER TABLE eval_responses ADD COLUMN position INTEGER;            -- item order (descriptions), file order (POPE)
ALTER TABLE eval_responses ADD COLUMN question_id VARCHAR;         -- POPE
ALTER TABLE eval_responses ADD COLUMN image VARCHAR;               -- the image's file name
ALTER TABLE eval_responses ADD COLUMN mentioned VARCHAR[];         -- descriptions: objects named
ALTER TABLE eval_responses ADD COLUMN hallucinated VARCHAR[];      -- ... of them not in the image
ALTER TABLE eval_responses ADD COLUMN hallucinated_words VARCHAR[]; -- ... the words that named those
ALTER TABLE eval_responses ADD COLUMN recall DOUBLE;               -- ... share of the image's objects named
