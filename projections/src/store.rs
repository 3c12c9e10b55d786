//! Applying a batch of events to the tables of one projection: load the
//! rows the batch can reach, fold, write back the rows that changed.
//! Runs inside the caller's transaction (the runner moves its checkpoint in
//! the same one).

use std::collections::BTreeSet;

use sqlx::PgConnection;
use uuid::Uuid;

use queue_domain::customer::CustomerEvent;
use queue_domain::session::SessionEvent;

use crate::error::{ProjectionError, ProjectionResult};
use crate::events::{Body, Event};
use crate::fold::{AuditFold, CredentialsFold, CustomersFold, SessionsFold, Table};
use crate::projection::Projection;
use crate::rows::{AuditRow, Row};

/// Why a batch could not be applied.
#[derive(Debug)]
pub enum BatchError {
    /// Event `index` of the batch cannot be applied (deterministic).
    Event {
        index: usize,
        error: ProjectionError,
    },
    /// Loading or writing failed.
    Database(ProjectionError),
}

impl From<sqlx::Error> for BatchError {
    fn from(e: sqlx::Error) -> Self {
        Self::Database(e.into())
    }
}

impl From<ProjectionError> for BatchError {
    fn from(e: ProjectionError) -> Self {
        Self::Database(e)
    }
}

/// `schema.table`, both internal identifiers (never user input).
pub fn qualified(schema: &str, table: &str) -> String {
    format!("{schema}.{table}")
}

/// Applies `events` (already decoded) to the projection's tables in `schema`.
pub async fn apply_batch(
    conn: &mut PgConnection,
    schema: &str,
    projection: Projection,
    events: &[Event],
) -> Result<(), BatchError> {
    match projection {
        Projection::Customers => apply_customers(conn, schema, events).await,
        Projection::Credentials => apply_credentials(conn, schema, events).await,
        Projection::Sessions => apply_sessions(conn, schema, events).await,
        Projection::Audit => apply_audit(conn, schema, events).await,
    }
}

fn fold_all<F>(events: &[Event], mut apply: F) -> Result<(), BatchError>
where
    F: FnMut(&Event) -> ProjectionResult<()>,
{
    for (index, event) in events.iter().enumerate() {
        apply(event).map_err(|error| BatchError::Event { index, error })?;
    }
    Ok(())
}

fn stream_ids(events: &[Event], aggregate_type: &str) -> Vec<Uuid> {
    let ids: BTreeSet<Uuid> = events
        .iter()
        .filter(|e| e.meta.aggregate_type == aggregate_type)
        .filter_map(|e| Uuid::parse_str(&e.meta.aggregate_id).ok())
        .collect();
    ids.into_iter().collect()
}

async fn load<R: Row>(
    conn: &mut PgConnection,
    table: &mut Table<R>,
    schema: &str,
    condition: &str,
    bind: impl for<'q> sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + 'static,
) -> ProjectionResult<()> {
    let sql = format!(
        "SELECT {} FROM {} WHERE {condition}",
        R::COLUMNS.join(", "),
        qualified(schema, R::TABLE)
    );
    let rows: Vec<R> = sqlx::query_as(&sql)
        .bind(bind)
        .fetch_all(&mut *conn)
        .await?;
    for row in rows {
        table.load(row);
    }
    Ok(())
}

/// Writes the changed rows back (insert or update by primary key).
pub async fn upsert<R: Row>(
    conn: &mut PgConnection,
    schema: &str,
    rows: &[&R],
) -> ProjectionResult<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let table = qualified(schema, R::TABLE);
    let columns = R::COLUMNS.join(", ");
    let updates: Vec<String> = R::COLUMNS
        .iter()
        .filter(|c| !R::KEY.contains(c))
        .map(|c| format!("{c} = EXCLUDED.{c}"))
        .collect();
    let conflict = if updates.is_empty() {
        "DO NOTHING".to_owned()
    } else {
        format!("DO UPDATE SET {}", updates.join(", "))
    };
    // `json`, not `jsonb`: a `json` column then receives the very text
    // serde_json wrote (compact, keys sorted), the same bytes the rebuild's
    // COPY writes, so live and rebuilt tables are identical byte for byte
    // (jsonb's text form would add spaces: `{"a": 1}`).
    let sql = format!(
        "INSERT INTO {table} ({columns}) SELECT {columns} \
         FROM json_populate_recordset(NULL::{table}, $1::text::json) \
         ON CONFLICT ({}) {conflict}",
        R::KEY.join(", ")
    );
    let text = serde_json::to_string(rows)
        .map_err(|e| ProjectionError::Database(sqlx::Error::Encode(Box::new(e))))?;
    sqlx::query(&sql).bind(text).execute(&mut *conn).await?;
    Ok(())
}

async fn write<R: Row>(
    conn: &mut PgConnection,
    schema: &str,
    table: &Table<R>,
) -> ProjectionResult<()> {
    upsert(conn, schema, &table.dirty_rows()).await
}

async fn apply_customers(
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

async fn apply_credentials(
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
    fold_all(events, |e| fold.apply(e))?;
    write(conn, schema, &fold.credentials).await?;
    Ok(())
}

async fn apply_sessions(
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
    fold_all(events, |e| fold.apply(e))?;
    write(conn, schema, &fold.sessions).await?;
    write(conn, schema, &fold.tokens).await?;
    Ok(())
}

async fn apply_audit(
    conn: &mut PgConnection,
    schema: &str,
    events: &[Event],
) -> Result<(), BatchError> {
    let mut fold = AuditFold::new();
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
            }
        }
    }
    let mut rows: Vec<AuditRow> = Vec::with_capacity(events.len());
    for (index, event) in events.iter().enumerate() {
        match fold.apply(event) {
            Ok(Some(row)) => rows.push(row),
            Ok(None) => {}
            Err(error) => return Err(BatchError::Event { index, error }),
        }
    }
    let refs: Vec<&AuditRow> = rows.iter().collect();
    upsert(conn, schema, &refs).await?;
    Ok(())
}
