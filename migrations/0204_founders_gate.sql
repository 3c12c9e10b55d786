-- queue-api: the founders gate's exact cohort counter (issue 7, ADR 0204).
-- One row, created the first time the gate runs (seeded from the Customer
-- streams then) and incremented by `UPDATE ... WHERE used < threshold` in
-- the same transaction as each gated CustomerRegistered append: the row lock
-- orders concurrent gated registrations only, so the threshold is never
-- overshot and no other write waits on it.
CREATE TABLE founders_gate (
    id   int    PRIMARY KEY CHECK (id = 1),
    used bigint NOT NULL CHECK (used >= 0)
);
GRANT SELECT, INSERT, UPDATE ON founders_gate TO queue_service;
