-- Issue 22, ADR 0218: every customer belongs to one tenant; emails are unique
-- per tenant. A stored CustomerRegistered/CustomerImported without
-- `tenant_id` is the default tenant's (ADR 0217: a defaulted field, stored
-- events untouched), so the index reads a missing field as the default
-- tenant's id. Email first: a lookup by email alone still rides the index.
-- The constraint keeps its name (`events_customer_email`): a violation
-- still reports it.
DROP INDEX IF EXISTS events_customer_email;
CREATE UNIQUE INDEX events_customer_email ON events (
    (lower(coalesce(payload->'CustomerRegistered'->>'email', payload->'CustomerImported'->>'email'))),
    (coalesce(payload->'CustomerRegistered'->>'tenant_id', payload->'CustomerImported'->>'tenant_id',
              'e02b51ee-91ce-59b2-8ff6-b3ef33a10a99'))
) WHERE aggregate_type = 'Customer' AND event_type IN ('CustomerRegistered', 'CustomerImported');

-- The read model's copy of the tenant (the projection folds it in; rows of
-- before tenants are the default tenant's, as their events are).
ALTER TABLE queue_customers
    ADD COLUMN tenant_id uuid NOT NULL DEFAULT 'e02b51ee-91ce-59b2-8ff6-b3ef33a10a99';
ALTER TABLE queue_customers DROP CONSTRAINT queue_customers_email_key;
ALTER TABLE queue_customers
    ADD CONSTRAINT queue_customers_email_tenant_key UNIQUE (email, tenant_id);
CREATE INDEX queue_customers_tenant ON queue_customers (tenant_id);
