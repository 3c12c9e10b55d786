-- Step-up for SAML customers (ADR 0220): a ForceAuthn AuthnRequest made by
-- a signed-in session. Its answer reauthenticates that session (of that
-- customer) instead of creating one. NULL for a login's request.
ALTER TABLE saml_requests
    ADD COLUMN session_id  uuid,
    ADD COLUMN customer_id uuid;
