-- Step-up challenges (`POST /api/v1/auth/webauthn/reauth/begin`, ADR 0211):
-- their own kind, so a reauth challenge can never complete a login.
ALTER TABLE webauthn_challenges DROP CONSTRAINT webauthn_challenges_kind_check;
ALTER TABLE webauthn_challenges ADD CONSTRAINT webauthn_challenges_kind_check
    CHECK (kind IN ('register', 'login', 'reauth'));
