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
use queue_domain::types::{CredentialId, CustomerId, Email, GrantId, SessionId, TenantId};
use queue_domain::{Credential, Customer, EventDecoder, Session};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};

use crate::chain::{self, EventRecord, Hash, MacVerifier, StoredRow, ZERO_HASH};
use crate::error::{StoreError, StoreResult};
use crate::fold_cache::{self, Fold, FoldCache};
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
    /// Verified folds, so a load reads only the rows after them (ADR 0215).
    folds: Arc<FoldCache>,
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

/// The rows of several streams of one type from a sequence on each: `$2`
/// the ids, `$3` where each starts (0: the whole stream; a cached fold's
/// version: its anchor row and what follows). An index scan of the
/// primary key per id (`unit_of_work::load_uses_the_primary_key` checks
/// the plan).
pub const SELECT_STREAMS_FROM: &str = "SELECT e.aggregate_type, e.aggregate_id, e.sequence, \
     e.event_type, e.event_version, e.payload, e.metadata, e.recorded_at, e.prev_hash, e.hash, \
     e.mac, e.mac_key_id \
     FROM unnest($2::text[], $3::bigint[]) AS w(id, start) \
     JOIN events e ON e.aggregate_type = $1 AND e.aggregate_id = w.id AND e.sequence >= w.start \
     ORDER BY e.aggregate_id, e.sequence";

/// A load that found a cached fold it cannot continue (see `fold_cache`).
struct InDoubt;

impl EventStore {
    pub fn new(repo: ChainedEventRepository) -> Self {
        Self::with_fold_cache(repo, fold_cache::DEFAULT_CAPACITY)
    }

    /// A store that keeps up to `capacity` verified folds (0: none, every
    /// load folds whole streams).
    pub fn with_fold_cache(repo: ChainedEventRepository, capacity: usize) -> Self {
        Self {
            repo,
            decoder: Arc::new(EventDecoder::new()),
            folds: Arc::new(FoldCache::new(capacity)),
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
    pub async fn load<A: Aggregate + Clone + 'static>(&self, id: &str) -> StoreResult<Loaded<A>> {
        let mut conn = self.pool().acquire().await?;
        let mut all = self.load_many_in::<A>(&mut conn, &[id.to_owned()]).await?;
        Ok(all.pop().unwrap_or_else(|| Loaded::new_stream(id)))
    }

    /// Loads several streams of one type in one query, in the order of `ids`.
    pub async fn load_many<A: Aggregate + Clone + 'static>(
        &self,
        ids: &[String],
    ) -> StoreResult<Vec<Loaded<A>>> {
        let mut conn = self.pool().acquire().await?;
        self.load_many_in(&mut conn, ids).await
    }

