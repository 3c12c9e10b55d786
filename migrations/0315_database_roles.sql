-- Least privilege that actually runs (issue 17 item 8, ADR 0212).
--
-- Three group roles (NOLOGIN; an operator makes a LOGIN role a member of
-- each, README "Production set-up"), one per process part of `queue serve`:
--
--   queue_service    the API and the mail sender: appends and reads events;
--                    reads everything else; writes only its own working
--                    tables (challenges, founders gate, mail delivery state).
--   queue_sealer     the sealer: the only role that writes ledger,
--                    checkpoints and sealer_state. It cannot write events.
--   queue_projector  the projection and outbox runners: write the read
--                    tables, their checkpoints and new mail_outbox rows.
--
-- No role but the owner (who runs `queue migrate`) may UPDATE, DELETE or
-- TRUNCATE events, ledger or checkpoints, or change a table's triggers.
--
-- Roles are cluster-wide and test databases migrate in parallel: each role
-- is created only when missing, and a concurrent creation is ignored. The
-- existence check comes first so that an owner without CREATEROLE can
-- migrate once an administrator has created the roles.
DO $$
DECLARE
    name text;
BEGIN
    FOREACH name IN ARRAY ARRAY['queue_service', 'queue_sealer', 'queue_projector'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = name) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', name);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;
            END;
        END IF;
    END LOOP;
END $$;

-- The service no longer seals: that was the sealer running inside it.
REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON ledger, checkpoints, sealer_state FROM queue_service;
-- Nor does it write read tables: the projector does.
REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON
    queue_customers, queue_customer_roles, queue_backup_codes, queue_email_verifications,
    queue_webauthn_credentials, queue_sessions, queue_session_refresh_tokens,
    customer_audit_events, projection_checkpoints
    FROM queue_service;
-- The mail sender marks delivery (attempts, lease, sent, retry, dead) and
-- nothing else: it cannot change a message's recipient, token or details.
-- Rows come from the outbox runner, a projector.
REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON mail_outbox FROM queue_service;
GRANT SELECT, INSERT ON events TO queue_service;
GRANT SELECT ON ledger, checkpoints, sealer_state TO queue_service;
GRANT SELECT ON
    queue_customers, queue_customer_roles, queue_backup_codes, queue_email_verifications,
    queue_webauthn_credentials, queue_sessions, queue_session_refresh_tokens,
    customer_audit_events, projection_checkpoints
    TO queue_service;
GRANT SELECT ON mail_outbox TO queue_service;
GRANT UPDATE (state, attempts, next_attempt_at, leased_until, last_error, last_error_at,
              sent_at, dead_at) ON mail_outbox TO queue_service;

-- The sealer reads events (checking each before sealing it) and extends the
-- ledger. The triggers of migration 0001 still refuse UPDATE/DELETE/TRUNCATE
-- on ledger and checkpoints to every role.
GRANT SELECT ON events TO queue_sealer;
GRANT SELECT, INSERT ON ledger, checkpoints TO queue_sealer;
GRANT SELECT, UPDATE ON sealer_state TO queue_sealer;

-- Projections: folds of the log into the read tables (upserts only).
GRANT SELECT ON events, ledger, checkpoints TO queue_projector;
GRANT SELECT, INSERT, UPDATE ON
    queue_customers, queue_customer_roles, queue_backup_codes, queue_email_verifications,
    queue_webauthn_credentials, queue_sessions, queue_session_refresh_tokens,
    customer_audit_events, projection_checkpoints
    TO queue_projector;
GRANT SELECT, INSERT ON mail_outbox TO queue_projector;

-- `queue serve` refuses to start against a schema that `queue migrate` has
-- not brought up to date; every role may read which migrations ran.
GRANT SELECT ON _sqlx_migrations TO queue_service, queue_sealer, queue_projector;
