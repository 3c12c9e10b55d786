-- Read tables (projections of the event log) and the runner checkpoints.
-- Owner: queue-projections (projections/src). Every row here is a pure fold
-- of events: no clock, no randomness. Times are event times.
--
-- `queue projections rebuild` recreates these tables with
-- `CREATE TABLE … (LIKE … INCLUDING ALL EXCLUDING INDEXES)` and then copies
-- the live tables' constraints and indexes under the same names, so:
-- no foreign keys, no sequences, no triggers on read tables, and any new
-- index or constraint added by a later migration is carried over by rebuild.

-- Projection `customers` ------------------------------------------------------

CREATE TABLE queue_customers (
    customer_id       uuid        PRIMARY KEY,
    email             text        NOT NULL UNIQUE,
    display_name      text,
    email_verified    boolean     NOT NULL,
    email_verified_at timestamptz,
    status            text        NOT NULL CHECK (status IN ('active', 'suspended')),
    status_reason     text,
    status_changed_at timestamptz,
    status_changed_by text,
    default_role      text        NOT NULL,
    legacy_id         bigint      UNIQUE,
    -- The current backup code set (queue_backup_codes.generation), if any.
    backup_codes_generation integer,
    -- The pending request (queue_email_verifications.request_sequence), if any.
    pending_verification_sequence bigint,
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL,
    -- Sequence of the last Customer event folded into this row.
    last_sequence     bigint      NOT NULL
);

-- One row per grant, plus one row (grant_id NULL, is_default) for the default
-- role every customer holds without a grant (`antlers-user`).
CREATE TABLE queue_customer_roles (
    -- grant_id for grants; UUIDv5(default-role namespace, customer_id) for the default row.
    row_id        uuid        PRIMARY KEY,
    grant_id      uuid        UNIQUE,
    customer_id   uuid        NOT NULL,
    role          text        NOT NULL,
    is_default    boolean     NOT NULL,
    ticket_id     text,
    reason        text,
    granted_by    text,
    granted_at    timestamptz NOT NULL,
    expires_at    timestamptz,
    revoked_at    timestamptz,
    revoked_by    text,
    revoke_reason text,
    CHECK (is_default = (grant_id IS NULL))
);
CREATE INDEX ON queue_customer_roles (customer_id);

-- Every backup code of every generation; a new generation voids older ones.
CREATE TABLE queue_backup_codes (
    customer_id uuid        NOT NULL,
    generation  integer     NOT NULL,
    code_index  integer     NOT NULL,
    code_hash   text        NOT NULL,
    created_at  timestamptz NOT NULL,
    redeemed_at timestamptz,
    voided      boolean     NOT NULL,
    voided_at   timestamptz,
    PRIMARY KEY (customer_id, generation, code_index)
);

-- One row per verification request; a new request supersedes the pending one.
CREATE TABLE queue_email_verifications (
    customer_id      uuid        NOT NULL,
    -- Sequence of the EmailVerificationRequested event in the Customer stream.
    request_sequence bigint      NOT NULL,
    token_hash       text        NOT NULL,
    requested_at     timestamptz NOT NULL,
    expires_at       timestamptz NOT NULL,
    status           text        NOT NULL CHECK (status IN ('pending', 'verified', 'superseded')),
    verified_at      timestamptz,
    superseded_at    timestamptz,
    PRIMARY KEY (customer_id, request_sequence)
);
CREATE INDEX ON queue_email_verifications (token_hash);

-- Projection `credentials` ----------------------------------------------------

CREATE TABLE queue_webauthn_credentials (
    credential_id     uuid        PRIMARY KEY,  -- the Credential stream id
    raw_credential_id text        NOT NULL UNIQUE, -- base64url, no padding
    customer_id       uuid        NOT NULL,
    name              text,
    aaguid            uuid,
    backup_eligible   boolean     NOT NULL,
    backup_state      boolean     NOT NULL,
    sign_count        bigint      NOT NULL,
    transports        text[]      NOT NULL,
    -- The webauthn-rs Passkey as registered (public key material, no secret).
    passkey           jsonb       NOT NULL,
    legacy_id         bigint,
    created_at        timestamptz NOT NULL,
    last_used_at      timestamptz,
    revoked_at        timestamptz,
    revoke_reason     text,
    updated_at        timestamptz NOT NULL,
    last_sequence     bigint      NOT NULL
);
CREATE INDEX ON queue_webauthn_credentials (customer_id);

