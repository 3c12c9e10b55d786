-- Step-up for SAML customers (ADR 0220): a ForceAuthn AuthnRequest made by
-- a signed-in session. Its answer reauthenticates that session (of that
-- customer) instead of creating one. NULL for a login's request.
--
-- A correction to 0331's comment (kept as it was: migrations are
-- checksummed): a refused response does not delete its request. The take
-- happens in the transaction that a refusal rolls back, so the request
-- stays outstanding until an accepted answer uses it or it expires; every
-- further attempt still needs a response the IdP signed for this SP.
ALTER TABLE saml_requests
    ADD COLUMN session_id  uuid,
    ADD COLUMN customer_id uuid;
