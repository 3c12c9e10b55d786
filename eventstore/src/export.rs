//! Compliance export (ledger-format.md §6): JSON Lines of events with their
//! chain fields and RFC 6962 inclusion proofs against a signed checkpoint,
//! and the fully offline check of such a file.
//!
//! Memory stays bounded for any size: proofs are assembled from one block of
//! `BLOCK` leaf hashes plus the roots of all blocks (RFC 6962 subtrees of a
//! tree split at powers of two are either inside one aligned block or whole
//! blocks), and the checker keeps one (sequence, hash) per stream.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::time::Instant;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use queue_domain::types::TenantId;
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};

use crate::chain::{self, EventRecord, Hash, ZERO_HASH};
use crate::checkpoint::Checkpoint;
use crate::error::{StoreError, StoreResult};
use crate::keys::NoteVerifier;
use crate::merkle::{self, Frontier, LeafRange};
use crate::strict_json;
use crate::verify::VerifyProgress;

pub const EXPORT_FORMAT: &str = "queue-export/1";
/// Leaves per proof block (2 MiB of leaf hashes in memory at most).
pub const BLOCK: u64 = 65_536;

#[derive(Clone, Debug, Default)]
pub struct ExportFilter {
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub customer_id: Option<String>,
    /// Only the streams of this tenant: its `Tenant` stream, its customers'
    /// streams and the streams whose first event names one of them.
    pub tenant_id: Option<TenantId>,
    /// A contiguous ledger range (inclusive); the verifier then checks
    /// completeness (unless a tenant filter narrows it: see [`export`]).
    pub from_seq: Option<u64>,
    pub to_seq: Option<u64>,
}

/// The streams of the tenant `$6` (its id as text; `$7` is the default
/// tenant's id): its `Tenant` stream; every `Customer` stream whose first
/// event puts the customer in it (a `CustomerRegistered`/`CustomerProvisioned`/`CustomerImported`
/// without `tenant_id` is the default tenant's, as in migration 0330); and
/// every other stream whose first event names (`customer_id`) one of those
/// customers, read the way the customer filter reads it; and every audit
/// entry about no customer that names the tenant itself (`tenant_id`).
///
/// Joined to the rows rather than tested with `$n IS NULL OR … IN (…)` like
/// the other filters: under the `OR` the planner rescanned the materialised
/// set for every row (9 minutes on a million events, 1% of them the
/// tenant's); joined, it is one pass over the first events (3.2 s there,
/// the customer filter's 3.8 s; 9 s for a tenant holding half the log,
/// whole export 5 s).
const TENANT_STREAMS: &str = "\
WITH tenant_customers AS MATERIALIZED ( \
   SELECT m.aggregate_id FROM events m \
   WHERE m.aggregate_type = 'Customer' AND m.sequence = 1 \
     AND coalesce(m.payload->'CustomerRegistered'->>'tenant_id', \
                  m.payload->'CustomerProvisioned'->>'tenant_id', \
                  m.payload->'CustomerImported'->>'tenant_id', $7::text) = $6::text), \
 tenant_streams AS ( \
   SELECT 'Tenant'::text AS aggregate_type, $6::text AS aggregate_id \
   UNION SELECT 'Customer', c.aggregate_id FROM tenant_customers c \
   UNION SELECT s.aggregate_type, s.aggregate_id FROM events s \
     CROSS JOIN LATERAL jsonb_each( \
       CASE WHEN jsonb_typeof(s.payload) = 'object' THEN s.payload END) p \
     WHERE s.sequence = 1 AND s.aggregate_type NOT IN ('Customer', 'Tenant') \
       AND jsonb_typeof(p.value) = 'object' \
       AND p.value->>'customer_id' IN (SELECT c.aggregate_id FROM tenant_customers c) \
   UNION SELECT 'Audit', a.aggregate_id FROM events a \
     WHERE a.aggregate_type = 'Audit' AND a.sequence = 1 \
       AND a.payload->'AuditRecorded'->>'tenant_id' = $6::text) ";

#[derive(Clone, Debug, Serialize)]
pub struct ExportSummary {
    pub events: u64,
    pub tree_size: u64,
    pub checkpoint_key_id: String,
    pub elapsed_ms: u64,
    pub events_per_second: u64,
}

/// Roots of all `block`-sized aligned blocks of a tree of `size` leaves
/// (the last block may be partial).
struct BlockedTree {
    size: u64,
    block: u64,
    roots: Vec<Hash>,
    /// Roots of runs of whole blocks already computed: every proof of the
    /// export needs the same few (at most two per level above a block).
    spans: HashMap<(usize, usize), Hash>,
}

/// One loaded block: every level of its perfect subtrees, plus a memo of the
/// few imperfect right-edge subtrees of a partial last block.
struct LoadedBlock {
    start: u64,
    levels: Vec<Vec<Hash>>,
    edges: HashMap<LeafRange, Hash>,
}

