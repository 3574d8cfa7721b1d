-- The process that last ran each stage, so `csr status` can tell a running stage from one whose process died.
ALTER TABLE stages ADD COLUMN pid INTEGER;
