//! The backfill run: each legacy table in keyset pages of `batch_size` rows;
//! each page is one transaction of events (and, when the legacy tables live
//! in Queue's database, of the `migrated_to_queue` flags too).

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use queue_domain::customer::CustomerCommand;
use queue_domain::session::{SessionCommand, DEFAULT_IDLE_TIMEOUT_SECS};
use queue_domain::types::{
    Actor, CredentialName, CustomerId, DisplayName, Email, GrantId, LegacyId, RawCredentialId,
    Reason, Role, SecretHash, SessionId, TicketId,
};
use queue_domain::{Credential, CredentialCommand, Customer, Session};
use queue_eventstore::{Batch, ChainedEventRepository, EventStore, Loaded, StoreError};
use serde_json::json;
use sqlx::{PgPool, Row};

use crate::cose;
use crate::error::{BackfillError, BackfillResult};
use crate::legacy::{self, LegacyCredential, LegacyCustomer, LegacyGrant, LegacySession, Table};
use crate::report::{Report, TableReport};

#[derive(Clone, Debug)]
pub struct Options {
    /// Legacy rows per transaction.
    pub batch_size: i64,
    /// Read and classify everything; write nothing (not even the flag column).
    pub dry_run: bool,
    /// The backfill's clock: which sessions are still live, and the time of
    /// the import commands.
    pub now: DateTime<Utc>,
}

/// What a run reports while it works (a progress bar).
pub trait Progress: Send + Sync {
    fn table(&self, _name: &str, _total: u64) {}
    fn advance(&self, _rows: u64) {}
}

pub struct NoProgress;
impl Progress for NoProgress {}

/// Runs the backfill from the legacy database into the event store.
pub async fn backfill(
    repo: &ChainedEventRepository,
    legacy_pool: &PgPool,
    options: &Options,
    progress: &dyn Progress,
) -> BackfillResult<Report> {
    if options.batch_size < 1 || options.batch_size > 10_000 {
        return Err(BackfillError::Options(
            "batch size must be between 1 and 10000".into(),
        ));
    }
    let started = Instant::now();
    let same_db = legacy::same_database(repo.pool(), legacy_pool).await?;
    if !options.dry_run {
        legacy::add_migrated_column(legacy_pool).await?;
    }
    let mut run = Run {
        repo,
        store: EventStore::new(repo.clone()),
        legacy: legacy_pool,
        options,
        same_db,
        progress,
        planned_customers: HashSet::new(),
        events_appended: 0,
    };
    let mut report = Report {
        dry_run: options.dry_run,
        ..Report::default()
    };
    for table in Table::ALL {
        let out = match table {
            Table::Customers => run.pages(table, legacy::customers, Run::customers).await?,
            Table::Credentials => {
                run.pages(table, legacy::credentials, Run::credentials)
                    .await?
            }
            Table::Sessions => run.pages(table, legacy::sessions, Run::sessions).await?,
            Table::Grants => run.pages(table, legacy::grants, Run::grants).await?,
        };
        report.tables.push(out);
    }
    report.events_appended = run.events_appended;
    let secs = started.elapsed().as_secs_f64();
    report.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    report.rows_per_second = (report.rows_read() as f64 / secs.max(1e-6)) as u64;
    Ok(report)
}

/// One row ready to import: its events (one stream, consecutive).
struct Planned {
    /// The legacy ids it covers (several grants of one customer share a stream).
    ids: Vec<i64>,
    events: Batch,
    /// For customers: the normalised email (the unique index's key).
    email: Option<String>,
}

struct Run<'a> {
    repo: &'a ChainedEventRepository,
    /// The unit of work: checked loads, and appends that continue them.
    store: EventStore,
    legacy: &'a PgPool,
    options: &'a Options,
    same_db: bool,
    progress: &'a dyn Progress,
    /// Dry run only: customers this run would have imported, so their
    /// credentials, sessions and grants are judged as in a real run.
    planned_customers: HashSet<i64>,
    events_appended: u64,
}