impl LoadedBlock {
    fn new(start: u64, leaves: Vec<Hash>) -> Self {
        let mut levels = vec![leaves];
        loop {
            let next: Vec<Hash> = match levels.last() {
                Some(level) if level.len() > 1 => level
                    .chunks_exact(2)
                    .map(|pair| merkle::node_hash(&pair[0], &pair[1]))
                    .collect(),
                _ => break,
            };
            levels.push(next);
        }
        Self {
            start,
            levels,
            edges: HashMap::new(),
        }
    }

    fn len(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    /// The root of leaves `start..end` (absolute), which must lie in this block.
    fn root(&mut self, (start, end): LeafRange) -> Hash {
        let (a, b) = (start - self.start, end - self.start);
        let width = b - a;
        if width.is_power_of_two() && a % width == 0 {
            let level = width.trailing_zeros() as usize;
            if let Some(node) = self
                .levels
                .get(level)
                .and_then(|l| l.get((a / width) as usize))
            {
                return *node;
            }
        }
        // An imperfect subtree: only on the right edge of a partial block.
        if let Some(hash) = self.edges.get(&(a, b)) {
            return *hash;
        }
        let leaves = self.levels.first().map(Vec::as_slice).unwrap_or(&[]);
        let hash = merkle::root_of(&leaves[a as usize..b as usize]);
        self.edges.insert((a, b), hash);
        hash
    }
}

impl BlockedTree {
    /// The root of one RFC 6962 subtree, from the loaded block or the block roots.
    fn range_root(&mut self, (start, end): LeafRange, block: &mut LoadedBlock) -> Option<Hash> {
        if start >= block.start && end <= block.start + block.len() {
            return Some(block.root((start, end)));
        }
        let aligned_end = end % self.block == 0 || end == self.size;
        if start % self.block == 0 && aligned_end {
            let (a, b) = (
                (start / self.block) as usize,
                end.div_ceil(self.block) as usize,
            );
            if let Some(hash) = self.spans.get(&(a, b)) {
                return Some(*hash);
            }
            let hash = self.roots.get(a..b).map(merkle::root_of)?;
            self.spans.insert((a, b), hash);
            return Some(hash);
        }
        None
    }

    fn proof(&mut self, index: u64, block: &mut LoadedBlock) -> Option<Vec<Hash>> {
        merkle::inclusion_ranges(index, self.size)
            .into_iter()
            .map(|range| self.range_root(range, block))
            .collect()
    }

