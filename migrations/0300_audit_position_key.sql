-- queue-projections: the audit table's primary key is the ledger position
-- (commit_xid, insert_id), which was already UNIQUE, instead of the stream
-- key (aggregate_type, aggregate_id, sequence) (ADR 0102, issue 5).
-- Both identify one event; nothing looks audit rows up by stream key (readers
-- join `ledger` and `events` from an audit row, and fetch single rows by
-- event_id), and the text-led stream key was the costliest index to build in
-- a rebuild: ~3 s of the ~9 s the table's indexes took for 1 M rows. One
-- index fewer also makes every live audit insert cheaper.
ALTER TABLE customer_audit_events DROP CONSTRAINT customer_audit_events_pkey;
ALTER TABLE customer_audit_events
    DROP CONSTRAINT customer_audit_events_commit_xid_insert_id_key;
ALTER TABLE customer_audit_events
    ADD CONSTRAINT customer_audit_events_pkey PRIMARY KEY (commit_xid, insert_id);
