-- queue-api: WebAuthn challenges and the per-customer lookups the API makes
-- on the event log itself (authentication decisions never read lagging
-- projections).

-- Challenges are short-lived state, not events: single use (deleted when
-- presented), expired after a TTL and swept.
CREATE TABLE webauthn_challenges (
    challenge_id uuid        PRIMARY KEY,
    kind         text        NOT NULL CHECK (kind IN ('register', 'login')),
    -- The customer the ceremony is for: the new customer being registered,
    -- the signed-in customer adding a passkey, or the customer found by email
    -- at login. NULL for a discoverable login or an unknown email.
    customer_id  uuid,
    -- What complete needs besides the webauthn-rs state (email, display name, mode).
    context      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    -- webauthn-rs RegistrationState / AuthenticationState.
    state        jsonb       NOT NULL,
    created_at   timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL
);
CREATE INDEX webauthn_challenges_expiry ON webauthn_challenges (expires_at);

GRANT SELECT, INSERT, DELETE ON webauthn_challenges TO queue_service;

-- A customer's passkeys and sessions, straight from their creation events.
CREATE INDEX events_credential_customer ON events (
    (coalesce(payload->'CredentialRegistered'->>'customer_id', payload->'CredentialImported'->>'customer_id'))
) WHERE aggregate_type = 'Credential' AND event_type IN ('CredentialRegistered', 'CredentialImported');

CREATE INDEX events_session_customer ON events (
    (coalesce(payload->'SessionCreated'->>'customer_id', payload->'SessionImported'->>'customer_id'))
) WHERE aggregate_type = 'Session' AND event_type IN ('SessionCreated', 'SessionImported');