/// A page's plan: the rows to import, and the legacy ids already imported.
type PagePlan = (Vec<Planned>, Vec<i64>);

/// The legacy id a keyset page continues after.
trait Keyset {
    fn id(&self) -> i64;
}

impl Keyset for LegacyCustomer {
    fn id(&self) -> i64 {
        self.id
    }
}

impl Keyset for LegacyCredential {
    fn id(&self) -> i64 {
        self.id
    }
}

impl Keyset for LegacySession {
    fn id(&self) -> i64 {
        self.id
    }
}

impl Keyset for LegacyGrant {
    fn id(&self) -> i64 {
        self.id
    }
}

impl Run<'_> {
    /// One table, in the page loop every table shares: read the next keyset
    /// page, plan it (`plan`, per table), commit it, report progress; the
    /// last (empty) page ends it.
    async fn pages<R: Keyset>(
        &mut self,
        table: Table,
        page: impl AsyncFn(&PgPool, i64, i64) -> BackfillResult<Vec<R>>,
        plan: impl AsyncFn(&mut Self, Vec<R>, &mut TableReport) -> BackfillResult<PagePlan>,
    ) -> BackfillResult<TableReport> {
        let total = legacy::count(self.legacy, table).await?;
        self.progress.table(table.name(), total);
        let mut out = TableReport::new(table.name());
        let mut after = 0;
        loop {
            let rows = page(self.legacy, after, self.options.batch_size).await?;
            let read = rows.len() as u64;
            let last = rows.last().map(R::id);
            let (planned, skipped) = plan(self, rows, &mut out).await?;
            self.commit(table, planned, skipped, &mut out).await?;
            out.read += read;
            self.progress.advance(read);
            match last {
                Some(id) => after = id,
                None => break,
            }
        }
        out.rejected.sort_by_key(|r| r.legacy_id);
        tracing::info!(
            table = table.name(),
            read = out.read,
            imported = out.imported,
            skipped = out.skipped,
            rejected = out.rejected.len(),
            "backfill table done"
        );
        Ok(out)
    }

    async fn customers(
        &mut self,
        rows: Vec<LegacyCustomer>,
        out: &mut TableReport,
    ) -> BackfillResult<PagePlan> {
        let ids: Vec<String> = rows
            .iter()
            .filter_map(|r| LegacyId::try_from(r.id).ok())
            .map(|id| CustomerId::for_legacy_id(id).to_string())
            .collect();
        let existing = self.existing_streams("Customer", &ids).await?;
        let mut candidates = Vec::new();
        let mut skipped = Vec::new();
        for row in rows {
            match plan_customer(&row, self.options.now).await {
                Err((reason, detail)) => out.reject(row.id, reason, detail),
                Ok((stream, _)) if existing.contains_key(&stream) => skipped.push(row.id),
                Ok((_, planned)) => candidates.push(planned),
            }
        }
        // Emails already held by another stream, or twice in this page
        // (legacy emails are unique only case-sensitively).
        let emails: Vec<String> = candidates.iter().filter_map(|p| p.email.clone()).collect();
        let taken = self.taken_emails(&emails).await?;
        let mut seen: HashMap<String, i64> = HashMap::new();
        let mut planned = Vec::new();
        for p in candidates {
            let email = p.email.clone().unwrap_or_default();
            if let Some(owner) = taken.get(&email) {
                for id in &p.ids {
                    out.reject(
                        *id,
                        "email_taken",
                        format!("{email} already belongs to Queue customer {owner}"),
                    );
                }
            } else if let Some(first) = seen.get(&email) {
                for id in &p.ids {
                    out.reject(*id, "email_taken", format!("{email} is also the email of legacy customer {first} (emails are case-insensitive)"));
                }
            } else {
                seen.insert(email, p.ids.first().copied().unwrap_or_default());
                planned.push(p);
            }
        }
        if self.options.dry_run {
            self.planned_customers
                .extend(planned.iter().flat_map(|p| p.ids.iter().copied()));
        }
        Ok((planned, skipped))
    }

    async fn credentials(
        &mut self,
        rows: Vec<LegacyCredential>,
        out: &mut TableReport,
    ) -> BackfillResult<PagePlan> {
        let customers = self
            .customer_streams(rows.iter().map(|r| r.customer_id))
            .await?;
        let ids: Vec<String> = rows
            .iter()
            .filter_map(|r| RawCredentialId::from_bytes(r.credential_id.clone()).ok())
            .map(|raw| raw.credential_id().to_string())
            .collect();
        let existing = self.existing_streams("Credential", &ids).await?;
        let mut planned = Vec::new();
        let mut skipped = Vec::new();
        for row in rows {
            if let Err((reason, detail)) = customers.check(row.customer_id) {
                out.reject(row.id, reason, detail);
                continue;
            }
            match plan_credential(&row).await {
                Err((reason, detail)) => out.reject(row.id, reason, detail),
                Ok((stream, planned_row)) => match existing.get(&stream) {
                    Some(Some(legacy_id)) if *legacy_id == row.id => skipped.push(row.id),
                    Some(_) => out.reject(row.id, "credential_id_taken", format!("credential stream {stream} already exists in Queue and was not imported from this row")),
                    None => planned.push(planned_row),
                },
            }
        }
        Ok((planned, skipped))
    }

    async fn sessions(
        &mut self,
        rows: Vec<LegacySession>,
        out: &mut TableReport,
    ) -> BackfillResult<PagePlan> {
        let customers = self
            .customer_streams(rows.iter().map(|r| r.customer_id))
            .await?;
        let ids: Vec<String> = rows
            .iter()
            .filter_map(|r| LegacyId::try_from(r.id).ok())
            .map(|id| SessionId::for_legacy_id(id).to_string())
            .collect();
        let existing = self.existing_streams("Session", &ids).await?;
        let mut planned = Vec::new();
        let mut skipped = Vec::new();
        for row in rows {
            match plan_session(&row, self.options.now).await {
                Ok((stream, _)) if existing.contains_key(&stream) => skipped.push(row.id),
                Err((reason, detail)) => out.reject(row.id, reason, detail),
                Ok((_, p)) => match customers.check(row.customer_id) {
                    Err((reason, detail)) => out.reject(row.id, reason, detail),
                    Ok(()) => planned.push(p),
                },
            }
        }
        Ok((planned, skipped))
    }

    async fn grants(
        &mut self,
        rows: Vec<LegacyGrant>,
        out: &mut TableReport,
    ) -> BackfillResult<PagePlan> {
        let customers = self
            .customer_streams(rows.iter().map(|r| r.customer_id))
            .await?;
        let mut loaded = self.load_customers(&customers.streams()).await?;
        // Grants of one customer go into one stream; keep them together.
        let mut order: Vec<String> = Vec::new();
        let mut by_stream: HashMap<String, Planned> = HashMap::new();
        let mut skipped = Vec::new();
        for row in rows {
            if let Err((reason, detail)) = customers.check(row.customer_id) {
                out.reject(row.id, reason, detail);
                continue;
            }
            let command = match grant_command(&row) {
                Ok(command) => command,
                Err((reason, detail)) => {
                    out.reject(row.id, reason, detail);
                    continue;
                }
            };
            let Ok(legacy_customer) = LegacyId::try_from(row.customer_id) else {
                continue;
            };
            let stream = CustomerId::for_legacy_id(legacy_customer).to_string();
            let Some(customer) = loaded.get_mut(&stream) else {
                // Dry run: the customer would be imported by this run.
                if self.options.dry_run {
                    stream_plan(&mut by_stream, &mut order, &stream)
                        .ids
                        .push(row.id);
                }
                continue;
            };
            let CustomerCommand::GrantRole { grant_id, .. } = &command else {
                continue;
            };
            if customer
                .aggregate
                .state()
                .is_some_and(|s| s.grant(*grant_id).is_some())
            {
                skipped.push(row.id);
                continue;
            }
            match customer.execute(command).await {
                Err(e) => out.reject(row.id, "grant_refused", e.to_string()),
                Ok(events) => {
                    let entry = stream_plan(&mut by_stream, &mut order, &stream);
                    entry.events.add(customer, &events)?;
                    entry.ids.push(row.id);
                }
            }
        }
        let planned: Vec<Planned> = order
            .into_iter()
            .filter_map(|s| by_stream.remove(&s))
            .filter(|p| !p.ids.is_empty())
            .collect();
        Ok((planned, skipped))
    }

    /// Appends a page's events (and flags), falling back to one row per
    /// transaction when a unique index refuses the page (an email
    /// registered in Queue while the backfill ran).
    async fn commit(
        &mut self,
        table: Table,
        planned: Vec<Planned>,
        skipped: Vec<i64>,
        out: &mut TableReport,
    ) -> BackfillResult<()> {
        let rows: u64 = planned.iter().map(|p| p.ids.len() as u64).sum();
        if self.options.dry_run {
            out.imported += rows;
            out.skipped += skipped.len() as u64;
            return Ok(());
        }
        let mut events = Batch::new();
        for p in &planned {
            events.extend(p.events.clone());
        }
        let mut flags: Vec<i64> = planned.iter().flat_map(|p| p.ids.iter().copied()).collect();
        flags.extend(&skipped);
        match self.write(table, events, &flags).await {
            Ok(()) => {
                out.imported += rows;
                out.skipped += skipped.len() as u64;
                return Ok(());
            }
            Err(BackfillError::Store(
                StoreError::UniqueViolation { .. } | StoreError::OptimisticLock,
            )) => {}
            Err(other) => return Err(other),
        }
        self.write(table, Batch::new(), &skipped).await?;
        out.skipped += skipped.len() as u64;
        for p in planned {
            match self.write(table, p.events, &p.ids).await {
                Ok(()) => out.imported += p.ids.len() as u64,
                Err(BackfillError::Store(StoreError::UniqueViolation { constraint })) => {
                    for id in &p.ids {
                        out.reject(
                            *id,
                            "email_taken",
                            format!(
                                "{} is taken (unique index {constraint})",
                                p.email.clone().unwrap_or_default()
                            ),
                        );
                    }
                }
                Err(BackfillError::Store(StoreError::OptimisticLock)) => {
                    for id in &p.ids {
                        out.reject(
                            *id,
                            "concurrent_write",
                            "the stream was written while the backfill ran; run the backfill again"
                                .into(),
                        );
                    }
                }
                Err(other) => return Err(other),
            }
        }
        Ok(())
    }

    /// One transaction: the events, and the flags in the same transaction
    /// when the legacy tables share Queue's database; otherwise the flags
    /// right after the events commit (a crash in between leaves rows
    /// imported but unflagged, and the next run flags them as skipped).
    async fn write(&mut self, table: Table, events: Batch, flags: &[i64]) -> BackfillResult<()> {
        let appended = events.len() as u64;
        let mut tx = self
            .repo
            .pool()
            .begin()
            .await
            .map_err(BackfillError::queue)?;
        self.store.append_in(&mut tx, events).await?;
        if self.same_db {
            legacy::mark_migrated(&mut tx, table, flags).await?;
        }
        tx.commit()
            .await
            .map_err(|e| BackfillError::Store(e.into()))?;
        self.events_appended += appended;
        if !self.same_db {
            let mut conn = self.legacy.acquire().await.map_err(BackfillError::legacy)?;
            legacy::mark_migrated(&mut conn, table, flags).await?;
        }
        Ok(())
    }

    /// Streams of this type that exist, with the legacy id their first event
    /// records (credentials can also be registered natively in Queue).
    async fn existing_streams(
        &self,
        aggregate_type: &str,
        ids: &[String],
    ) -> BackfillResult<HashMap<String, Option<i64>>> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let rows = sqlx::query(
            "SELECT aggregate_id, (payload -> (event_type) ->> 'legacy_id')::bigint AS legacy_id \
             FROM events WHERE aggregate_type = $1 AND aggregate_id = ANY($2) AND sequence = 1",
        )
        // Planned with the real ids every time: a plan cached while the
        // events table was small would scan it whole for every page.
        .persistent(false)
        .bind(aggregate_type)
        .bind(ids)
        .fetch_all(self.repo.pool())
        .await
        .map_err(BackfillError::queue)?;
        rows.iter()
            .map(|r| Ok((r.try_get::<String, _>(0)?, r.try_get::<Option<i64>, _>(1)?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(BackfillError::queue)
    }

    /// Emails (normalised) already held by a Customer stream, with its id.
    async fn taken_emails(&self, emails: &[String]) -> BackfillResult<HashMap<String, String>> {
        if emails.is_empty() {
            return Ok(HashMap::new());
        }
        // The default tenant's (legacy customers are imported there), by the
        // unique index events_customer_email's own expressions.
        let rows = queue_eventstore::lookup::customers_by_emails(self.repo.pool(), emails)
            .await
            .map_err(|e| BackfillError::Queue(e.to_string()))?;
        Ok(rows.into_iter().collect())
    }

    /// Which legacy customers of a page have a Customer stream (imported
    /// now or earlier), and for the others whether the legacy row exists.
    async fn customer_streams(
        &self,
        legacy_ids: impl Iterator<Item = i64>,
    ) -> BackfillResult<Customers> {
        let mut wanted: Vec<i64> = legacy_ids.collect();
        wanted.sort_unstable();
        wanted.dedup();
        let streams: HashMap<String, i64> = wanted
            .iter()
            .filter_map(|id| {
                LegacyId::try_from(*id)
                    .ok()
                    .map(|l| (CustomerId::for_legacy_id(l).to_string(), *id))
            })
            .collect();
        let ids: Vec<String> = streams.keys().cloned().collect();
        let existing = self.existing_streams("Customer", &ids).await?;
        let imported: HashSet<i64> = streams
            .iter()
            .filter(|(stream, _)| existing.contains_key(*stream))
            .map(|(_, id)| *id)
            .chain(
                wanted
                    .iter()
                    .copied()
                    .filter(|id| self.planned_customers.contains(id)),
            )
            .collect();
        let missing: Vec<i64> = wanted
            .iter()
            .copied()
            .filter(|id| !imported.contains(id))
            .collect();
        let in_legacy: HashSet<i64> = if missing.is_empty() {
            HashSet::new()
        } else {
            legacy::existing_customers(self.legacy, &missing)
                .await?
                .into_iter()
                .collect()
        };
        Ok(Customers {
            imported,
            in_legacy,
            existing: existing.into_keys().collect(),
        })
    }

    /// The Customer aggregates of these streams, every row checked (the
    /// unit of work's load: a damaged stream fails the run, it is never
    /// folded into a grant decision).
    async fn load_customers(
        &self,
        streams: &[String],
    ) -> BackfillResult<HashMap<String, Loaded<Customer>>> {
        if streams.is_empty() {
            return Ok(HashMap::new());
        }
        let loaded = self.store.load_many::<Customer>(streams).await?;
        Ok(loaded
            .into_iter()
            .filter(|l| !l.is_new())
            .map(|l| (l.id.clone(), l))
            .collect())
    }
}

/// The plan of one customer stream in a page of grants, started on its
/// first grant (`order` keeps the streams in that order).
fn stream_plan<'p>(
    by_stream: &'p mut HashMap<String, Planned>,
    order: &mut Vec<String>,
    stream: &str,
) -> &'p mut Planned {
    by_stream.entry(stream.to_owned()).or_insert_with(|| {
        order.push(stream.to_owned());
        Planned {
            ids: Vec::new(),
            events: Batch::new(),
            email: None,
        }
    })
}

