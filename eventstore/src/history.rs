//! Forensics: a customer's state at an instant, folded from the event log
//! (never from read tables), with the events that led there and whether a
//! signed checkpoint covers every one of them.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use cqrs_es::persist::SerializedEvent;
use cqrs_es::Aggregate;
use queue_domain::customer::CustomerStatus;
use queue_domain::session::SessionStatus;
use queue_domain::{Credential, CredentialEvent, Customer, CustomerEvent, Session, SessionEvent};
use serde::Serialize;
use serde_json::Value;
use sqlx::Row;

use crate::chain;
use crate::error::{StoreError, StoreResult};
use crate::integrity::Finder;
use crate::unit_of_work::{ChainedRow, EventStore};

/// One event that shaped the state.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct HistoryEvent {
    pub ledger_seq: Option<i64>,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub recorded_at: String,
    pub hash: String,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RoleView {
    pub grant_id: Option<String>,
    pub role: String,
    pub ticket_id: Option<String>,
    /// Who granted it (`None` for the default role) and why.
    pub granted_by: Option<String>,
    pub grant_reason: Option<String>,
    pub granted_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    /// Counts at the instant: not revoked and not expired.
    pub active: bool,
    /// When, by whom and why it was revoked (by the instant).
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoked_by: Option<String>,
    pub revoke_reason: Option<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PasskeyView {
    pub credential_id: String,
    pub raw_credential_id: String,
    pub name: Option<String>,
    pub sign_count: u32,
    pub backup_eligible: bool,
    pub backup_state: bool,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SessionView {
    pub session_id: String,
    pub amr: Option<String>,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// `active`, `expired`, or `revoked:<reason>` at the instant.
    pub status: String,
    pub live: bool,
}

/// What the customer looked like at `at`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct CustomerView {
    pub email: String,
    pub display_name: Option<String>,
    pub email_verified: bool,
    pub status: String,
    pub roles: Vec<RoleView>,
    pub passkeys: Vec<PasskeyView>,
    pub sessions: Vec<SessionView>,
    pub unused_backup_codes: usize,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct CustomerHistory {
    pub customer_id: String,
    pub at: DateTime<Utc>,
    /// `None` when the customer did not exist yet at `at`.
    pub state: Option<CustomerView>,
    pub events: Vec<HistoryEvent>,
    /// True when every event used is sealed and covered by a signed checkpoint.
    pub covered_by_checkpoint: bool,
    pub checkpoint_tree_size: Option<i64>,
}

/// One row of the customer's streams, checked, with what the report shows.
struct HistoryRow {
    position: (i64, i64),
    event: SerializedEvent,
    recorded_at: DateTime<Utc>,
    ledger_seq: Option<i64>,
    hash: Vec<u8>,
}

/// Loads every event of the customer's streams, checks each stream whole
/// (link, hash, MAC: the unit of work's check, so a forensic answer is never
/// built on a forged row), then folds those recorded at or before `at`, in
/// global order.
pub async fn customer_history(
    store: &EventStore,
    customer_id: &str,
    at: DateTime<Utc>,
) -> StoreResult<CustomerHistory> {
    // No parallel workers (`SET LOCAL`, so a transaction): the query reads
    // a few dozen rows through indexes, but the planner's estimate (~120
    // streams) made it start two workers, which cost forty times the query
    // (measured in docs/decisions/0103).
    let mut tx = store.pool().begin().await?;
    sqlx::query("SET LOCAL max_parallel_workers_per_gather = 0")
        .execute(&mut *tx)
        .await?;
    let rows = sqlx::query(
        // The customer's own stream and the credential and session streams
        // whose first event names it, found through the expression indexes
        // `events_credential_customer` / `events_session_customer` (the
        // expressions of `lookup::CREDENTIAL_IDS_OF` / `SESSION_IDS_OF`;
        // looking into every stream's first payload instead was a scan of
        // the whole log, ADR 0103). Whole streams,
        // in stream order, so every row can be checked against the last.
        "WITH streams AS ( \
           SELECT 'Customer'::text AS aggregate_type, $1::text AS aggregate_id \
           UNION ALL SELECT s.aggregate_type, s.aggregate_id FROM events s \
             WHERE s.aggregate_type = 'Credential' \
               AND s.event_type IN ('CredentialRegistered', 'CredentialImported') \
               AND coalesce(s.payload->'CredentialRegistered'->>'customer_id', \
                            s.payload->'CredentialImported'->>'customer_id') = $1 \
           UNION ALL SELECT s.aggregate_type, s.aggregate_id FROM events s \
             WHERE s.aggregate_type = 'Session' \
               AND s.event_type IN ('SessionCreated', 'SessionImported') \
               AND coalesce(s.payload->'SessionCreated'->>'customer_id', \
                            s.payload->'SessionImported'->>'customer_id') = $1) \
         SELECT e.aggregate_type, e.aggregate_id, e.sequence, e.event_type, e.event_version, \
                e.payload, e.metadata, e.recorded_at, e.prev_hash, e.hash, e.mac, e.mac_key_id, \
                e.commit_xid, e.insert_id, l.seq AS ledger_seq \
         FROM events e JOIN streams USING (aggregate_type, aggregate_id) \
         LEFT JOIN ledger l USING (aggregate_type, aggregate_id, sequence) \
         ORDER BY e.aggregate_type, e.aggregate_id, e.sequence",
    )
    .bind(customer_id)
    .fetch_all(&mut *tx)
    .await?;
    let checkpoint: Option<i64> = sqlx::query_scalar("SELECT max(tree_size) FROM checkpoints")
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;

    let mac = store.repo().keys().verifier();
    let mut previous: Option<(String, String, i64, chain::Hash)> = None;
    let mut checked = Vec::with_capacity(rows.len());
    for row in &rows {
        let chained = ChainedRow::decode(row)?;
        let same_stream = previous.as_ref().filter(|(t, i, _, _)| {
            *t == chained.event.aggregate_type && *i == chained.event.aggregate_id
        });
        let link = same_stream.map(|(_, _, seq, hash)| (*seq, *hash));
        let hash = chained.check(link, &mac).inspect_err(|err| {
            store.integrity().record(Finder::Load, err);
        })?;
        previous = Some((
            chained.event.aggregate_type.clone(),
            chained.event.aggregate_id.clone(),
            chained.event.sequence as i64,
            hash,
        ));
        if chained.recorded_at <= at {
            checked.push(HistoryRow {
                position: (row.try_get("commit_xid")?, row.try_get("insert_id")?),
                ledger_seq: row.try_get("ledger_seq")?,
                hash: chained.hash,
                recorded_at: chained.recorded_at,
                event: chained.event,
            });
        }
    }
    checked.sort_by_key(|r| r.position);

    let mut customer = Customer::default();
    let mut credentials: BTreeMap<String, Credential> = BTreeMap::new();
    let mut sessions: BTreeMap<String, Session> = BTreeMap::new();
    let mut events = Vec::new();
    let mut max_seq: Option<i64> = None;
    let mut unsealed = false;
    for row in checked {
        let aggregate_type = row.event.aggregate_type.clone();
        let aggregate_id = row.event.aggregate_id.clone();
        let sequence = row.event.sequence as i64;
        let event_type = row.event.event_type.clone();
        let decoder = store.decoder();
        let decode_error = |e: serde_json::Error| {
            StoreError::Ledger(format!("{aggregate_type}/{aggregate_id} #{sequence}: {e}"))
        };
        match aggregate_type.as_str() {
            "Customer" => customer.apply(
                decoder
                    .decode::<CustomerEvent>(row.event)
                    .map_err(decode_error)?,
            ),
            "Credential" => credentials.entry(aggregate_id.clone()).or_default().apply(
                decoder
                    .decode::<CredentialEvent>(row.event)
                    .map_err(decode_error)?,
            ),
            "Session" => sessions.entry(aggregate_id.clone()).or_default().apply(
                decoder
                    .decode::<SessionEvent>(row.event)
                    .map_err(decode_error)?,
            ),
            _ => {}
        }
        match row.ledger_seq {
            Some(seq) => max_seq = Some(max_seq.map_or(seq, |m| m.max(seq))),
            None => unsealed = true,
        }
        events.push(HistoryEvent {
            ledger_seq: row.ledger_seq,
            aggregate_type,
            aggregate_id,
            sequence,
            event_type,
            recorded_at: chain::format_time(&row.recorded_at),
            hash: hex::encode(row.hash),
        });
    }
    let covered = !unsealed && max_seq.is_none_or(|m| checkpoint.is_some_and(|c| c >= m));
    Ok(CustomerHistory {
        customer_id: customer_id.to_string(),
        at,
        state: view(&customer, &credentials, &sessions, at),
        events,
        covered_by_checkpoint: covered,
        checkpoint_tree_size: checkpoint,
    })
}

fn view(
    customer: &Customer,
    credentials: &BTreeMap<String, Credential>,
    sessions: &BTreeMap<String, Session>,
    at: DateTime<Utc>,
) -> Option<CustomerView> {
    let state = customer.state()?;
    let mut roles = vec![RoleView {
        grant_id: None,
        role: state.default_role.to_string(),
        ticket_id: None,
        granted_by: None,
        grant_reason: None,
        granted_at: Some(state.registered_at),
        expires_at: None,
        active: true,
        revoked_at: None,
        revoked_by: None,
        revoke_reason: None,
    }];
    roles.extend(state.grants.iter().map(|g| RoleView {
        grant_id: Some(g.grant_id.to_string()),
        role: g.role.to_string(),
        ticket_id: g.ticket_id.as_ref().map(ToString::to_string),
        granted_by: Some(g.actor.to_string()),
        grant_reason: Some(g.reason.to_string()),
        granted_at: Some(g.granted_at),
        expires_at: g.expires_at,
        active: g.is_active(at),
        revoked_at: g.revocation.as_ref().map(|r| r.at),
        revoked_by: g.revocation.as_ref().map(|r| r.actor.to_string()),
        revoke_reason: g.revocation.as_ref().map(|r| r.reason.to_string()),
    }));
    let passkeys = credentials
        .iter()
        .filter_map(|(id, c)| {
            let s = c.state()?;
            Some(PasskeyView {
                credential_id: id.clone(),
                raw_credential_id: s.raw_credential_id.to_string(),
                name: s.name.as_ref().map(ToString::to_string),
                sign_count: s.sign_count,
                backup_eligible: s.backup_eligible,
                backup_state: s.backup_state,
                created_at: s.created_at,
                last_used_at: s.last_used_at,
                revoked_at: s.revocation.as_ref().map(|r| r.at),
            })
        })
        .collect();
    let sessions = sessions
        .iter()
        .filter_map(|(id, session)| {
            let s = session.state()?;
            let status = match s.status(at) {
                SessionStatus::Active => "active".to_string(),
                SessionStatus::Expired => "expired".to_string(),
                SessionStatus::Revoked { reason } => format!(
                    "revoked:{}",
                    serde_json::to_value(reason)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default()
                ),
            };
            Some(SessionView {
                session_id: id.clone(),
                amr: s.method.as_ref().map(|m| m.amr().to_string()),
                created_at: s.created_at,
                last_seen_at: s.last_seen_at,
                expires_at: s.expires_at(),
                live: status == "active",
                status,
            })
        })
        .collect();
    Some(CustomerView {
        email: state.email.to_string(),
        display_name: state.display_name.as_ref().map(ToString::to_string),
        email_verified: state.email_verified_at.is_some_and(|v| v <= at),
        status: match state.status {
            CustomerStatus::Active => "active".into(),
            CustomerStatus::Suspended => "suspended".into(),
        },
        roles,
        passkeys,
        sessions,
        unused_backup_codes: state.unused_backup_codes(),
    })
}

/// A field-by-field difference between two JSON values (paths like
/// `state.sessions[0].status`).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Change {
    pub path: String,
    pub before: Value,
    pub after: Value,
}

pub fn diff(before: &Value, after: &Value) -> Vec<Change> {
    let mut out = Vec::new();
    diff_at("", before, after, &mut out);
    out
}

fn diff_at(path: &str, before: &Value, after: &Value, out: &mut Vec<Change>) {
    match (before, after) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                let p = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                diff_at(
                    &p,
                    a.get(key).unwrap_or(&Value::Null),
                    b.get(key).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for i in 0..a.len().max(b.len()) {
                diff_at(
                    &format!("{path}[{i}]"),
                    a.get(i).unwrap_or(&Value::Null),
                    b.get(i).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        (a, b) if a != b => out.push(Change {
            path: path.to_string(),
            before: a.clone(),
            after: b.clone(),
        }),
        _ => {}
    }
}
