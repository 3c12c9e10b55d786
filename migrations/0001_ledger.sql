-- Queue ledger core: chained events, global ledger, checkpoints.
-- Byte-exact semantics: docs/ledger-format.md.

-- postgres-es's table layout plus the chain and the commit-order columns.
CREATE TABLE events (
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    sequence       bigint      NOT NULL CHECK (sequence >= 1),
    event_type     text        NOT NULL,
    event_version  text        NOT NULL,
    payload        jsonb       NOT NULL,
    metadata       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    recorded_at    timestamptz NOT NULL,
    prev_hash      bytea       NOT NULL CHECK (length(prev_hash) = 32),
    hash           bytea       NOT NULL CHECK (length(hash) = 32),
    mac            bytea       NOT NULL CHECK (length(mac) = 32),
    mac_key_id     text        NOT NULL,
    -- Global order: the writing transaction's id and the insert position inside it.
    -- The sealer reads only below the committed-transaction watermark
    -- (pg_snapshot_xmin), so an event that commits late is never skipped.
    commit_xid     bigint      NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    insert_id      bigserial   NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);
CREATE INDEX events_commit_order ON events (commit_xid, insert_id);

-- The events table is append-only.
CREATE FUNCTION queue_reject_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'queue: % on % is not allowed (append-only)', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION queue_reject_change();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION queue_reject_change();

-- Global ledger: RFC 6962 Merkle leaves in a gap-free order.
CREATE TABLE ledger (
    seq            bigint PRIMARY KEY CHECK (seq >= 1),
    aggregate_type text   NOT NULL,
    aggregate_id   text   NOT NULL,
    sequence       bigint NOT NULL,
    event_hash     bytea  NOT NULL CHECK (length(event_hash) = 32),
    UNIQUE (aggregate_type, aggregate_id, sequence)
);
CREATE TRIGGER ledger_append_only BEFORE UPDATE OR DELETE ON ledger
    FOR EACH ROW EXECUTE FUNCTION queue_reject_change();
CREATE TRIGGER ledger_no_truncate BEFORE TRUNCATE ON ledger
    FOR EACH STATEMENT EXECUTE FUNCTION queue_reject_change();

-- Signed checkpoints (C2SP tlog-checkpoint). Never deleted.
CREATE TABLE checkpoints (
    tree_size  bigint PRIMARY KEY CHECK (tree_size >= 0),
    root_hash  bytea  NOT NULL CHECK (length(root_hash) = 32),
    note       text   NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER checkpoints_append_only BEFORE UPDATE OR DELETE ON checkpoints
    FOR EACH ROW EXECUTE FUNCTION queue_reject_change();
CREATE TRIGGER checkpoints_no_truncate BEFORE TRUNCATE ON checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION queue_reject_change();

-- The sealer's position: the last sealed (commit_xid, insert_id), the tree
-- size and the Merkle frontier (roots of the perfect subtrees, left to right).
CREATE TABLE sealer_state (
    id             int    PRIMARY KEY CHECK (id = 1),
    last_xid       bigint NOT NULL,
    last_insert_id bigint NOT NULL,
    tree_size      bigint NOT NULL,
    frontier       bytea  NOT NULL,
    last_checkpoint_size bigint NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now()
);
INSERT INTO sealer_state VALUES (1, 0, 0, 0, ''::bytea, -1, now());

-- Least-privilege role for the running service: it may append and read,
-- never rewrite history. Roles are cluster-wide, so create it once.
DO $$
BEGIN
    CREATE ROLE queue_service NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END $$;

GRANT SELECT, INSERT ON events, ledger, checkpoints TO queue_service;
GRANT SELECT, UPDATE ON sealer_state TO queue_service;
GRANT USAGE ON SEQUENCE events_insert_id_seq TO queue_service;
