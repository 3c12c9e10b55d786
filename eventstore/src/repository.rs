//! The chained event repository: postgres-es's table layout and optimistic
//! locking, plus the per-stream hash chain, the MAC and the commit order.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use cqrs_es::persist::{
    PersistedEventRepository, PersistenceError, ReplayStream, SerializedEvent, SerializedSnapshot,
};
use cqrs_es::Aggregate;
use serde_json::Value;
use sqlx::{PgConnection, PgPool, Row};

use crate::chain::{self, EventRecord, Hash, MacVerifier, ZERO_HASH};
use crate::clock::Clock;
use crate::error::{StoreError, StoreResult};
use crate::integrity::IntegrityMonitor;
use crate::keys::MacKeys;
use crate::reloadable::Reloadable;
use crate::unit_of_work::check_streams;

/// MAC keys that can be swapped at run time (rotation) while readers keep
/// the set they started with: a [`Reloadable`] key set with its verifier.
#[derive(Clone, Debug)]
pub struct SharedMacKeys {
    keys: Reloadable<KeyedSet>,
}

/// The keys and a verifier with every key already absorbed, swapped together.
#[derive(Debug)]
struct KeyedSet {
    keys: Arc<MacKeys>,
    verifier: Arc<MacVerifier>,
}

impl KeyedSet {
    fn new(keys: MacKeys) -> Self {
        Self {
            verifier: Arc::new(MacVerifier::new(&keys)),
            keys: Arc::new(keys),
        }
    }
}

impl SharedMacKeys {
    pub fn new(keys: MacKeys) -> Self {
        Self {
            keys: Reloadable::new(KeyedSet::new(keys)),
        }
    }

    pub fn current(&self) -> Arc<MacKeys> {
        self.keys.with(|set| Arc::clone(&set.keys))
    }

    /// A verifier for every current key (for checking stored MACs); a
    /// lock-free read of the verifier built when the keys were loaded.
    pub fn verifier(&self) -> Arc<MacVerifier> {
        self.keys.with(|set| Arc::clone(&set.verifier))
    }

    pub fn replace(&self, keys: MacKeys) {
        self.keys.replace(KeyedSet::new(keys));
    }

    /// Records that a reload failed; the current keys stay in use.
    pub fn mark_degraded(&self) {
        self.keys.mark_degraded();
    }

    pub fn is_degraded(&self) -> bool {
        self.keys.is_degraded()
    }
}

/// What the store computed for one appended event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendedEvent {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub recorded_at: DateTime<Utc>,
    pub prev_hash: Hash,
    pub hash: Hash,
    pub mac_key_id: String,
}

/// The last known (sequence, hash) of recently used streams. Events are
/// immutable, so an entry can be old but never wrong: it only ever holds
/// events read from the database or appended by a committed statement. A
/// stale entry just leads to the primary-key conflict cqrs-es expects.
#[derive(Default)]
struct ChainHeads {
    heads: Mutex<HashMap<(String, String), (i64, Hash)>>,
}

/// Entries kept before the cache starts over (bounded memory).
const CHAIN_HEADS_CAPACITY: usize = 100_000;

impl ChainHeads {
    fn get(&self, aggregate_type: &str, aggregate_id: &str) -> Option<(i64, Hash)> {
        let heads = self.heads.lock().ok()?;
        heads
            .get(&(aggregate_type.to_string(), aggregate_id.to_string()))
            .copied()
    }

    fn remember(&self, aggregate_type: &str, aggregate_id: &str, sequence: i64, hash: Hash) {
        if let Ok(mut heads) = self.heads.lock() {
            if heads.len() >= CHAIN_HEADS_CAPACITY {
                heads.clear();
            }
            let entry = heads
                .entry((aggregate_type.to_string(), aggregate_id.to_string()))
                .or_insert((sequence, hash));
            if entry.0 <= sequence {
                *entry = (sequence, hash);
            }
        }
    }
}

/// The previous (sequence, hash) of each stream a batch continues.
pub(crate) type Heads = HashMap<(String, String), (i64, Hash)>;

/// The chained, MAC-sealed event store.
#[derive(Clone)]
pub struct ChainedEventRepository {
    pool: PgPool,
    keys: SharedMacKeys,
    clock: Arc<dyn Clock>,
    heads: Arc<ChainHeads>,
    integrity: IntegrityMonitor,
}

/// The whole stream: a suffix cannot be checked without the rows before it.
const SELECT_STREAM: &str =
    "SELECT aggregate_type, aggregate_id, sequence, event_type, event_version, payload, \
     metadata, recorded_at, prev_hash, hash, mac, mac_key_id FROM events \
     WHERE aggregate_type = $1 AND aggregate_id = $2 ORDER BY sequence";