    fn root(&self) -> Hash {
        merkle::root_of(&self.roots)
    }
}

async fn block_roots(pool: &PgPool, size: u64, block: u64) -> StoreResult<BlockedTree> {
    let mut rows = sqlx::query("SELECT event_hash FROM ledger WHERE seq <= $1 ORDER BY seq")
        .bind(size as i64)
        .fetch(pool);
    let mut roots = Vec::new();
    let mut frontier = Frontier::new();
    while let Some(row) = rows.try_next().await? {
        let hash: Vec<u8> = row.try_get("event_hash")?;
        frontier.push(merkle::leaf_hash(&hash));
        if frontier.size() == block {
            roots.push(frontier.root());
            frontier = Frontier::new();
        }
    }
    if frontier.size() > 0 {
        roots.push(frontier.root());
    }
    Ok(BlockedTree {
        size,
        block,
        roots,
        spans: HashMap::new(),
    })
}

async fn block_leaves(pool: &PgPool, tree: &BlockedTree, block_no: u64) -> StoreResult<Vec<Hash>> {
    let start = block_no * tree.block;
    let end = (start + tree.block).min(tree.size);
    let hashes: Vec<Vec<u8>> = sqlx::query_scalar(
        "SELECT event_hash FROM ledger WHERE seq > $1 AND seq <= $2 ORDER BY seq",
    )
    .bind(start as i64)
    .bind(end as i64)
    .fetch_all(pool)
    .await?;
    Ok(hashes.iter().map(|h| merkle::leaf_hash(h)).collect())
}

/// The root of leaves `start..end`, streamed from the ledger.
async fn range_root_from_ledger(pool: &PgPool, (start, end): LeafRange) -> StoreResult<Hash> {
    let mut rows =
        sqlx::query("SELECT event_hash FROM ledger WHERE seq > $1 AND seq <= $2 ORDER BY seq")
            .bind(start as i64)
            .bind(end as i64)
            .fetch(pool);
    let mut frontier = Frontier::new();
    while let Some(row) = rows.try_next().await? {
        let hash: Vec<u8> = row.try_get("event_hash")?;
        frontier.push(merkle::leaf_hash(&hash));
    }
    Ok(frontier.root())
}

/// The latest checkpoint that verifies with `verifier`. Rows that do not
/// verify (written by someone else; `queue verify` reports them) are
/// passed over, newest first, up to a few hundred.
pub async fn latest_checkpoint(
    pool: &PgPool,
    verifier: &NoteVerifier,
) -> StoreResult<(Checkpoint, String)> {
    let notes: Vec<String> =
        sqlx::query_scalar("SELECT note FROM checkpoints ORDER BY tree_size DESC LIMIT 256")
            .fetch_all(pool)
            .await?;
    if notes.is_empty() {
        return Err(StoreError::Ledger(
            "no checkpoint yet: seal first (queue seal)".into(),
        ));
    }
    notes
        .into_iter()
        .find_map(|note| Checkpoint::open(&note, verifier).ok().map(|cp| (cp, note)))
        .ok_or_else(|| {
            StoreError::Ledger(
                "no recent checkpoint verifies with the checkpoint key (run queue verify)".into(),
            )
        })
}

/// A consistency proof from the tree of `from_size` leaves to that of `to_size`.
pub async fn consistency_proof(
    pool: &PgPool,
    from_size: u64,
    to_size: u64,
) -> StoreResult<Vec<Hash>> {
    let mut proof = Vec::new();
    for range in merkle::consistency_ranges(from_size, to_size) {
        proof.push(range_root_from_ledger(pool, range).await?);
    }
    Ok(proof)
}

/// Writes an export of the sealed events matching `filter`, proven against
/// the latest checkpoint (seal first so that it covers what you need).
pub async fn export(
    pool: &PgPool,
    verifier: &NoteVerifier,
    filter: &ExportFilter,
    consistency_from: Option<u64>,
    out: &mut dyn Write,
    progress: &dyn VerifyProgress,
) -> StoreResult<ExportSummary> {
    let started = Instant::now();
    let (checkpoint, note) = latest_checkpoint(pool, verifier).await?;
    let size = checkpoint.tree_size;
    let from = filter.from_seq.unwrap_or(1);
    let to = filter.to_seq.unwrap_or(size);
    if from < 1 || to > size || from > to + 1 {
        return Err(StoreError::Ledger(format!(
            "ledger range {from}..{to} is not within the latest checkpoint (size {size}); seal first"
        )));
    }
    // After a rotation the latest checkpoint may still carry the previous key.
    let key_id = format!(
        "{:08x}",
        Checkpoint::signed_by(&note, verifier).unwrap_or_else(|| verifier.key_id())
    );
    progress.phase("tree", size);
    let mut tree = block_roots(pool, size, BLOCK).await?;
    if tree.root() != checkpoint.root_hash {
        return Err(StoreError::Ledger(
            "the ledger does not match its latest checkpoint; run queue verify".into(),
        ));
    }
    let io = |e: std::io::Error| StoreError::Ledger(format!("writing the export: {e}"));
    let range = filter.from_seq.is_some() || filter.to_seq.is_some();
    // A tenant, a customer or a time window is a selection: narrowed to it,
    // a ledger range is no longer whole, so the header names the range
    // among the filters instead of claiming it (top-level
    // `from_seq`/`to_seq` make the verifier demand every seq of it).
    let selection = filter.tenant_id.is_some()
        || filter.customer_id.is_some()
        || filter.since.is_some()
        || filter.until.is_some();
    let whole_range = range && !selection;
    let mut header = json!({
        "format": EXPORT_FORMAT,
        "filters": {
            "since": filter.since.as_ref().map(chain::format_time),
            "until": filter.until.as_ref().map(chain::format_time),
            "customer_id": filter.customer_id,
        },
        "checkpoint": note,
        "tree_size": size,
        "checkpoint_key_id": key_id.clone(),
        "completeness": if whole_range {
            "ledger range: every event with ledger_seq from_seq..=to_seq is in this file"
        } else if filter.tenant_id.is_some() {
            "filtered by tenant: the selection's completeness rests on Queue"
        } else {
            "filtered by time and/or customer: the selection's completeness rests on Queue"
        },
    });
    // Only with the filter set, so that any other export stays byte for
    // byte what it was (readers ignore fields they do not know, §6).
    if let Some(tenant) = filter.tenant_id {
        header["filters"]["tenant_id"] = json!(tenant);
    }
    if range && selection {
        header["filters"]["from_seq"] = json!(from);
        header["filters"]["to_seq"] = json!(to);
    }
    if whole_range {
        header["from_seq"] = json!(from);
        header["to_seq"] = json!(to);
    }
    if let Some(m) = consistency_from {
        if m > size {
            return Err(StoreError::Ledger(format!(
                "--consistency-from {m} exceeds the tree size {size}"
            )));
        }
        let proof = consistency_proof(pool, m, size).await?;
        header["consistency"] =
            json!({"from_size": m, "proof": proof.iter().map(hex::encode).collect::<Vec<_>>()});
    }
    serde_json::to_writer(&mut *out, &header).map_err(|e| StoreError::Ledger(e.to_string()))?;
    out.write_all(b"\n").map_err(io)?;

    progress.phase("export", to.saturating_sub(from) + 1);
    let (tenant_streams, tenant_join) = match filter.tenant_id {
        Some(_) => (
            TENANT_STREAMS,
            "JOIN tenant_streams USING (aggregate_type, aggregate_id) ",
        ),
        None => ("", ""),
    };
    let sql = format!(
        "{tenant_streams}\
         SELECT l.seq, e.aggregate_type, e.aggregate_id, e.sequence, e.event_type, e.event_version, \
         e.payload::text, e.recorded_at, e.prev_hash, e.hash, e.mac, e.mac_key_id \
         FROM ledger l JOIN events e USING (aggregate_type, aggregate_id, sequence) \
         {tenant_join}\
         WHERE l.seq >= $1 AND l.seq <= $2 \
         AND ($3::timestamptz IS NULL OR e.recorded_at >= $3) \
         AND ($4::timestamptz IS NULL OR e.recorded_at < $4) \
         AND ($5::text IS NULL OR (e.aggregate_type, e.aggregate_id) IN ( \
             SELECT s.aggregate_type, s.aggregate_id FROM events s WHERE s.sequence = 1 AND ( \
               (s.aggregate_type = 'Customer' AND s.aggregate_id = $5) \
               OR (jsonb_typeof(s.payload) = 'object' AND EXISTS ( \
                   SELECT 1 FROM jsonb_each(s.payload) p \
                   WHERE jsonb_typeof(p.value) = 'object' AND p.value->>'customer_id' = $5))))) \
         ORDER BY l.seq"
    );
    let mut query = sqlx::query(&sql)
        .bind(from as i64)
        .bind(to as i64)
        .bind(filter.since)
        .bind(filter.until)
        .bind(filter.customer_id.as_deref());
    if let Some(tenant) = filter.tenant_id {
        query = query
            .bind(tenant.to_string())
            .bind(TenantId::DEFAULT.to_string());
    }
    let mut rows = query.fetch(pool);

    let mut loaded: Option<(u64, LoadedBlock)> = None;
    let mut line = Vec::with_capacity(4096);
    let mut canonical = Vec::with_capacity(1024);
    let mut events = 0u64;
    let mut last_seq = from.saturating_sub(1);
    while let Some(row) = rows.try_next().await? {
        let seq: i64 = row.try_get(col::SEQ)?;
        let seq = seq as u64;
        let index = seq - 1;
        let block_no = index / BLOCK;
        let block = match &mut loaded {
            Some((b, block)) if *b == block_no => block,
            _ => {
                let leaves = block_leaves(pool, &tree, block_no).await?;
                &mut loaded
                    .insert((block_no, LoadedBlock::new(block_no * BLOCK, leaves)))
                    .1
            }
        };
        let proof = tree.proof(index, block).ok_or_else(|| {
            StoreError::Ledger(format!("cannot build the proof for ledger seq {seq}"))
        })?;
        line.clear();
        write_event_line(&row, seq, &proof, &mut line, &mut canonical)?;
        out.write_all(&line).map_err(io)?;
        events += 1;
        progress.advance(seq - last_seq);
        last_seq = seq;
    }
    serde_json::to_writer(&mut *out, &json!({"summary": {"events": events}}))
        .map_err(|e| StoreError::Ledger(e.to_string()))?;
    out.write_all(b"\n").map_err(io)?;
    out.flush().map_err(io)?;
    let elapsed = started.elapsed();
    Ok(ExportSummary {
        events,
        tree_size: size,
        checkpoint_key_id: key_id,
        elapsed_ms: elapsed.as_millis() as u64,
        events_per_second: (events as f64 / elapsed.as_secs_f64().max(1e-6)) as u64,
    })
}

/// One event line of the export, written straight from the row (every
/// field borrowed from it): the same bytes `serde_json` wrote for the
/// `json!` object this replaced (members in key order, compact), with the
/// payload in its canonical form (what the hash covers; strictly checked on
/// the way, like every payload verify reads).
fn write_event_line(
    row: &PgRow,
    seq: u64,
    proof: &[Hash],
    out: &mut Vec<u8>,
    canonical: &mut Vec<u8>,
) -> StoreResult<()> {
    let json = |e: serde_json::Error| StoreError::Ledger(format!("writing the export: {e}"));
    let string = |out: &mut Vec<u8>, key: &[u8], text: &str| -> StoreResult<()> {
        out.extend_from_slice(key);
        serde_json::to_writer(&mut *out, text).map_err(json)
    };
    let hash = |out: &mut Vec<u8>, key: &[u8], bytes: &[u8]| {
        out.extend_from_slice(key);
        out.push(b'"');
        push_hex(out, bytes);
        out.push(b'"');
    };
    let recorded_at: DateTime<Utc> = row.try_get(col::RECORDED_AT)?;
    let payload: &str = row.try_get(col::PAYLOAD)?;
    canonical.clear();
    if strict_json::canonicalise(payload, canonical).is_err() {
        // A stored payload that breaks the rules (written around Queue):
        // exported as stored, for verify-export to name its line.
        canonical.clear();
        canonical.extend_from_slice(payload.as_bytes());
    }
    string(out, b"{\"aggregate_id\":", row.try_get(col::ID)?)?;
    string(out, b",\"aggregate_type\":", row.try_get(col::TYPE)?)?;
    string(out, b",\"event_type\":", row.try_get(col::EVENT_TYPE)?)?;
    string(
        out,
        b",\"event_version\":",
        row.try_get(col::EVENT_VERSION)?,
    )?;
    hash(out, b",\"hash\":", row.try_get(col::HASH)?);
    out.extend_from_slice(b",\"inclusion_proof\":[");
    for (i, node) in proof.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'"');
        push_hex(out, node);
        out.push(b'"');
    }
    out.extend_from_slice(b"],\"ledger_seq\":");
    out.extend_from_slice(seq.to_string().as_bytes());
    hash(out, b",\"mac\":", row.try_get(col::MAC)?);
    string(out, b",\"mac_key_id\":", row.try_get(col::MAC_KEY_ID)?)?;
    out.extend_from_slice(b",\"payload\":");
    out.extend_from_slice(canonical);
    hash(out, b",\"prev_hash\":", row.try_get(col::PREV_HASH)?);
    string(out, b",\"recorded_at\":", &chain::format_time(&recorded_at))?;
    out.extend_from_slice(b",\"sequence\":");
    let sequence: i64 = row.try_get(col::SEQUENCE)?;
    out.extend_from_slice(sequence.to_string().as_bytes());
    out.extend_from_slice(b"}\n");
    Ok(())
}

