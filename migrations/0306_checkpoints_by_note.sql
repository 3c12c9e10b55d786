-- A checkpoint row is identified by its tree size *and* its signed note, so a
-- row pre-inserted at a future tree size (by anyone with INSERT on the table)
-- can no longer make the sealer's own `ON CONFLICT DO NOTHING` drop the real
-- signed checkpoint at that size (issue 17). `queue verify` reports the
-- foreign row (its signature does not verify); readers take the newest note
-- that verifies. Signatures are deterministic (Ed25519), so the sealer
-- writing the same checkpoint twice is still one row.
ALTER TABLE checkpoints DROP CONSTRAINT checkpoints_pkey;
ALTER TABLE checkpoints ADD PRIMARY KEY (tree_size, note);