const INSERT_EVENTS: &str = "INSERT INTO events (aggregate_type, aggregate_id, sequence, \
     event_type, event_version, payload, metadata, recorded_at, prev_hash, hash, mac, mac_key_id) \
     SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], \
     $6::jsonb[], $7::jsonb[], $8::timestamptz[], $9::bytea[], $10::bytea[], $11::bytea[], $12::text[])";

impl ChainedEventRepository {
    pub fn new(pool: PgPool, keys: SharedMacKeys, clock: Arc<dyn Clock>) -> Self {
        Self {
            pool,
            keys,
            clock,
            heads: Arc::default(),
            integrity: IntegrityMonitor::new(),
        }
    }

    /// Shares `monitor` for integrity findings (the API's `/readyz` and the
    /// sealer report through the same one).
    pub fn with_integrity(mut self, monitor: IntegrityMonitor) -> Self {
        self.integrity = monitor;
        self
    }

    pub fn integrity(&self) -> &IntegrityMonitor {
        &self.integrity
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn keys(&self) -> &SharedMacKeys {
        &self.keys
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Appends events atomically. When every stream's previous hash is
    /// known (the usual case: cqrs-es loaded the aggregate just before), this
    /// is one INSERT statement and one round trip; otherwise the previous
    /// hashes are read in the same short transaction.
    pub async fn append(&self, events: &[SerializedEvent]) -> StoreResult<Vec<AppendedEvent>> {
        self.append_after(Heads::new(), events).await
    }

    /// Appends events whose streams' previous (sequence, hash) the caller
    /// read and verified (the unit of work's loads): one INSERT, no read.
    /// A stream missing from `heads` falls back to the cache or a read.
    pub async fn append_after(
        &self,
        heads: Heads,
        events: &[SerializedEvent],
    ) -> StoreResult<Vec<AppendedEvent>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let appended = match self.complete_heads(heads, events) {
            Some(previous) => {
                let mut conn = self.pool.acquire().await?;
                self.chain_and_insert(&mut conn, events, previous).await?
            }
            None => {
                let mut tx = self.pool.begin().await?;
                let appended = self.append_in(&mut tx, events).await?;
                tx.commit().await?;
                appended
            }
        };
        // Committed: the new heads are facts now.
        self.remember_appended(&appended);
        Ok(appended)
    }

    /// [`ChainedEventRepository::append_after`] inside the caller's transaction.
    pub async fn append_after_in(
        &self,
        conn: &mut PgConnection,
        heads: Heads,
        events: &[SerializedEvent],
    ) -> StoreResult<Vec<AppendedEvent>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        match self.complete_heads(heads, events) {
            Some(previous) => self.chain_and_insert(conn, events, previous).await,
            None => self.append_in(conn, events).await,
        }
    }

    /// `heads` plus cached heads for the streams it lacks, if that covers
    /// every stream the batch continues.
    fn complete_heads(&self, mut heads: Heads, events: &[SerializedEvent]) -> Option<Heads> {
        let missing = events.iter().any(|e| {
            e.sequence > 1
                && !heads.contains_key(&(e.aggregate_type.clone(), e.aggregate_id.clone()))
        });
        if missing {
            let cached = self.known_heads(events)?;
            for (key, head) in cached {
                heads.entry(key).or_insert(head);
            }
        }
        Some(heads)
    }

    fn remember_appended(&self, appended: &[AppendedEvent]) {
        for event in appended {
            self.heads.remember(
                &event.aggregate_type,
                &event.aggregate_id,
                event.sequence,
                event.hash,
            );
        }
    }

    /// The previous hash of every stream the batch continues, if all are cached.
    fn known_heads(&self, events: &[SerializedEvent]) -> Option<Heads> {
        let mut previous = Heads::new();
        for event in events {
            let key = (event.aggregate_type.clone(), event.aggregate_id.clone());
            if event.sequence <= 1 || previous.contains_key(&key) {
                continue;
            }
            let (seq, hash) = self.heads.get(&event.aggregate_type, &event.aggregate_id)?;
            if seq + 1 != event.sequence as i64 {
                return None;
            }
            previous.insert(key, (seq, hash));
        }
        Some(previous)
    }