/// Lowercase hex, as `hex::encode` writes it.
fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 0x0f)]);
    }
}

/// The columns of the export's row query, by position.
mod col {
    pub const SEQ: usize = 0;
    pub const TYPE: usize = 1;
    pub const ID: usize = 2;
    pub const SEQUENCE: usize = 3;
    pub const EVENT_TYPE: usize = 4;
    pub const EVENT_VERSION: usize = 5;
    pub const PAYLOAD: usize = 6;
    pub const RECORDED_AT: usize = 7;
    pub const PREV_HASH: usize = 8;
    pub const HASH: usize = 9;
    pub const MAC: usize = 10;
    pub const MAC_KEY_ID: usize = 11;
}

/// The outcome of checking an export file offline.
#[derive(Clone, Debug, Serialize)]
pub struct ExportCheck {
    pub ok: bool,
    pub events: u64,
    pub tree_size: u64,
    pub consistency_checked: bool,
    /// The first bad line (1-based) and what is wrong with it.
    pub first_bad_line: Option<u64>,
    pub problem: Option<String>,
    pub elapsed_ms: u64,
    pub events_per_second: u64,
}

struct Bad(u64, String);

/// Checks an export with only the checkpoint verifier key: no database, no
/// MAC keys. With `older_checkpoint`, also checks the header's consistency
/// proof from that earlier signed checkpoint to the export's.
pub fn verify_export(
    reader: &mut dyn BufRead,
    verifier: &NoteVerifier,
    older_checkpoint: Option<&str>,
) -> ExportCheck {
    let started = Instant::now();
    let mut state = ExportChecker::default();
    let result = state.run(reader, verifier, older_checkpoint);
    let elapsed = started.elapsed();
    let (first_bad_line, problem) = match result {
        Ok(()) => (None, None),
        Err(Bad(line, why)) => (Some(line), Some(why)),
    };
    ExportCheck {
        ok: first_bad_line.is_none(),
        events: state.events,
        tree_size: state.tree_size,
        consistency_checked: state.consistency_checked,
        first_bad_line,
        problem,
        elapsed_ms: elapsed.as_millis() as u64,
        events_per_second: (state.events as f64 / elapsed.as_secs_f64().max(1e-6)) as u64,
    }
}

