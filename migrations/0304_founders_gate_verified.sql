-- queue-api: the founders gate counts verified customers (issue 17, item 4;
-- ADR 0205). Row 1 stays the count of registrations (the gate's mode with
-- FOUNDERS_COUNT_VERIFIED_ONLY=0); row 2 is the count of customers whose
-- email is verified, seeded from the log the first time it is used and
-- incremented in the same transaction as each EmailVerified append, so it
-- is exact under concurrency. A registration is admitted while row 2 is
-- below the threshold and takes no place itself: scripted sign-ups that
-- never verify cannot fill the cohort.
ALTER TABLE founders_gate DROP CONSTRAINT founders_gate_id_check;
ALTER TABLE founders_gate ADD CONSTRAINT founders_gate_id_check CHECK (id IN (1, 2));
