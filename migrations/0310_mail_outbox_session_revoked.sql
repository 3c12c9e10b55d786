-- A notice when the customer signs out another of their sessions (a factor
-- change with step-up, ADR 0211).
ALTER TABLE mail_outbox DROP CONSTRAINT mail_outbox_kind_check;
ALTER TABLE mail_outbox ADD CONSTRAINT mail_outbox_kind_check CHECK (kind IN
    ('email_verification', 'passkey_added', 'passkey_removed', 'backup_codes_regenerated',
     'session_revoked'));