#[derive(Default)]
struct ExportChecker {
    events: u64,
    tree_size: u64,
    root: Hash,
    consistency_checked: bool,
    range: Option<(u64, u64)>,
    last_seq: u64,
    /// (sequence, hash) of the last event of each stream, by stream key.
    streams: HashMap<String, (i64, Hash)>,
    /// Buffers reused line after line.
    key: String,
    canonical: Vec<u8>,
}

/// What an event line holds, however it was read.
struct EventFields<'a> {
    seq: u64,
    aggregate_type: &'a str,
    aggregate_id: &'a str,
    sequence: i64,
    recorded_at: &'a str,
    event_type: &'a str,
    event_version: &'a str,
    payload: &'a Value,
    prev_hash: Hash,
    hash: Hash,
    proof: Vec<Hash>,
}

/// An event line as the typed reader takes it: strings borrowed from the
/// line where they hold no escapes, the payload read with the same strict
/// rules as [`strict_json::parse`] (duplicate keys refused; so are
/// members of the line itself), the proof as text. A line with a member it
/// does not know goes to the general reader (which refuses duplicates of
/// any member).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EventLine<'a> {
    ledger_seq: Option<u64>,
    #[serde(borrow)]
    aggregate_type: Option<Cow<'a, str>>,
    #[serde(borrow)]
    aggregate_id: Option<Cow<'a, str>>,
    sequence: Option<i64>,
    #[serde(borrow)]
    recorded_at: Option<Cow<'a, str>>,
    #[serde(borrow)]
    event_type: Option<Cow<'a, str>>,
    #[serde(borrow)]
    event_version: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "strict_payload")]
    payload: Option<Value>,
    #[serde(borrow)]
    prev_hash: Option<&'a str>,
    #[serde(borrow)]
    hash: Option<&'a str>,
    #[serde(borrow)]
    inclusion_proof: Option<Vec<&'a str>>,
    /// Not checked offline (the MAC keys are secret), but a known member.
    #[serde(borrow)]
    #[allow(dead_code)]
    mac: Option<Cow<'a, str>>,
    #[serde(borrow)]
    #[allow(dead_code)]
    mac_key_id: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "strict_payload")]
    summary: Option<Value>,
}