-- Projection `sessions` -------------------------------------------------------

CREATE TABLE queue_sessions (
    session_id        uuid        PRIMARY KEY,
    customer_id       uuid        NOT NULL,
    -- 'webauthn' | 'backup_code'; NULL for sessions imported from legacy.
    amr               text,
    credential_id     uuid,
    family_id         uuid,
    legacy_id         bigint,
    created_at        timestamptz NOT NULL,
    last_seen_at      timestamptz NOT NULL,
    idle_timeout_secs bigint      NOT NULL,
    -- last_seen_at + idle timeout.
    idle_expires_at   timestamptz NOT NULL,
    -- The absolute expiry; a session ends at least(idle_expires_at, expires_at).
    expires_at        timestamptz NOT NULL,
    refresh_count     bigint      NOT NULL,
    -- SHA-256 (hex) of the current refresh token.
    refresh_hash      text        NOT NULL,
    revoked_at        timestamptz,
    revoke_reason     text,
    updated_at        timestamptz NOT NULL,
    last_sequence     bigint      NOT NULL
);
CREATE INDEX ON queue_sessions (customer_id);

-- Every refresh token hash a session ever had (SHA-256, not secret), so a
-- presented token — current, retired or a legacy one — finds its session.
CREATE TABLE queue_session_refresh_tokens (
    refresh_hash text        PRIMARY KEY,
    session_id   uuid        NOT NULL,
    customer_id  uuid        NOT NULL,
    issued_at    timestamptz NOT NULL,
    retired_at   timestamptz
);
CREATE INDEX ON queue_session_refresh_tokens (session_id);

-- Projection `audit` ----------------------------------------------------------

-- One row per event of a Customer, Credential or Session stream and per
-- external Audit event. The ledger seq is not known when the row is written
-- (sealing is asynchronous): readers join `ledger` on
-- (aggregate_type, aggregate_id, sequence). Rows are ordered by the global
-- order (commit_xid, insert_id), which is the ledger order.
CREATE TABLE customer_audit_events (
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    sequence       bigint      NOT NULL,
    commit_xid     bigint      NOT NULL,
    insert_id      bigint      NOT NULL,
    event_type     text        NOT NULL,
    event_version  text        NOT NULL,
    -- The Audit stream id for external events; UUIDv5 of the event's stream
    -- and sequence otherwise.
    event_id       uuid        NOT NULL UNIQUE,
    customer_id    uuid,
    -- The calling service of an external event.
    service        text,
    actor          text,
    action         text        NOT NULL,
    target         text        NOT NULL,
    ticket_id      text,
    metadata       jsonb       NOT NULL,
    occurred_at    timestamptz NOT NULL,
    recorded_at    timestamptz NOT NULL,
    hash           bytea       NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, sequence),
    UNIQUE (commit_xid, insert_id)
);
CREATE INDEX ON customer_audit_events (customer_id, commit_xid, insert_id);
CREATE INDEX ON customer_audit_events (action, commit_xid, insert_id);
CREATE INDEX ON customer_audit_events (occurred_at);

-- Runner checkpoints -----------------------------------------------------------

-- One row per projection: the last applied event in the global order, moved
-- in the same transaction as the projection's rows (exactly-once effect).
CREATE TABLE projection_checkpoints (
    name                  text        PRIMARY KEY,
    commit_xid            bigint      NOT NULL,
    insert_id             bigint      NOT NULL,
    events                bigint      NOT NULL,
    updated_at            timestamptz NOT NULL DEFAULT now(),
    -- Set while the projection is stopped at an event it cannot apply.
    failed_at             timestamptz,
    error                 text,
    failed_aggregate_type text,
    failed_aggregate_id   text,
    failed_sequence       bigint
);
INSERT INTO projection_checkpoints (name, commit_xid, insert_id, events) VALUES
    ('customers', 0, 0, 0),
    ('credentials', 0, 0, 0),
    ('sessions', 0, 0, 0),
    ('audit', 0, 0, 0);

GRANT SELECT, INSERT, UPDATE ON
    queue_customers, queue_customer_roles, queue_backup_codes, queue_email_verifications,
    queue_webauthn_credentials, queue_sessions, queue_session_refresh_tokens,
    customer_audit_events, projection_checkpoints
    TO queue_service;