    /// Appends events inside the caller's transaction, so other rows (a
    /// uniqueness claim, a legacy flag) commit atomically with them. Events of
    /// one stream must be consecutive and in sequence order.
    pub async fn append_in(
        &self,
        conn: &mut PgConnection,
        events: &[SerializedEvent],
    ) -> StoreResult<Vec<AppendedEvent>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let previous = self.previous_hashes(conn, events).await?;
        self.chain_and_insert(conn, events, previous).await
    }

    /// Computes each event's chain link and MAC and inserts them in one statement.
    async fn chain_and_insert(
        &self,
        conn: &mut PgConnection,
        events: &[SerializedEvent],
        mut previous: Heads,
    ) -> StoreResult<Vec<AppendedEvent>> {
        let keys = self.keys.current();
        let recorded_at = chain::truncate_time(self.clock.now());
        chain::check_time(&recorded_at)?;

        let n = events.len();
        let mut cols = InsertColumns::with_capacity(n);
        let mut appended = Vec::with_capacity(n);
        for event in events {
            let sequence = i64::try_from(event.sequence)
                .map_err(|_| StoreError::InvalidEvent("sequence out of range".into()))?;
            let key = (event.aggregate_type.clone(), event.aggregate_id.clone());
            let prev_hash = match previous.get(&key) {
                Some((seq, hash)) if *seq + 1 == sequence => *hash,
                Some(_) => {
                    return Err(StoreError::InvalidEvent(format!(
                        "stream {}/{}: sequence {sequence} does not follow the stream",
                        event.aggregate_type, event.aggregate_id
                    )))
                }
                None if sequence == 1 => ZERO_HASH,
                None => return Err(StoreError::OptimisticLock),
            };
            let canonical = chain::canonical_record(&EventRecord {
                aggregate_type: &event.aggregate_type,
                aggregate_id: &event.aggregate_id,
                sequence,
                event_type: &event.event_type,
                event_version: &event.event_version,
                recorded_at,
                payload: &event.payload,
            })?;
            let hash = chain::event_hash(&prev_hash, &canonical);
            let mac = chain::event_mac(keys.current_key(), &hash);
            previous.insert(key, (sequence, hash));
            cols.push(
                event,
                sequence,
                recorded_at,
                &prev_hash,
                &hash,
                &mac,
                keys.current_id(),
            );
            appended.push(AppendedEvent {
                aggregate_type: event.aggregate_type.clone(),
                aggregate_id: event.aggregate_id.clone(),
                sequence,
                recorded_at,
                prev_hash,
                hash,
                mac_key_id: keys.current_id().to_string(),
            });
        }
        cols.insert(conn).await?;
        Ok(appended)
    }

    /// The last stored (sequence, hash) of each stream the batch continues.
    async fn previous_hashes(
        &self,
        conn: &mut PgConnection,
        events: &[SerializedEvent],
    ) -> StoreResult<Heads> {
        let mut types = Vec::new();
        let mut ids = Vec::new();
        let mut seqs = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for event in events {
            if event.sequence > 1 && seen.insert((&event.aggregate_type, &event.aggregate_id)) {
                types.push(event.aggregate_type.clone());
                ids.push(event.aggregate_id.clone());
                seqs.push(event.sequence as i64 - 1);
            }
        }
        if types.is_empty() {
            return Ok(Heads::new());
        }
        let rows = sqlx::query(
            "SELECT e.aggregate_type, e.aggregate_id, e.sequence, e.hash FROM events e \
             JOIN UNNEST($1::text[], $2::text[], $3::bigint[]) AS k(t, i, s) \
             ON e.aggregate_type = k.t AND e.aggregate_id = k.i AND e.sequence = k.s",
        )
        .bind(&types)
        .bind(&ids)
        .bind(&seqs)
        .fetch_all(&mut *conn)
        .await?;
        rows.iter()
            .map(|row| {
                let hash: Vec<u8> = row.try_get("hash")?;
                let hash = chain::to_hash(&hash)
                    .ok_or_else(|| StoreError::Ledger("stored hash is not 32 bytes".into()))?;
                Ok((
                    (row.try_get("aggregate_type")?, row.try_get("aggregate_id")?),
                    (row.try_get("sequence")?, hash),
                ))
            })
            .collect()
    }

    /// A whole stream, every row checked (cqrs-es loads come here too).
    async fn select_stream(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        after: i64,
    ) -> StoreResult<Vec<SerializedEvent>> {
        let rows = sqlx::query(SELECT_STREAM)
            .bind(aggregate_type)
            .bind(aggregate_id)
            .fetch_all(&self.pool)
            .await?;
        let (events, heads) = check_streams(&rows, &self.keys.verifier(), &self.integrity)?;
        for ((aggregate_type, aggregate_id), (sequence, hash)) in heads {
            self.heads
                .remember(&aggregate_type, &aggregate_id, sequence, hash);
        }
        let after = usize::try_from(after).unwrap_or(usize::MAX);
        Ok(events.into_iter().filter(|e| e.sequence > after).collect())
    }
}