fn strict_payload<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    strict_json::strict_value(d).map(Some)
}

impl<'a> EventLine<'a> {
    /// The fields, or `None` when one is missing or malformed (the general
    /// reader then says which).
    fn fields(&'a self) -> Option<EventFields<'a>> {
        let hash32 = |s: &str| -> Option<Hash> {
            let lower = s.len() == 64
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            let mut out = ZERO_HASH;
            (lower && hex::decode_to_slice(s, &mut out).is_ok()).then_some(out)
        };
        Some(EventFields {
            seq: self.ledger_seq?,
            aggregate_type: self.aggregate_type.as_deref()?,
            aggregate_id: self.aggregate_id.as_deref()?,
            sequence: self.sequence?,
            recorded_at: self.recorded_at.as_deref()?,
            event_type: self.event_type.as_deref()?,
            event_version: self.event_version.as_deref()?,
            payload: self.payload.as_ref()?,
            prev_hash: hash32(self.prev_hash?)?,
            hash: hash32(self.hash?)?,
            proof: self
                .inclusion_proof
                .as_ref()?
                .iter()
                .map(|s| hash32(s))
                .collect::<Option<Vec<Hash>>>()?,
        })
    }
}

fn hex32(v: &Value, field: &str) -> Result<Hash, String> {
    let s = v
        .get(field)
        .and_then(Value::as_str)
        .ok_or(format!("{field} is missing"))?;
    if s.len() != 64
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(format!("{field} is not 64 lowercase hex digits"));
    }
    let bytes = hex::decode(s).map_err(|_| format!("{field} is not hex"))?;
    chain::to_hash(&bytes).ok_or(format!("{field} is not 32 bytes"))
}

fn text<'a>(v: &'a Value, field: &str) -> Result<&'a str, String> {
    v.get(field)
        .and_then(Value::as_str)
        .ok_or(format!("{field} is missing or not a string"))
}

fn int(v: &Value, field: &str) -> Result<i64, String> {
    v.get(field)
        .and_then(Value::as_i64)
        .ok_or(format!("{field} is missing or not an integer"))
}

