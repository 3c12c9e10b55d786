-- Email through an outbox (ADR 0208). One row per event that needs a
-- message, written by the `outbox` runner in the same transaction as its
-- checkpoint (projection_checkpoints, name 'outbox'); delivered by the
-- sender in `queue serve` (rows claimed with FOR UPDATE SKIP LOCKED and a
-- lease, so any number of instances may send).
--
-- No secret is stored: a verification row holds the token's SHA-256 (the
-- same hash the event already holds); the sender re-derives the token from
-- the MAC key (ADR 0208).
CREATE TABLE mail_outbox (
    -- UUIDv5 of the event (type/id/sequence): also the Message-ID.
    id              uuid        PRIMARY KEY,
    kind            text        NOT NULL CHECK (kind IN
                        ('email_verification', 'passkey_added', 'passkey_removed', 'backup_codes_regenerated')),
    customer_id     uuid        NOT NULL,
    recipient       text        NOT NULL,
    aggregate_type  text        NOT NULL,
    aggregate_id    text        NOT NULL,
    sequence        bigint      NOT NULL,
    event_at        timestamptz NOT NULL,
    -- email_verification: the token hash (hex) and when the link expires.
    token_hash      text,
    expires_at      timestamptz,
    -- Non-secret facts for the template (a passkey's name).
    details         jsonb       NOT NULL DEFAULT '{}',
    state           text        NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'dead')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    -- Set while a sender holds the row; a crashed sender's lease runs out.
    leased_until    timestamptz,
    last_error      text,
    -- When last_error was recorded (next_attempt_at − this = the backoff).
    last_error_at   timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    dead_at         timestamptz,
    UNIQUE (aggregate_type, aggregate_id, sequence)
);
CREATE INDEX mail_outbox_due ON mail_outbox (next_attempt_at) WHERE state = 'pending';
CREATE INDEX mail_outbox_dead ON mail_outbox (dead_at) WHERE state = 'dead';

-- The outbox runner starts at the beginning of the log; its stale rule
-- (ADR 0208) keeps history from being mailed.
INSERT INTO projection_checkpoints (name, commit_xid, insert_id, events)
    VALUES ('outbox', 0, 0, 0) ON CONFLICT (name) DO NOTHING;

GRANT SELECT, INSERT, UPDATE ON mail_outbox TO queue_service;
