//! Applying a batch of events to this projection's tables: load the rows
//! the batch can reach, fold, write back the rows that changed. Runs inside
//! the caller's transaction (the runner moves its checkpoint in the same one).

use sqlx::PgConnection;
use uuid::Uuid;

use crate::events::Event;
use crate::projection::{named_customers, stream_ids, BatchError};
use crate::table::upsert;
use crate::tenants::CustomerTenants;

use super::{AuditFold, AuditRow};

/// Applies `events` (already decoded) to the tables in `schema`.
pub(crate) async fn apply(
    conn: &mut PgConnection,
    schema: &str,
    events: &[Event],
) -> Result<(), BatchError> {
    let mut fold = AuditFold::new();
    let mut customers = named_customers(events);
    // The owner of every Credential and Session stream the batch continues,
    // from the stream's first event in the log.
    for aggregate_type in ["Credential", "Session"] {
        let ids: Vec<String> = stream_ids(events, aggregate_type)
            .into_iter()
            .map(|id| id.to_string())
            .collect();
        if ids.is_empty() {
            continue;
        }
        let owners: Vec<(String, Option<String>)> = sqlx::query_as(
            "SELECT aggregate_id, coalesce(payload->'CredentialRegistered'->>'customer_id', \
             payload->'CredentialImported'->>'customer_id', \
             payload->'SessionCreated'->>'customer_id', \
             payload->'SessionImported'->>'customer_id') \
             FROM events WHERE aggregate_type = $1 AND aggregate_id = ANY($2) AND sequence = 1",
        )
        .bind(aggregate_type)
        .bind(&ids)
        .fetch_all(&mut *conn)
        .await?;
        for (id, owner) in owners {
            if let Some(owner) = owner.and_then(|o| Uuid::parse_str(&o).ok()) {
                fold.remember_owner(aggregate_type, &id, owner);
                customers.insert(owner);
            }
        }
    }
    let customers: Vec<Uuid> = customers.into_iter().collect();
    let tenants = CustomerTenants::load(conn, &customers).await?;
    let mut rows: Vec<AuditRow> = Vec::with_capacity(events.len());
    for (index, event) in events.iter().enumerate() {
        match fold.apply(event, &tenants) {
            Ok(Some(row)) => rows.push(row),
            Ok(None) => {}
            Err(error) => return Err(BatchError::Event { index, error }),
        }
    }
    let refs: Vec<&AuditRow> = rows.iter().collect();
    upsert(conn, schema, &refs).await?;
    Ok(())
}