/// Which customers of a page can take credentials, sessions and grants.
struct Customers {
    imported: HashSet<i64>,
    in_legacy: HashSet<i64>,
    existing: HashSet<String>,
}

impl Customers {
    fn check(&self, legacy_customer: i64) -> Result<(), (&'static str, String)> {
        if self.imported.contains(&legacy_customer) {
            Ok(())
        } else if self.in_legacy.contains(&legacy_customer) {
            Err((
                "customer_not_imported",
                format!("legacy customer {legacy_customer} was not imported (see its rejection)"),
            ))
        } else {
            Err((
                "customer_missing",
                format!("legacy customer {legacy_customer} does not exist"),
            ))
        }
    }

    fn streams(&self) -> Vec<String> {
        self.existing.iter().cloned().collect()
    }
}

type Refusal = (&'static str, String);

/// The events of a new stream, decided by the domain.
async fn first_events<A: Aggregate<Services = ()> + Default>(
    stream: &str,
    command: A::Command,
) -> Result<Batch, Refusal>
where
    A::Error: std::fmt::Display,
{
    let mut loaded = Loaded::<A>::new_stream(stream);
    let events = loaded
        .execute(command)
        .await
        .map_err(|e| ("refused", e.to_string()))?;
    let mut batch = Batch::new();
    batch
        .add(&mut loaded, &events)
        .map_err(|e| ("refused", e.to_string()))?;
    Ok(batch)
}

fn legacy_id(id: i64) -> Result<LegacyId, Refusal> {
    LegacyId::try_from(id).map_err(|e| ("invalid_legacy_id", e.to_string()))
}

/// Empty or blank optional labels mean "none" in the legacy data.
fn optional<T>(
    raw: Option<&str>,
    parse: impl Fn(&str) -> Result<T, queue_domain::types::ParseError>,
    reason: &'static str,
) -> Result<Option<T>, Refusal> {
    match raw.map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => parse(s).map(Some).map_err(|e| (reason, e.to_string())),
    }
}