impl ExportChecker {
    fn run(
        &mut self,
        reader: &mut dyn BufRead,
        verifier: &NoteVerifier,
        older: Option<&str>,
    ) -> Result<(), Bad> {
        let mut line_no = 0u64;
        let mut buf = String::new();
        let mut summary_seen = false;
        loop {
            buf.clear();
            let n = reader
                .read_line(&mut buf)
                .map_err(|e| Bad(line_no + 1, format!("cannot read: {e}")))?;
            if n == 0 {
                break;
            }
            line_no += 1;
            let line = buf.trim_end_matches(['\n', '\r']);
            if summary_seen {
                return Err(Bad(line_no, "content after the summary line".into()));
            }
            if line_no > 1 {
                // Event lines go through the typed reader (no `Value`
                // for the line, its proof or its strings); anything it does
                // not take (a summary, a field of the wrong type, a
                // duplicate key, broken JSON) goes the general way below,
                // which gives the same verdict and names the problem.
                if let Ok(fast) = serde_json::from_str::<EventLine<'_>>(line) {
                    if fast.summary.is_none() {
                        if let Some(fields) = fast.fields() {
                            self.check_event(fields).map_err(|e| Bad(line_no, e))?;
                            continue;
                        }
                    }
                }
            }
            let value = strict_json::parse(line)
                .map_err(|e| Bad(line_no, format!("not valid JSON: {e}")))?;
            if line_no == 1 {
                self.header(&value, verifier, older)
                    .map_err(|e| Bad(1, e))?;
            } else if let Some(summary) = value.get("summary") {
                summary_seen = true;
                self.summary(summary).map_err(|e| Bad(line_no, e))?;
            } else {
                self.event(&value).map_err(|e| Bad(line_no, e))?;
            }
        }
        if line_no == 0 {
            return Err(Bad(1, "the file is empty".into()));
        }
        if !summary_seen {
            return Err(Bad(
                line_no + 1,
                "the summary line is missing (file truncated)".into(),
            ));
        }
        Ok(())
    }

    fn header(
        &mut self,
        h: &Value,
        verifier: &NoteVerifier,
        older: Option<&str>,
    ) -> Result<(), String> {
        if h.get("format").and_then(Value::as_str) != Some(EXPORT_FORMAT) {
            return Err(format!("header format is not {EXPORT_FORMAT}"));
        }
        let note = text(h, "checkpoint")?;
        let checkpoint =
            Checkpoint::open(note, verifier).map_err(|e| format!("checkpoint: {e}"))?;
        let size = h
            .get("tree_size")
            .and_then(Value::as_u64)
            .ok_or("tree_size is missing")?;
        if checkpoint.tree_size != size {
            return Err("tree_size differs from the signed checkpoint".into());
        }
        self.tree_size = size;
        self.root = checkpoint.root_hash;
        if let (Some(from), Some(to)) = (
            h.get("from_seq").and_then(Value::as_u64),
            h.get("to_seq").and_then(Value::as_u64),
        ) {
            if from < 1 || to > size {
                return Err("from_seq..to_seq is outside the checkpoint".into());
            }
            self.range = Some((from, to));
            self.last_seq = from - 1;
        }
        if let Some(older) = older {
            let old =
                Checkpoint::open(older, verifier).map_err(|e| format!("older checkpoint: {e}"))?;
            let c = h
                .get("consistency")
                .ok_or("no consistency proof in the header (export with --consistency-from)")?;
            if c.get("from_size").and_then(Value::as_u64) != Some(old.tree_size) {
                return Err(format!(
                    "the consistency proof is not from size {}",
                    old.tree_size
                ));
            }
            let proof = proof_hashes(c, "proof")?;
            if !merkle::verify_consistency(old.tree_size, size, &old.root_hash, &self.root, &proof)
            {
                return Err(format!(
                    "the log of size {size} is not an extension of the older checkpoint of size {} (history rewritten)",
                    old.tree_size
                ));
            }
            self.consistency_checked = true;
        }
        Ok(())
    }

    fn event(&mut self, e: &Value) -> Result<(), String> {
        let seq = e
            .get("ledger_seq")
            .and_then(Value::as_u64)
            .ok_or("ledger_seq is missing")?;
        self.check_event(EventFields {
            seq,
            aggregate_type: text(e, "aggregate_type")?,
            aggregate_id: text(e, "aggregate_id")?,
            sequence: int(e, "sequence")?,
            recorded_at: text(e, "recorded_at")?,
            event_type: text(e, "event_type")?,
            event_version: text(e, "event_version")?,
            payload: e.get("payload").ok_or("payload is missing")?,
            prev_hash: hex32(e, "prev_hash")?,
            hash: hex32(e, "hash")?,
            proof: proof_hashes(e, "inclusion_proof")?,
        })
    }

    fn check_event(&mut self, e: EventFields<'_>) -> Result<(), String> {
        let seq = e.seq;
        if seq <= self.last_seq && !(self.events == 0 && self.range.is_none()) {
            return Err(format!(
                "ledger_seq {seq} does not increase (previous {})",
                self.last_seq
            ));
        }
        if self.range.is_some() && seq != self.last_seq + 1 {
            return Err(format!(
                "ledger_seq {} is missing from a range export",
                self.last_seq + 1
            ));
        }
        if seq == 0 || seq > self.tree_size {
            return Err(format!(
                "ledger_seq {seq} is outside the checkpoint (size {})",
                self.tree_size
            ));
        }
        if let Some((_, to)) = self.range {
            if seq > to {
                return Err(format!("ledger_seq {seq} is beyond to_seq {to}"));
            }
        }
        let (aggregate_type, aggregate_id, sequence) =
            (e.aggregate_type, e.aggregate_id, e.sequence);
        let recorded_text = e.recorded_at;
        let recorded_at = DateTime::parse_from_rfc3339(recorded_text)
            .map_err(|_| "recorded_at is not RFC 3339".to_string())?
            .with_timezone(&Utc);
        if chain::format_time(&recorded_at) != recorded_text {
            return Err(
                "recorded_at is not in the canonical form (UTC, six fractional digits, Z)".into(),
            );
        }
        let (prev_hash, hash) = (e.prev_hash, e.hash);
        chain::write_record(
            &EventRecord {
                aggregate_type,
                aggregate_id,
                sequence,
                event_type: e.event_type,
                event_version: e.event_version,
                recorded_at,
                payload: e.payload,
            },
            &mut self.canonical,
        )
        .map_err(|err| format!("payload cannot be canonicalised: {err}"))?;
        if chain::event_hash(&prev_hash, &self.canonical) != hash {
            return Err("hash does not match the event's fields".into());
        }
        if sequence < 1 {
            return Err("sequence must be at least 1".into());
        }
        if sequence == 1 && prev_hash != ZERO_HASH {
            return Err("sequence 1 must have the zero prev_hash".into());
        }
        // One key per stream, length-prefixed so that no two streams share it.
        self.key.clear();
        self.key.push_str(&aggregate_type.len().to_string());
        self.key.push(':');
        self.key.push_str(aggregate_type);
        self.key.push_str(aggregate_id);
        match self.streams.get_mut(self.key.as_str()) {
            Some((last_sequence, last_hash)) => {
                if sequence <= *last_sequence {
                    return Err(format!(
                        "sequence {sequence} of its stream comes after sequence {last_sequence}"
                    ));
                }
                if sequence == *last_sequence + 1 && prev_hash != *last_hash {
                    return Err(
                        "prev_hash does not equal the hash of the stream's previous event in the file"
                            .into(),
                    );
                }
                *last_sequence = sequence;
                *last_hash = hash;
            }
            None => {
                self.streams.insert(self.key.clone(), (sequence, hash));
            }
        }
        if !merkle::verify_inclusion(
            seq - 1,
            self.tree_size,
            &merkle::leaf_hash(&hash),
            &e.proof,
            &self.root,
        ) {
            return Err("the inclusion proof does not lead to the checkpoint's root".into());
        }
        self.last_seq = seq;
        self.events += 1;
        Ok(())
    }

    fn summary(&mut self, s: &Value) -> Result<(), String> {
        let count = s
            .get("events")
            .and_then(Value::as_u64)
            .ok_or("summary.events is missing")?;
        if count != self.events {
            return Err(format!(
                "the summary counts {count} events, the file holds {}",
                self.events
            ));
        }
        if let Some((_, to)) = self.range {
            if self.last_seq != to {
                return Err(format!(
                    "the range export stops at {} before to_seq {to}",
                    self.last_seq
                ));
            }
        }
        Ok(())
    }
}

