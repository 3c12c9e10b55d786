-- Issue 22: a customer created by a SAML identity provider's first login is
-- `CustomerProvisioned` (source saml, actor saml:<slug>), a creation event
-- beside `CustomerRegistered` and `CustomerImported`. Its email is unique
-- per tenant with theirs: the index of 0330, under the same name, now
-- reads all three (a stored event without `tenant_id` is the default
-- tenant's). Queries that ride it (eventstore::lookup, the backfill's
-- taken emails) spell the same expressions.
DROP INDEX IF EXISTS events_customer_email;
CREATE UNIQUE INDEX events_customer_email ON events (
    (lower(coalesce(payload->'CustomerRegistered'->>'email',
                    payload->'CustomerProvisioned'->>'email',
                    payload->'CustomerImported'->>'email'))),
    (coalesce(payload->'CustomerRegistered'->>'tenant_id',
              payload->'CustomerProvisioned'->>'tenant_id',
              payload->'CustomerImported'->>'tenant_id',
              'e02b51ee-91ce-59b2-8ff6-b3ef33a10a99'))
) WHERE aggregate_type = 'Customer'
    AND event_type IN ('CustomerRegistered', 'CustomerProvisioned', 'CustomerImported');