    /// [`EventStore::load_many`] on the caller's connection (or transaction).
    ///
    /// A stream with a cached verified fold is read from that fold's
    /// version on: its anchor row must still carry the fold's hash and every
    /// newer row is checked from it; otherwise (or with no fold) the whole
    /// stream is read and checked. Either way only checked rows are folded.
    pub async fn load_many_in<A: Aggregate + Clone + 'static>(
        &self,
        conn: &mut PgConnection,
        ids: &[String],
    ) -> StoreResult<Vec<Loaded<A>>> {
        // Each id once, in the order given.
        let mut seen = std::collections::HashSet::with_capacity(ids.len());
        let unique: Vec<&String> = ids.iter().filter(|id| seen.insert(*id)).collect();
        let verifier = self.repo.keys().verifier();
        let starts: Vec<Loaded<A>> = unique
            .iter()
            .map(|id| match self.folds.get::<A>(A::TYPE, id, &verifier) {
                Some(fold) => Loaded {
                    id: (*id).clone(),
                    aggregate: fold.aggregate,
                    version: fold.version,
                    head: fold.head,
                },
                None => Loaded::new_stream((*id).clone()),
            })
            .collect();
        let cached = starts.iter().any(|l| l.version > 0);
        let loaded = match self.load_from(conn, starts, &verifier).await {
            Ok(Ok(loaded)) => loaded,
            Ok(Err(InDoubt)) if cached => {
                for id in &unique {
                    self.folds.forget(A::TYPE, id);
                }
                let fresh = unique
                    .iter()
                    .map(|id| Loaded::new_stream((*id).clone()))
                    .collect();
                match self.load_from(conn, fresh, &verifier).await {
                    Ok(Ok(loaded)) => loaded,
                    Ok(Err(InDoubt)) => {
                        return Err(StoreError::Ledger(
                            "a stream load without cached folds was in doubt".into(),
                        ))
                    }
                    Err(err) => return Err(err),
                }
            }
            Ok(Err(InDoubt)) => {
                return Err(StoreError::Ledger(
                    "a stream load without cached folds was in doubt".into(),
                ))
            }
            Err(err) => {
                for id in &unique {
                    self.folds.forget(A::TYPE, id);
                }
                return Err(err);
            }
        };
        Ok(loaded)
    }

    /// Reads each stream from `start.version` on (its anchor row, then the
    /// rows to check), checks every row after the anchor from the one
    /// before it, and folds them onto `start`. Caches what it folded.
    async fn load_from<A: Aggregate + Clone + 'static>(
        &self,
        conn: &mut PgConnection,
        mut loaded: Vec<Loaded<A>>,
        verifier: &Arc<MacVerifier>,
    ) -> StoreResult<Result<Vec<Loaded<A>>, InDoubt>> {
        let ids: Vec<&str> = loaded.iter().map(|l| l.id.as_str()).collect();
        let from: Vec<i64> = loaded.iter().map(|l| l.version as i64).collect();
        let rows = sqlx::query(SELECT_STREAMS_FROM)
            .bind(A::TYPE)
            .bind(&ids)
            .bind(&from)
            .fetch_all(&mut *conn)
            .await?;
        let index: HashMap<&str, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        // Whether each stream still waits for its anchor row.
        let mut anchor_due: Vec<bool> = loaded.iter().map(|l| l.version > 0).collect();
        let mut changed = vec![false; loaded.len()];
        // Check every row first: a damaged row fails the whole load before
        // anything of it is folded.
        let mut checked: Vec<(usize, ChainedRow)> = Vec::with_capacity(rows.len());
        let mut heads: Vec<Option<(i64, Hash)>> = loaded
            .iter()
            .map(|l| (l.version > 0).then_some((l.version as i64, l.head)))
            .collect();
        for row in &rows {
            let id: &str = row.try_get("aggregate_id")?;
            let Some(&i) = index.get(id) else {
                return Err(StoreError::Ledger(format!(
                    "unexpected stream {id} in a load"
                )));
            };
            if anchor_due[i] {
                let sequence: i64 = row.try_get("sequence")?;
                let hash: &[u8] = row.try_get("hash")?;
                if sequence != from[i] || hash != loaded[i].head.as_slice() {
                    return Ok(Err(InDoubt));
                }
                anchor_due[i] = false;
                continue;
            }
            let row = ChainedRow::decode(row)?;
            let hash = match row.check(heads[i], verifier) {
                Ok(hash) => hash,
                Err(err) => {
                    self.integrity().record(Finder::Load, &err);
                    return Err(err.into());
                }
            };
            heads[i] = Some((row.sequence(), hash));
            checked.push((i, row));
        }
        if anchor_due.iter().any(|due| *due) {
            return Ok(Err(InDoubt));
        }
        drop(index);
        for (i, row) in checked {
            let sequence = row.event.sequence;
            let event_type = row.event.event_type.clone();
            let domain_event: A::Event = self.decoder.decode(row.event).map_err(|e| {
                StoreError::Ledger(format!(
                    "{} {} event {sequence} ({event_type}) does not deserialise: {e}",
                    A::TYPE,
                    loaded[i].id,
                ))
            })?;
            let target = &mut loaded[i];
            target.aggregate.apply(domain_event);
            target.version = sequence;
            changed[i] = true;
        }
        for (i, target) in loaded.iter_mut().enumerate() {
            if let Some((_, hash)) = heads[i] {
                target.head = hash;
            }
            if changed[i] {
                self.folds.put(
                    A::TYPE,
                    &target.id,
                    Fold {
                        version: target.version,
                        head: target.head,
                        aggregate: &target.aggregate,
                    },
                    verifier,
                );
            }
        }
        Ok(Ok(loaded))
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

    /// The customer of the default tenant registered (or imported) with
    /// this email (the unique email index on the events makes this
    /// consistent). The public passkey and backup-code logins are the
    /// default tenant's; other tenants' customers sign in through SAML.
    pub async fn customer_by_email(&self, email: &Email) -> StoreResult<Option<CustomerId>> {
        self.customer_by_email_in(TenantId::DEFAULT, email).await
    }

    /// The customer of `tenant` registered (or imported) with this email;
    /// emails are unique per tenant.
    pub async fn customer_by_email_in(
        &self,
        tenant: TenantId,
        email: &Email,
    ) -> StoreResult<Option<CustomerId>> {
        let id =
            lookup::customer_by_email(self.pool(), email.as_str(), &tenant.to_string()).await?;
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