fn proof_hashes(v: &Value, field: &str) -> Result<Vec<Hash>, String> {
    let items = v
        .get(field)
        .and_then(Value::as_array)
        .ok_or(format!("{field} is missing"))?;
    items
        .iter()
        .map(|item| {
            let s = item.as_str().ok_or(format!("{field} holds a non-string"))?;
            if s.len() != 64
                || !s
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(format!(
                    "{field} holds a value that is not 64 lowercase hex digits"
                ));
            }
            hex::decode(s)
                .ok()
                .and_then(|b| chain::to_hash(&b))
                .ok_or(format!("{field} holds a bad hash"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_typed_reader_takes_every_member_of_an_exported_line() {
        let h = "ab".repeat(32);
        let line = format!(
            "{{\"aggregate_id\":\"s-1\",\"aggregate_type\":\"Session\",\"event_type\":\"E\",\
             \"event_version\":\"1.0\",\"hash\":\"{h}\",\"inclusion_proof\":[\"{h}\",\"{h}\"],\
             \"ledger_seq\":7,\"mac\":\"{h}\",\"mac_key_id\":\"k1\",\"payload\":{{\"n\":1}},\
             \"prev_hash\":\"{h}\",\"recorded_at\":\"2026-11-25T16:22:14.123456Z\",\"sequence\":2}}"
        );
        let typed: EventLine<'_> = serde_json::from_str(&line).unwrap();
        let fields = typed.fields().unwrap();
        assert_eq!((fields.seq, fields.sequence, fields.proof.len()), (7, 2, 2));
        assert_eq!(fields.payload, &json!({"n": 1}));
        // What it does not take goes to the general reader.
        let unknown = line.replacen('{', "{\"extra\":1,", 1);
        assert!(serde_json::from_str::<EventLine<'_>>(&unknown).is_err());
        let duplicate = line.replacen('{', "{\"ledger_seq\":1,", 1);
        assert!(serde_json::from_str::<EventLine<'_>>(&duplicate).is_err());
        let nested = line.replace("{\"n\":1}", "{\"n\":1,\"n\":2}");
        assert!(serde_json::from_str::<EventLine<'_>>(&nested).is_err());
    }

    #[test]
    fn blocked_proofs_equal_whole_tree_proofs() {
        for size in 1..70u64 {
            let leaves: Vec<Hash> = (0..size)
                .map(|i| merkle::leaf_hash(&i.to_be_bytes()))
                .collect();
            for block in [1u64, 2, 4, 8] {
                let roots = leaves.chunks(block as usize).map(merkle::root_of).collect();
                let mut tree = BlockedTree {
                    size,
                    block,
                    roots,
                    spans: HashMap::new(),
                };
                assert_eq!(tree.root(), merkle::root_of(&leaves));
                for index in 0..size {
                    let b = index / block;
                    let start = b * block;
                    let end = (start + block).min(size);
                    let mut loaded =
                        LoadedBlock::new(start, leaves[start as usize..end as usize].to_vec());
                    let proof = tree.proof(index, &mut loaded).unwrap();
                    assert_eq!(
                        proof,
                        merkle::inclusion_proof(index as usize, &leaves),
                        "{index}/{size}/{block}"
                    );
                }
            }
        }
    }
}