/// Column arrays for one multi-row insert.
struct InsertColumns {
    aggregate_type: Vec<String>,
    aggregate_id: Vec<String>,
    sequence: Vec<i64>,
    event_type: Vec<String>,
    event_version: Vec<String>,
    payload: Vec<Value>,
    metadata: Vec<Value>,
    recorded_at: Vec<DateTime<Utc>>,
    prev_hash: Vec<Vec<u8>>,
    hash: Vec<Vec<u8>>,
    mac: Vec<Vec<u8>>,
    mac_key_id: Vec<String>,
}

impl InsertColumns {
    fn with_capacity(n: usize) -> Self {
        Self {
            aggregate_type: Vec::with_capacity(n),
            aggregate_id: Vec::with_capacity(n),
            sequence: Vec::with_capacity(n),
            event_type: Vec::with_capacity(n),
            event_version: Vec::with_capacity(n),
            payload: Vec::with_capacity(n),
            metadata: Vec::with_capacity(n),
            recorded_at: Vec::with_capacity(n),
            prev_hash: Vec::with_capacity(n),
            hash: Vec::with_capacity(n),
            mac: Vec::with_capacity(n),
            mac_key_id: Vec::with_capacity(n),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        event: &SerializedEvent,
        sequence: i64,
        recorded_at: DateTime<Utc>,
        prev_hash: &Hash,
        hash: &Hash,
        mac: &Hash,
        key_id: &str,
    ) {
        self.aggregate_type.push(event.aggregate_type.clone());
        self.aggregate_id.push(event.aggregate_id.clone());
        self.sequence.push(sequence);
        self.event_type.push(event.event_type.clone());
        self.event_version.push(event.event_version.clone());
        self.payload.push(event.payload.clone());
        self.metadata.push(event.metadata.clone());
        self.recorded_at.push(recorded_at);
        self.prev_hash.push(prev_hash.to_vec());
        self.hash.push(hash.to_vec());
        self.mac.push(mac.to_vec());
        self.mac_key_id.push(key_id.to_string());
    }

    async fn insert(self, conn: &mut PgConnection) -> StoreResult<()> {
        sqlx::query(INSERT_EVENTS)
            .bind(self.aggregate_type)
            .bind(self.aggregate_id)
            .bind(self.sequence)
            .bind(self.event_type)
            .bind(self.event_version)
            .bind(self.payload)
            .bind(self.metadata)
            .bind(self.recorded_at)
            .bind(self.prev_hash)
            .bind(self.hash)
            .bind(self.mac)
            .bind(self.mac_key_id)
            .execute(conn)
            .await?;
        Ok(())
    }
}

fn replay(events: Vec<SerializedEvent>) -> ReplayStream {
    let (mut feed, stream) = ReplayStream::new(events.len().max(1));
    tokio::spawn(async move {
        for event in events {
            if feed.push(Ok(event)).await.is_err() {
                return;
            }
        }
    });
    stream
}

impl PersistedEventRepository for ChainedEventRepository {
    async fn get_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        Ok(self.select_stream(A::TYPE, aggregate_id, 0).await?)
    }

    async fn get_last_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        last_sequence: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        let after = i64::try_from(last_sequence).unwrap_or(i64::MAX);
        Ok(self.select_stream(A::TYPE, aggregate_id, after).await?)
    }

    /// Snapshots are not used: streams are short and every load is a fold.
    async fn get_snapshot<A: Aggregate>(
        &self,
        _aggregate_id: &str,
    ) -> Result<Option<SerializedSnapshot>, PersistenceError> {
        Ok(None)
    }

    async fn persist<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        _snapshot_update: Option<(String, Value, usize)>,
    ) -> Result<(), PersistenceError> {
        self.append(events).await?;
        Ok(())
    }

    async fn stream_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<ReplayStream, PersistenceError> {
        Ok(replay(self.select_stream(A::TYPE, aggregate_id, 0).await?))
    }

    async fn stream_all_events<A: Aggregate>(&self) -> Result<ReplayStream, PersistenceError> {
        let rows = sqlx::query(
            "SELECT aggregate_type, aggregate_id, sequence, event_type, event_version, payload, \
             metadata, recorded_at, prev_hash, hash, mac, mac_key_id FROM events \
             WHERE aggregate_type = $1 ORDER BY aggregate_id, sequence",
        )
        .bind(A::TYPE)
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::from)?;
        // Every row checked, as any other read of streams.
        let (events, _) = check_streams(&rows, &self.keys.verifier(), &self.integrity)?;
        Ok(replay(events))
    }
}
