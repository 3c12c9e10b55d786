//! The one door to the event log for decisions: load one or several
//! streams in one query, check every row (link from the previous row,
//! recomputed hash, MAC under the key it names), upcast, fold, run
//! commands, and append the events of several streams in one transaction.
//!
//! The API, the backfill, history and the replay tests all go through
//! here, so what the ledger promises holds at decision time: a stream with
//! a row that does not verify is never folded ([`StoreError::Integrity`]).

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::SerializedEvent;
use cqrs_es::{Aggregate, DomainEvent};
use queue_domain::types::{CredentialId, CustomerId, Email, GrantId, SessionId};
use queue_domain::{Credential, Customer, EventDecoder, Session};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};

use crate::chain::{self, EventRecord, Hash, MacVerifier, StoredRow, ZERO_HASH};
use crate::error::{StoreError, StoreResult};
use crate::integrity::{Finder, IntegrityError, IntegrityMonitor};
use crate::lookup;
use crate::repository::{ChainedEventRepository, Heads};

/// One loaded stream: the folded aggregate, how many events it has and the
/// hash of its last event (the next event's `prev_hash`).
#[derive(Debug)]
pub struct Loaded<A: Aggregate> {
    pub id: String,
    pub aggregate: A,
    pub version: usize,
    head: Hash,
}

impl<A: Aggregate> Loaded<A> {
    /// A stream that has no events yet (a new id).
    pub fn new_stream(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            aggregate: A::default(),
            version: 0,
            head: ZERO_HASH,
        }
    }

    pub fn is_new(&self) -> bool {
        self.version == 0
    }
}

impl<A: Aggregate<Services = ()>> Loaded<A> {
    /// Runs a command on the aggregate; on success the events are applied
    /// (not yet stored: add them to a [`Batch`]).
    pub async fn execute(&mut self, command: A::Command) -> Result<Vec<A::Event>, A::Error> {
        let sink = EventSink::default();
        self.aggregate.handle(command, &(), &sink).await?;
        Ok(sink.collect().await)
    }
}

/// Events of one or more streams that commit together, with the verified
/// head each continued stream had when it was loaded.
#[derive(Clone, Default)]
pub struct Batch {
    events: Vec<SerializedEvent>,
    heads: Heads,
}

impl Batch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds events the aggregate produced (and has applied) to the batch.
    pub fn add<A: Aggregate>(
        &mut self,
        loaded: &mut Loaded<A>,
        events: &[A::Event],
    ) -> StoreResult<()> {
        if events.is_empty() {
            return Ok(());
        }
        if loaded.version > 0 {
            let version = i64::try_from(loaded.version)
                .map_err(|_| StoreError::InvalidEvent("sequence out of range".into()))?;
            self.heads
                .entry((A::TYPE.to_owned(), loaded.id.clone()))
                .or_insert((version, loaded.head));
        }
        for event in events {
            let payload = serde_json::to_value(event)
                .map_err(|e| StoreError::InvalidEvent(format!("cannot serialise event: {e}")))?;
            loaded.version += 1;
            self.events.push(SerializedEvent {
                aggregate_id: loaded.id.clone(),
                sequence: loaded.version,
                aggregate_type: A::TYPE.to_owned(),
                event_type: event.event_type(),
                event_version: event.event_version(),
                payload,
                metadata: serde_json::json!({}),
            });
        }
        Ok(())
    }

    /// Adds another batch's events (and the heads they continue) after these.
    pub fn extend(&mut self, other: Batch) {
        self.events.extend(other.events);
        for (key, head) in other.heads {
            self.heads.entry(key).or_insert(head);
        }
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    pub fn events(&self) -> &[SerializedEvent] {
        &self.events
    }
}

/// The verified event store: [`ChainedEventRepository`] for writing, the
/// checked fold for reading, and the domain's upcasters.
#[derive(Clone)]
pub struct EventStore {
    repo: ChainedEventRepository,
    decoder: Arc<EventDecoder>,
}

/// One event row with its chain columns, decoded (the columns of
/// `SELECT aggregate_type, aggregate_id, sequence, event_type, event_version,
/// payload, metadata, recorded_at, prev_hash, hash, mac, mac_key_id`).
pub struct ChainedRow {
    pub event: SerializedEvent,
    pub recorded_at: DateTime<Utc>,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
    pub mac: Vec<u8>,
    pub mac_key_id: String,
}