async fn plan_customer(
    row: &LegacyCustomer,
    _now: DateTime<Utc>,
) -> Result<(String, Planned), Refusal> {
    let legacy = legacy_id(row.id)?;
    let customer_id = CustomerId::for_legacy_id(legacy);
    let stream = customer_id.to_string();
    let email = Email::parse(&row.email).map_err(|e| ("invalid_email", e.to_string()))?;
    let display_name = optional(
        row.display_name.as_deref(),
        DisplayName::parse,
        "invalid_display_name",
    )?;
    let suspended = match row.status.as_str() {
        "active" => false,
        "suspended" => true,
        other => return Err(("invalid_status", format!("unknown status {other:?}"))),
    };
    let normalised = email.as_str().to_owned();
    let events = first_events::<Customer>(
        &stream,
        CustomerCommand::Import {
            customer_id,
            legacy_id: legacy,
            email,
            display_name,
            email_verified_at: row.email_verified_at,
            suspended,
            created_at: row.created_at,
        },
    )
    .await?;
    Ok((
        stream,
        Planned {
            ids: vec![row.id],
            events,
            email: Some(normalised),
        },
    ))
}

async fn plan_credential(row: &LegacyCredential) -> Result<(String, Planned), Refusal> {
    let legacy = legacy_id(row.id)?;
    let customer = legacy_id(row.customer_id)?;
    let raw = RawCredentialId::from_bytes(row.credential_id.clone())
        .map_err(|e| ("invalid_credential_id", e.to_string()))?;
    let stream = raw.credential_id().to_string();
    let sign_count = u32::try_from(row.sign_count).map_err(|_| {
        (
            "invalid_sign_count",
            format!("sign count {} is outside 0..=4294967295", row.sign_count),
        )
    })?;
    let passkey = cose::legacy_credential(
        &row.credential_id,
        &row.public_key,
        sign_count,
        row.backup_eligible,
        row.backup_state,
    )
    .map_err(|e| match e {
        cose::CoseError::Unsupported(_) => ("unsupported_cose_key", e.to_string()),
        _ => ("malformed_cose_key", e.to_string()),
    })?;
    let passkey =
        serde_json::to_value(&passkey).map_err(|e| ("malformed_cose_key", e.to_string()))?;
    let name = optional(
        row.name.as_deref(),
        CredentialName::parse,
        "invalid_credential_name",
    )?;
    let events = first_events::<Credential>(
        &stream,
        CredentialCommand::Import {
            legacy_id: legacy,
            customer_id: CustomerId::for_legacy_id(customer),
            raw_credential_id: raw,
            passkey: json!({ "cred": passkey }),
            name,
            aaguid: row.aaguid,
            backup_eligible: row.backup_eligible,
            backup_state: row.backup_state,
            sign_count,
            transports: normalise_transports(row.transports.as_deref()),
            created_at: row.created_at,
            last_used_at: row.last_used_at,
        },
    )
    .await?;
    Ok((
        stream,
        Planned {
            ids: vec![row.id],
            events,
            email: None,
        },
    ))
}

