-- Issue 22, ADR 0216/0218: SAML working state of the API, not events.
-- Outstanding AuthnRequests: single use (deleted when the response that
-- answers one is accepted or refused), short TTL, swept like WebAuthn
-- challenges. `return_to` is an allow-listed origin's URL, checked at login.
CREATE TABLE saml_requests (
    request_id  text        PRIMARY KEY,
    tenant_id   uuid        NOT NULL,
    return_to   text,
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL
);
CREATE INDEX saml_requests_expiry ON saml_requests (expires_at);

-- Assertions already used, per tenant, kept until the assertion's last
-- NotOnOrAfter + 60 s (`SamlLogin::replay_cache_until`): a second use is a
-- primary-key conflict.
CREATE TABLE saml_assertions (
    tenant_id    uuid        NOT NULL,
    assertion_id text        NOT NULL,
    expires_at   timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, assertion_id)
);
CREATE INDEX saml_assertions_expiry ON saml_assertions (expires_at);

-- As migration 0315: the service writes its own working tables.
GRANT SELECT, INSERT, DELETE ON saml_requests, saml_assertions TO queue_service;