impl ChainedRow {
    pub fn decode(row: &PgRow) -> StoreResult<Self> {
        let sequence: i64 = row.try_get("sequence")?;
        Ok(Self {
            event: SerializedEvent {
                aggregate_type: row.try_get("aggregate_type")?,
                aggregate_id: row.try_get("aggregate_id")?,
                sequence: usize::try_from(sequence)
                    .map_err(|_| StoreError::Ledger("negative sequence".into()))?,
                event_type: row.try_get("event_type")?,
                event_version: row.try_get("event_version")?,
                payload: row.try_get("payload")?,
                metadata: row.try_get("metadata")?,
            },
            recorded_at: row.try_get("recorded_at")?,
            prev_hash: row.try_get("prev_hash")?,
            hash: row.try_get("hash")?,
            mac: row.try_get("mac")?,
            mac_key_id: row.try_get("mac_key_id")?,
        })
    }

    pub fn sequence(&self) -> i64 {
        self.event.sequence as i64
    }

    /// The one link check on this row, given the stream's previous row.
    pub fn check(
        &self,
        previous: Option<(i64, Hash)>,
        mac: &MacVerifier,
    ) -> Result<Hash, IntegrityError> {
        let stored = StoredRow {
            record: EventRecord {
                aggregate_type: &self.event.aggregate_type,
                aggregate_id: &self.event.aggregate_id,
                sequence: self.sequence(),
                event_type: &self.event.event_type,
                event_version: &self.event.event_version,
                recorded_at: self.recorded_at,
                payload: &self.event.payload,
            },
            prev_hash: &self.prev_hash,
            hash: &self.hash,
            mac: &self.mac,
            mac_key_id: &self.mac_key_id,
        };
        chain::check_link(previous, &stored, mac).map_err(|kind| IntegrityError {
            aggregate_type: self.event.aggregate_type.clone(),
            aggregate_id: self.event.aggregate_id.clone(),
            sequence: self.sequence(),
            kind,
        })
    }
}

/// Checks rows of whole streams, in (stream, sequence) order, and returns
/// the events with each stream's last (sequence, hash). The first damaged
/// row fails the whole read: it is recorded with the monitor and nothing
/// of that read is used.
pub(crate) fn check_streams(
    rows: &[PgRow],
    mac: &MacVerifier,
    monitor: &IntegrityMonitor,
) -> StoreResult<(Vec<SerializedEvent>, Heads)> {
    let mut events = Vec::with_capacity(rows.len());
    let mut heads = Heads::new();
    for row in rows {
        let row = ChainedRow::decode(row)?;
        let key = (
            row.event.aggregate_type.clone(),
            row.event.aggregate_id.clone(),
        );
        let previous = heads.get(&key).copied();
        let hash = match row.check(previous, mac) {
            Ok(hash) => hash,
            Err(err) => {
                monitor.record(Finder::Load, &err);
                return Err(err.into());
            }
        };
        heads.insert(key, (row.sequence(), hash));
        events.push(row.event);
    }
    Ok((events, heads))
}

const SELECT_STREAMS: &str = "SELECT aggregate_type, aggregate_id, sequence, event_type, \
     event_version, payload, metadata, recorded_at, prev_hash, hash, mac, mac_key_id \
     FROM events WHERE aggregate_type = $1 AND aggregate_id = ANY($2) \
     ORDER BY aggregate_id, sequence";

impl EventStore {
    pub fn new(repo: ChainedEventRepository) -> Self {
        Self {
            repo,
            decoder: Arc::new(EventDecoder::new()),
        }
    }

    pub fn pool(&self) -> &PgPool {
        self.repo.pool()
    }

    pub fn repo(&self) -> &ChainedEventRepository {
        &self.repo
    }

    pub fn integrity(&self) -> &IntegrityMonitor {
        self.repo.integrity()
    }

    /// The one decoder (upcast, then deserialise) of stored events.
    pub fn decoder(&self) -> &EventDecoder {
        &self.decoder
    }

    /// Loads one stream (empty aggregate if it has no events).
    pub async fn load<A: Aggregate>(&self, id: &str) -> StoreResult<Loaded<A>> {
        let mut conn = self.pool().acquire().await?;
        let mut all = self.load_many_in::<A>(&mut conn, &[id.to_owned()]).await?;
        Ok(all.pop().unwrap_or_else(|| Loaded::new_stream(id)))
    }

    /// Loads several streams of one type in one query, in the order of `ids`.
    pub async fn load_many<A: Aggregate>(&self, ids: &[String]) -> StoreResult<Vec<Loaded<A>>> {
        let mut conn = self.pool().acquire().await?;
        self.load_many_in(&mut conn, ids).await
    }

