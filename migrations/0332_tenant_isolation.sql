-- Issue 22, ADR 0219: isolation in depth. Every read table carries its
-- customer's tenant, and row-level security binds the service role's reads
-- to the tenants named by the per-transaction setting `queue.tenant_ids`
-- (comma-separated ids), so a query that forgets its tenant filter still
-- sees only the caller's tenants. A tenant-limited service token's reads
-- set it (`SELECT set_config('queue.tenant_ids', …, true)`); callers not
-- limited to tenants leave it unset and see every row, as before.

-- The tenant of each read row (the projections fold it from the customer's
-- first event). Rows folded before this migration get their customer's
-- tenant from the log below; the default only covers the ALTER itself.
ALTER TABLE queue_customer_roles
    ADD COLUMN tenant_id uuid NOT NULL DEFAULT 'e02b51ee-91ce-59b2-8ff6-b3ef33a10a99';
ALTER TABLE queue_backup_codes
    ADD COLUMN tenant_id uuid NOT NULL DEFAULT 'e02b51ee-91ce-59b2-8ff6-b3ef33a10a99';
ALTER TABLE queue_email_verifications
    ADD COLUMN tenant_id uuid NOT NULL DEFAULT 'e02b51ee-91ce-59b2-8ff6-b3ef33a10a99';
ALTER TABLE queue_webauthn_credentials
    ADD COLUMN tenant_id uuid NOT NULL DEFAULT 'e02b51ee-91ce-59b2-8ff6-b3ef33a10a99';
ALTER TABLE queue_sessions
    ADD COLUMN tenant_id uuid NOT NULL DEFAULT 'e02b51ee-91ce-59b2-8ff6-b3ef33a10a99';
ALTER TABLE queue_session_refresh_tokens
    ADD COLUMN tenant_id uuid NOT NULL DEFAULT 'e02b51ee-91ce-59b2-8ff6-b3ef33a10a99';
-- NULL: an external event that names no customer (or an unknown one).
ALTER TABLE customer_audit_events ADD COLUMN tenant_id uuid;

CREATE TEMPORARY TABLE customer_tenants ON COMMIT DROP AS
    SELECT aggregate_id::uuid AS customer_id,
           coalesce(payload->'CustomerRegistered'->>'tenant_id',
                    payload->'CustomerImported'->>'tenant_id',
                    'e02b51ee-91ce-59b2-8ff6-b3ef33a10a99')::uuid AS tenant_id
    FROM events WHERE aggregate_type = 'Customer' AND sequence = 1;
UPDATE queue_customer_roles r SET tenant_id = t.tenant_id
    FROM customer_tenants t WHERE r.customer_id = t.customer_id AND r.tenant_id <> t.tenant_id;
UPDATE queue_backup_codes r SET tenant_id = t.tenant_id
    FROM customer_tenants t WHERE r.customer_id = t.customer_id AND r.tenant_id <> t.tenant_id;
UPDATE queue_email_verifications r SET tenant_id = t.tenant_id
    FROM customer_tenants t WHERE r.customer_id = t.customer_id AND r.tenant_id <> t.tenant_id;
UPDATE queue_webauthn_credentials r SET tenant_id = t.tenant_id
    FROM customer_tenants t WHERE r.customer_id = t.customer_id AND r.tenant_id <> t.tenant_id;
UPDATE queue_sessions r SET tenant_id = t.tenant_id
    FROM customer_tenants t WHERE r.customer_id = t.customer_id AND r.tenant_id <> t.tenant_id;
UPDATE queue_session_refresh_tokens r SET tenant_id = t.tenant_id
    FROM customer_tenants t WHERE r.customer_id = t.customer_id AND r.tenant_id <> t.tenant_id;
UPDATE customer_audit_events r SET tenant_id = t.tenant_id
    FROM customer_tenants t WHERE r.customer_id = t.customer_id;

ALTER TABLE queue_customer_roles ALTER COLUMN tenant_id DROP DEFAULT;
ALTER TABLE queue_backup_codes ALTER COLUMN tenant_id DROP DEFAULT;
ALTER TABLE queue_email_verifications ALTER COLUMN tenant_id DROP DEFAULT;
ALTER TABLE queue_webauthn_credentials ALTER COLUMN tenant_id DROP DEFAULT;
ALTER TABLE queue_sessions ALTER COLUMN tenant_id DROP DEFAULT;
ALTER TABLE queue_session_refresh_tokens ALTER COLUMN tenant_id DROP DEFAULT;
ALTER TABLE queue_customers ALTER COLUMN tenant_id DROP DEFAULT;

-- A tenant-limited audit page walks its tenant's rows in log order.
CREATE INDEX customer_audit_events_tenant ON customer_audit_events (tenant_id, commit_xid, insert_id);

-- Whether a row of `tenant` is visible to the current transaction: every
-- row when `queue.tenant_ids` is unset or empty; otherwise only rows of
-- the listed tenants (a NULL tenant is never listed). Inlined by the
-- planner (one SQL expression, STABLE).
CREATE FUNCTION queue_tenant_visible(tenant uuid) RETURNS boolean
    LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT CASE coalesce(current_setting('queue.tenant_ids', true), '')
        WHEN '' THEN true
        ELSE tenant = ANY (string_to_array(current_setting('queue.tenant_ids', true), ',')::uuid[])
    END
$$;

-- Row-level security on one read table: the service role (the API) reads
-- the visible rows; the projector, which folds every tenant's events,
-- reads and writes all. The owner (`queue migrate`, the CLI's replays)
-- is not subject to it. `queue projections rebuild` calls this again on
-- the tables it swaps in (a new table has no policies).
CREATE FUNCTION queue_isolate_tenants(read_table regclass) RETURNS void
    LANGUAGE plpgsql
AS $$
BEGIN
    EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', read_table);
    EXECUTE format('DROP POLICY IF EXISTS tenant_reads ON %s', read_table);
    EXECUTE format('CREATE POLICY tenant_reads ON %s FOR SELECT TO queue_service '
                   'USING (queue_tenant_visible(tenant_id))', read_table);
    EXECUTE format('DROP POLICY IF EXISTS projector_all ON %s', read_table);
    EXECUTE format('CREATE POLICY projector_all ON %s FOR ALL TO queue_projector '
                   'USING (true) WITH CHECK (true)', read_table);
END
$$;

SELECT queue_isolate_tenants(t::regclass) FROM unnest(ARRAY[
    'queue_customers', 'queue_customer_roles', 'queue_backup_codes',
    'queue_email_verifications', 'queue_webauthn_credentials', 'queue_sessions',
    'queue_session_refresh_tokens', 'customer_audit_events']) AS t;