/// Transport hints as the API records them: lower case, in legacy order.
pub fn normalise_transports(raw: Option<&[String]>) -> Vec<String> {
    raw.unwrap_or_default()
        .iter()
        .map(|t| t.trim().to_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// The idle timeout an imported session gets: the legacy service had only
/// the absolute expiry, so the idle window covers the rest of the session's
/// legacy life (never less than Queue's default). Nobody is logged out by
/// the cutover; the session still ends at its legacy `expires_at`.
pub fn imported_idle_timeout(last_seen_at: DateTime<Utc>, expires_at: DateTime<Utc>) -> u32 {
    let remaining = (expires_at - last_seen_at).num_seconds().max(0);
    u32::try_from(remaining)
        .unwrap_or(u32::MAX)
        .max(DEFAULT_IDLE_TIMEOUT_SECS)
}

async fn plan_session(
    row: &LegacySession,
    now: DateTime<Utc>,
) -> Result<(String, Planned), Refusal> {
    let legacy = legacy_id(row.id)?;
    let customer = legacy_id(row.customer_id)?;
    let session_id = SessionId::for_legacy_id(legacy);
    let stream = session_id.to_string();
    if row.expires_at <= now {
        return Err((
            "session_expired",
            format!("expired at {}", row.expires_at.to_rfc3339()),
        ));
    }
    let refresh_hash: SecretHash = row
        .token_hash
        .trim()
        .to_ascii_lowercase()
        .parse()
        .map_err(|e: queue_domain::types::ParseError| ("invalid_token_hash", e.to_string()))?;
    let events = first_events::<Session>(
        &stream,
        SessionCommand::Import {
            legacy_id: legacy,
            customer_id: CustomerId::for_legacy_id(customer),
            refresh_hash,
            idle_timeout_secs: imported_idle_timeout(row.last_seen_at, row.expires_at),
            created_at: row.created_at,
            last_seen_at: row.last_seen_at,
            expires_at: row.expires_at,
            at: now,
        },
    )
    .await?;
    Ok((
        stream,
        Planned {
            ids: vec![row.id],
            events,
            email: None,
        },
    ))
}

fn grant_command(row: &LegacyGrant) -> Result<CustomerCommand, Refusal> {
    let legacy = legacy_id(row.id)?;
    Ok(CustomerCommand::GrantRole {
        grant_id: GrantId::for_legacy_id(legacy),
        role: Role::parse(row.role.trim()).map_err(|e| ("invalid_role", e.to_string()))?,
        ticket_id: optional(row.ticket_id.as_deref(), TicketId::parse, "invalid_grant")?,
        reason: Reason::parse(&row.reason).map_err(|e| ("invalid_grant", e.to_string()))?,
        actor: Actor::parse(&row.granted_by).map_err(|e| ("invalid_grant", e.to_string()))?,
        expires_at: row.expires_at,
        // The grant's own time, so Queue's history says when it was granted.
        at: row.granted_at,
    })
}