    /// [`EventStore::load_many`] on the caller's connection (or transaction).
    pub async fn load_many_in<A: Aggregate>(
        &self,
        conn: &mut PgConnection,
        ids: &[String],
    ) -> StoreResult<Vec<Loaded<A>>> {
        let rows = sqlx::query(SELECT_STREAMS)
            .bind(A::TYPE)
            .bind(ids)
            .fetch_all(&mut *conn)
            .await?;
        let (events, heads) = check_streams(&rows, &self.repo.keys().verifier(), self.integrity())?;
        let mut folded: HashMap<&str, Loaded<A>> = ids
            .iter()
            .map(|id| (id.as_str(), Loaded::new_stream(id.clone())))
            .collect();
        for event in events {
            let id = event.aggregate_id.clone();
            let sequence = event.sequence;
            let event_type = event.event_type.clone();
            let domain_event: A::Event = self.decoder.decode(event).map_err(|e| {
                StoreError::Ledger(format!(
                    "{} {id} event {sequence} ({event_type}) does not deserialise: {e}",
                    A::TYPE,
                ))
            })?;
            if let Some(loaded) = folded.get_mut(id.as_str()) {
                loaded.aggregate.apply(domain_event);
                loaded.version = sequence;
            }
        }
        for ((_, id), (_, hash)) in heads {
            if let Some(loaded) = folded.get_mut(id.as_str()) {
                loaded.head = hash;
            }
        }
        Ok(ids
            .iter()
            .filter_map(|id| folded.remove(id.as_str()))
            .collect())
    }

    /// Appends a batch atomically (one statement; the previous hashes come
    /// from the verified loads).
    pub async fn append(&self, batch: Batch) -> StoreResult<()> {
        if batch.is_empty() {
            return Ok(());
        }
        self.repo.append_after(batch.heads, &batch.events).await?;
        Ok(())
    }

    /// Appends a batch inside the caller's transaction, so other rows (a
    /// uniqueness claim, a legacy flag) commit atomically with it.
    pub async fn append_in(&self, conn: &mut PgConnection, batch: Batch) -> StoreResult<()> {
        if batch.is_empty() {
            return Ok(());
        }
        self.repo
            .append_after_in(conn, batch.heads, &batch.events)
            .await?;
        Ok(())
    }

    pub async fn customer(&self, id: CustomerId) -> StoreResult<Loaded<Customer>> {
        self.load(&id.to_string()).await
    }

    pub async fn credential(&self, id: CredentialId) -> StoreResult<Loaded<Credential>> {
        self.load(&id.to_string()).await
    }

    pub async fn session(&self, id: SessionId) -> StoreResult<Loaded<Session>> {
        self.load(&id.to_string()).await
    }

    /// The customer registered (or imported) with this email (the unique
    /// email index on the events makes this consistent).
    pub async fn customer_by_email(&self, email: &Email) -> StoreResult<Option<CustomerId>> {
        let id = lookup::customer_by_email(self.pool(), email.as_str()).await?;
        Ok(id.and_then(|id| id.parse().ok()))
    }

    /// The customer that holds this grant.
    pub async fn customer_of_grant(&self, grant_id: GrantId) -> StoreResult<Option<CustomerId>> {
        let id = lookup::customer_of_grant(self.pool(), &grant_id.to_string()).await?;
        Ok(id.and_then(|id| id.parse().ok()))
    }

    /// The customer's passkeys that are registered and not revoked, checked.
    pub async fn usable_credentials_of(
        &self,
        conn: &mut PgConnection,
        customer: CustomerId,
    ) -> StoreResult<Vec<Loaded<Credential>>> {
        let ids = lookup::credential_ids_of(&mut *conn, &customer.to_string()).await?;
        let all = self.load_many_in::<Credential>(conn, &ids).await?;
        Ok(all
            .into_iter()
            .filter(|c| c.aggregate.is_usable())
            .collect())
    }

    /// Every session stream of the customer (ended ones included), checked:
    /// for decisions that must see every session, e.g. revoking them all on
    /// suspension.
    pub async fn sessions_of(&self, customer: CustomerId) -> StoreResult<Vec<Loaded<Session>>> {
        let mut conn = self.pool().acquire().await?;
        self.sessions_of_in(&mut conn, customer).await
    }

    /// [`EventStore::sessions_of`] on the caller's connection (or transaction).
    pub async fn sessions_of_in(
        &self,
        conn: &mut PgConnection,
        customer: CustomerId,
    ) -> StoreResult<Vec<Loaded<Session>>> {
        let ids = lookup::session_ids_of(&mut *conn, &customer.to_string()).await?;
        self.load_many_in::<Session>(conn, &ids).await
    }

    /// How many events the store holds (tests check failed requests left it unchanged).
    pub async fn event_count(&self) -> StoreResult<i64> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(self.pool())
            .await?)
    }
}
