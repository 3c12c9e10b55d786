//! Applying a batch of events to this projection's tables: load the rows
//! the batch can reach, fold, write back the rows that changed. Runs inside
//! the caller's transaction (the runner moves its checkpoint in the same one).

use sqlx::PgConnection;

use crate::events::Event;
use crate::projection::{fold_all, named_customers, stream_ids, BatchError};
use crate::table::{load, write};
use crate::tenants::CustomerTenants;

use super::CredentialsFold;

/// Applies `events` (already decoded) to the tables in `schema`.
pub(crate) async fn apply(
    conn: &mut PgConnection,
    schema: &str,
    events: &[Event],
) -> Result<(), BatchError> {
    let mut fold = CredentialsFold::new(true);
    let ids = stream_ids(events, "Credential");
    if ids.is_empty() {
        return Ok(());
    }
    load(
        conn,
        &mut fold.credentials,
        schema,
        "credential_id = ANY($1)",
        ids,
    )
    .await?;
    let named: Vec<_> = named_customers(events).into_iter().collect();
    let tenants = CustomerTenants::load(conn, &named).await?;
    fold_all(events, |e| fold.apply(e, &tenants))?;
    write(conn, schema, &fold.credentials).await?;
    Ok(())
}
