//! Applying a batch of events to this projection's tables: load the rows
//! the batch can reach, fold, write back the rows that changed. Runs inside
//! the caller's transaction (the runner moves its checkpoint in the same one).

use std::collections::BTreeSet;

use queue_domain::customer::CustomerEvent;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::events::{Body, Event};
use crate::projection::{fold_all, stream_ids, BatchError};
use crate::table::{load, write};

use super::CustomersFold;

/// Applies `events` (already decoded) to the tables in `schema`.
pub(crate) async fn apply(
    conn: &mut PgConnection,
    schema: &str,
    events: &[Event],
) -> Result<(), BatchError> {
    let mut fold = CustomersFold::new(true);
    let ids = stream_ids(events, "Customer");
    if ids.is_empty() {
        return Ok(());
    }
    let mut code_ids = BTreeSet::new();
    let mut verification_ids = BTreeSet::new();
    let mut grant_ids = BTreeSet::new();
    for event in events {
        let Body::Customer(body) = &event.body else {
            continue;
        };
        let Ok(id) = Uuid::parse_str(&event.meta.aggregate_id) else {
            continue;
        };
        match body {
            CustomerEvent::BackupCodesGenerated { .. }
            | CustomerEvent::BackupCodeRedeemed { .. } => {
                code_ids.insert(id);
            }
            CustomerEvent::EmailVerificationRequested { .. }
            | CustomerEvent::EmailVerified { .. } => {
                verification_ids.insert(id);
            }
            CustomerEvent::RoleRevoked { grant_id, .. } => {
                grant_ids.insert(*grant_id.as_uuid());
            }
            _ => {}
        }
    }
    load(
        conn,
        &mut fold.customers,
        schema,
        "customer_id = ANY($1)",
        ids.clone(),
    )
    .await?;
    if !code_ids.is_empty() {
        let ids: Vec<Uuid> = code_ids.into_iter().collect();
        // Only the current set can change (voided or redeemed).
        load(
            conn,
            &mut fold.codes,
            schema,
            "customer_id = ANY($1) AND NOT voided",
            ids,
        )
        .await?;
    }
    if !verification_ids.is_empty() {
        let ids: Vec<Uuid> = verification_ids.into_iter().collect();
        // Only the pending request can change (superseded or verified).
        load(
            conn,
            &mut fold.verifications,
            schema,
            "customer_id = ANY($1) AND status = 'pending'",
            ids,
        )
        .await?;
    }
    if !grant_ids.is_empty() {
        let ids: Vec<Uuid> = grant_ids.into_iter().collect();
        load(conn, &mut fold.roles, schema, "grant_id = ANY($1)", ids).await?;
    }
    fold_all(events, |e| fold.apply(e))?;
    write(conn, schema, &fold.customers).await?;
    write(conn, schema, &fold.roles).await?;
    write(conn, schema, &fold.codes).await?;
    write(conn, schema, &fold.verifications).await?;
    Ok(())
}
