//! Applying a batch of events to this projection's tables: load the rows
//! the batch can reach, fold, write back the rows that changed. Runs inside
//! the caller's transaction (the runner moves its checkpoint in the same one).

use std::collections::BTreeSet;

use queue_domain::session::SessionEvent;
use sqlx::PgConnection;

use crate::events::{Body, Event};
use crate::projection::{fold_all, named_customers, stream_ids, BatchError};
use crate::table::{load, write};
use crate::tenants::CustomerTenants;

use super::SessionsFold;

/// Applies `events` (already decoded) to the tables in `schema`.
pub(crate) async fn apply(
    conn: &mut PgConnection,
    schema: &str,
    events: &[Event],
) -> Result<(), BatchError> {
    let mut fold = SessionsFold::new(true);
    let ids = stream_ids(events, "Session");
    if ids.is_empty() {
        return Ok(());
    }
    load(
        conn,
        &mut fold.sessions,
        schema,
        "session_id = ANY($1)",
        ids,
    )
    .await?;
    let mut hashes: BTreeSet<String> = fold
        .sessions
        .values()
        .map(|s| s.refresh_hash.clone())
        .collect();
    // New token hashes must not collide with known ones (as in a full fold).
    for event in events {
        match &event.body {
            Body::Session(SessionEvent::Created { refresh_hash, .. })
            | Body::Session(SessionEvent::Imported { refresh_hash, .. }) => {
                hashes.insert(refresh_hash.to_hex());
            }
            Body::Session(SessionEvent::Refreshed { new, .. }) => {
                hashes.insert(new.to_hex());
            }
            _ => {}
        }
    }
    let hashes: Vec<String> = hashes.into_iter().collect();
    load(
        conn,
        &mut fold.tokens,
        schema,
        "refresh_hash = ANY($1)",
        hashes,
    )
    .await?;
    let named: Vec<_> = named_customers(events).into_iter().collect();
    let tenants = CustomerTenants::load(conn, &named).await?;
    fold_all(events, |e| fold.apply(e, &tenants))?;
    write(conn, schema, &fold.sessions).await?;
    write(conn, schema, &fold.tokens).await?;
    Ok(())
}
