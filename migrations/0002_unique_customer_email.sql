-- Emails are unique case-insensitively (the domain stores them normalised to
-- lower case). Enforced on the events themselves, so a registration and its
-- uniqueness commit atomically with no read-model lag and no extra table.
-- A violation reports constraint name `events_customer_email`.
CREATE UNIQUE INDEX events_customer_email ON events (
    (lower(coalesce(payload->'CustomerRegistered'->>'email', payload->'CustomerImported'->>'email')))
) WHERE aggregate_type = 'Customer' AND event_type IN ('CustomerRegistered', 'CustomerImported');
