//! Projection rebuild throughput against a bare scan of the events table,
//! measured in the same run on the same data.
//!
//! The store is filled with a realistic mix of domain events (customers,
//! passkeys and their uses, sessions and their refreshes, grants, backup
//! codes, verifications, external audit events), appended through the
//! chained repository in large batches. Then:
//! - bare scan: every event row in global order, the columns the rebuild
//!   reads, nothing done with them (best of two runs, after a warm-up);
//! - rebuild: `queue projections rebuild` of every projection; its replay
//!   phase (read, decode, fold, COPY into shadow tables, build indexes) is
//!   the measured rate; validation (a second fold and checksums of every
//!   table) and the swap are reported beside it.

use std::time::Instant;

use chrono::{DateTime, Duration, TimeZone, Utc};
use cqrs_es::persist::SerializedEvent;
use cqrs_es::DomainEvent;
use futures::TryStreamExt;
use queue_domain::credential::CredentialEvent;
use queue_domain::customer::CustomerEvent;
use queue_domain::session::{AuthMethod, RevokeReason, SessionEvent};
use queue_domain::types::{
    Actor, AuditAction, AuditEventId, AuditTarget, CredentialName, CustomerId, DisplayName, Email,
    GrantId, IdempotencyKey, RawCredentialId, Reason, Role, SecretHash, ServiceName,
    SessionFamilyId, TicketId,
};
use queue_domain::AuditEvent;
use queue_eventstore::{db, ChainedEventRepository, MacKeys, SharedMacKeys, SystemClock};
use queue_projections::rebuild::{Progress, RebuildOptions};
use serde_json::json;
use std::sync::Arc;
use uuid::Uuid;

use crate::support::{rate, BenchResult, CpuTimes, ScratchDb};

#[derive(clap::Args)]
pub struct Args {
    /// Events in the store (about 24 per customer).
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Concurrent writers while filling the store.
    #[arg(long, default_value_t = 4)]
    writers: usize,
    /// Keep the filled store in this database and reuse it on the next run
    /// (filled only when it does not hold exactly `--events` events), so
    /// repeated measurements skip the fill. Without it a scratch database
    /// is created and dropped.
    #[arg(long)]
    keep_database: Option<String>,
}

pub async fn run(args: Args) -> BenchResult<()> {
    if let Some(name) = &args.keep_database {
        let pool = kept_database(name).await?;
        return bench(&pool, &args).await;
    }
    let scratch = ScratchDb::create("queue_bench", 16).await?;
    let result = bench(&scratch.pool, &args).await;
    scratch.drop_db().await?;
    result
}

/// A pool on the named database, created if missing.
async fn kept_database(name: &str) -> BenchResult<sqlx::PgPool> {
    use sqlx::{ConnectOptions as _, Connection as _};
    use std::str::FromStr as _;
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err("--keep-database: lowercase letters, digits and _ only".into());
    }
    let url = std::env::var("DATABASE_URL")
        .map_err(|_| "DATABASE_URL is not set (a server where it may create databases)")?;
    let admin = sqlx::postgres::PgConnectOptions::from_str(&url)?;
    let mut conn = admin.connect().await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await?;
    }
    conn.close().await?;
    Ok(sqlx::postgres::PgPoolOptions::new()
        .max_connections(16)
        .connect_with(admin.database(name))
        .await?)
}

async fn bench(pool: &sqlx::PgPool, args: &Args) -> BenchResult<()> {
    let pool = pool.clone();
    db::migrate(&pool).await?;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&pool)
        .await?;
    let filled = if stored > 0 && stored as u64 == args.events {
        println!("reusing {stored} events in the kept database");
        stored as u64
    } else {
        if stored > 0 {
            return Err(format!(
                "the kept database holds {stored} events, not {}: drop it first",
                args.events
            )
            .into());
        }
        let repo = ChainedEventRepository::new(
            pool.clone(),
            SharedMacKeys::new(MacKeys::single("k1", vec![0x42; 32])?),
            Arc::new(SystemClock),
        );
        let started = Instant::now();
        let filled = fill(&repo, args.events, args.writers.max(1)).await?;
        println!(
            "filled {filled} events in {:.1} s ({:.0} events/s through the chained repository)",
            started.elapsed().as_secs_f64(),
            rate(filled, started.elapsed().as_secs_f64())
        );
        sqlx::query("VACUUM ANALYZE events").execute(&pool).await?;
        filled
    };

    scan(&pool).await?; // warm-up
    let mut scan_secs = f64::MAX;
    let mut scan_cpu = None;
    for _ in 0..2 {
        let t = Instant::now();
        let cpu = CpuTimes::now();
        let n = scan(&pool).await?;
        scan_secs = scan_secs.min(t.elapsed().as_secs_f64());
        scan_cpu = CpuTimes::now()
            .zip(cpu)
            .map(|(after, before)| after.since(before));
        if n != filled {
            return Err(format!("scan saw {n} events, expected {filled}").into());
        }
    }
    let scan_rate = rate(filled, scan_secs);

    println!("load average before the rebuild: {}", load_average());
    let t = Instant::now();
    let phases = PhaseCpu::default();
    let report = queue_projections::rebuild(&pool, &RebuildOptions::default(), &phases).await?;
    let phase_cpu = phases.costs();
    let total_secs = t.elapsed().as_secs_f64();
    if !report.ok || report.events != filled {
        return Err(format!("rebuild failed: {:?}", report.differences).into());
    }
    let replay_secs = report.replay_ms as f64 / 1000.0;
    let rebuild_rate = rate(filled, replay_secs);
    println!("events                      {filled}");
    println!(
        "bare scan                   {:>10.0} events/s  ({:.2} s)",
        scan_rate, scan_secs
    );
    println!(
        "rebuild (replay+load+index) {:>10.0} events/s  ({:.2} s)   ratio to bare scan {:.2}",
        rebuild_rate,
        replay_secs,
        rebuild_rate / scan_rate
    );
    println!(
        "  of which: read+decode+fold+COPY audit {:.2} s, COPY other tables and build all indexes {:.2} s",
        report.fold_ms as f64 / 1000.0,
        report.load_ms as f64 / 1000.0
    );
    println!(
        "  replay stages waited: for decoded events {:.2} s, for the folds {:.2} s, audit fold for COPY {:.2} s",
        report.stage_waits.read_ms as f64 / 1000.0,
        report.stage_waits.fold_ms as f64 / 1000.0,
        report.stage_waits.copy_ms as f64 / 1000.0
    );
    println!(
        "validation {:.2} s (of which the second, stream-order fold {:.2} s; then shadow tables read back and checksummed); swap {:.3} s",
        report.validate_ms as f64 / 1000.0,
        report.second_fold_ms as f64 / 1000.0,
        report.swap_ms as f64 / 1000.0,
    );
    println!(
        "whole rebuild (replay, load, index, validation, swap) {:>10.0} events/s  ({:.2} s)   ratio to bare scan {:.2}",
        rate(filled, total_secs),
        total_secs,
        rate(filled, total_secs) / scan_rate
    );
    for table in &report.tables {
        println!("  {:<30} {:>10} rows", table.table, table.rows);
    }
    // CPU seconds per phase do not depend on the machine's load the way wall
    // time does: what each side would need from the cores if it had them.
    let cpu_line = |label: &str, cpu: Option<CpuTimes>| match cpu {
        Some(c) => println!(
            "cpu {label:<40} client {:>6.2} s  server {:>6.2} s  sum {:>6.2} s",
            c.client,
            c.server,
            c.client + c.server
        ),
        None => println!("cpu {label:<40} not measured (no /proc)"),
    };
    cpu_line("bare scan (the faster run)", scan_cpu);
    for (name, cpu) in &phase_cpu {
        cpu_line(name, Some(*cpu));
    }
    println!("load average after the rebuild: {}", load_average());
    Ok(())
}

/// Snapshots CPU times at each phase change of the rebuild.
#[derive(Default)]
struct PhaseCpu {
    marks: std::sync::Mutex<Vec<(String, CpuTimes)>>,
}

impl Progress for PhaseCpu {
    fn phase(&self, name: &str, _total: u64) {
        if let (Some(now), Ok(mut marks)) = (CpuTimes::now(), self.marks.lock()) {
            marks.push((name.to_owned(), now));
        }
    }
}

impl PhaseCpu {
    /// The CPU each phase cost, up to the start of the next ("swap" is last
    /// and not closed).
    fn costs(&self) -> Vec<(String, CpuTimes)> {
        let marks = match self.marks.lock() {
            Ok(marks) => marks.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        marks
            .windows(2)
            .map(|w| (w[0].0.clone(), w[1].1.since(w[0].1)))
            .collect()
    }
}

/// The 1, 5 and 15 minute load averages (the machine is shared: numbers
/// are only comparable with the load they were measured under).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Reads every event row in global order and does nothing with it.
async fn scan(pool: &sqlx::PgPool) -> BenchResult<u64> {
    let mut conn = pool.acquire().await?;
    use queue_eventstore::feed::{Columns, FeedRead, Position, Until};
    let read = FeedRead::new(Columns::Payload, Position::default(), Until::Stored);
    let mut rows = read.fetch(&mut conn);
    let mut n = 0u64;
    while let Some(row) = rows.try_next().await? {
        std::hint::black_box(&row);
        n += 1;
    }
    Ok(n)
}

async fn fill(repo: &ChainedEventRepository, target: u64, writers: usize) -> BenchResult<u64> {
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let repo = repo.clone();
        let share = target / writers as u64 + u64::from((writer as u64) < target % writers as u64);
        tasks.push(tokio::spawn(async move {
            let mut written = 0u64;
            let mut customer = writer as u64;
            let mut batch = Vec::new();
            while written < share {
                let events = customer_events(customer)?;
                let take = events.len().min((share - written) as usize);
                // Keep whole streams consecutive; a cut only shortens the last one.
                batch.extend(events.into_iter().take(take));
                written += take as u64;
                customer += writers as u64;
                if batch.len() >= 2_000 || written >= share {
                    repo.append(&batch).await?;
                    batch.clear();
                }
            }
            Ok::<u64, Box<dyn std::error::Error + Send + Sync>>(written)
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await??;
    }
    Ok(total)
}

fn at(base: DateTime<Utc>, seconds: i64) -> DateTime<Utc> {
    base + Duration::seconds(seconds)
}

fn serialized<E: DomainEvent>(
    aggregate_type: &str,
    id: &str,
    sequence: usize,
    event: &E,
) -> BenchResult<SerializedEvent> {
    Ok(SerializedEvent::new(
        id.to_string(),
        sequence,
        aggregate_type.to_string(),
        event.event_type(),
        event.event_version(),
        serde_json::to_value(event)?,
        json!({}),
    ))
}

/// About 24 events of one customer's life, stream by stream.
fn customer_events(n: u64) -> BenchResult<Vec<SerializedEvent>> {
    let base = Utc
        .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .ok_or("time")?
        + Duration::seconds(n as i64 * 7);
    let customer_id = CustomerId::from_uuid(Uuid::from_u128(0xc000_0000 + u128::from(n)));
    let cid = customer_id.to_string();
    let hash = |s: &str| SecretHash::of(format!("{n}/{s}").as_bytes());
    let actor = Actor::parse("ops@queue")?;
    let mut out = Vec::with_capacity(24);
    let customer = [
        CustomerEvent::Registered {
            tenant_id: queue_domain::types::TenantId::DEFAULT,
            customer_id,
            email: Email::parse(&format!("bench{n}@example.com"))?,
            display_name: DisplayName::parse(&format!("Bench {n}"))?,
            default_role: Role::default_role(),
            at: at(base, 0),
        },
        CustomerEvent::EmailVerificationRequested {
            token_hash: hash("email"),
            expires_at: at(base, 86_400),
            at: at(base, 1),
        },
        CustomerEvent::EmailVerified { at: at(base, 60) },
        CustomerEvent::RoleGranted {
            grant_id: GrantId::from_uuid(Uuid::from_u128(0x9000_0000 + u128::from(n))),
            role: Role::parse("support-agent")?,
            ticket_id: Some(TicketId::parse(&format!("T-{n}"))?),
            reason: Reason::parse("on call")?,
            actor: actor.clone(),
            expires_at: Some(at(base, 3_600)),
            at: at(base, 70),
        },
        CustomerEvent::BackupCodesGenerated {
            generation: 1,
            code_hashes: (0..10).map(|i| hash(&format!("code{i}"))).collect(),
            key_id: None,
            at: at(base, 80),
        },
        CustomerEvent::BackupCodeRedeemed {
            generation: 1,
            index: 3,
            at: at(base, 90),
        },
    ];
    for (i, event) in customer.iter().enumerate() {
        out.push(serialized("Customer", &cid, i + 1, event)?);
    }
    let mut credential_ids = Vec::new();
    for k in 0..2u8 {
        let raw = RawCredentialId::from_bytes([n.to_be_bytes().as_slice(), &[k; 8]].concat())?;
        let credential_id = raw.credential_id();
        credential_ids.push(credential_id);
        let id = credential_id.to_string();
        let mut events = vec![CredentialEvent::Registered {
            customer_id,
            raw_credential_id: raw.clone(),
            passkey: json!({"cred": {"cred_id": raw.to_string(), "counter": 0,
                "cred": {"type_": "EDDSA", "key": {"EC_OKP": {"curve": "ED25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}}},
                "user_verified": true, "backup_eligible": true, "backup_state": false,
                "registration_policy": "required", "extensions": {}, "attestation": {"data": "None", "metadata": "None"},
                "attestation_format": "none", "transports": ["Internal"]}}),
            name: Some(CredentialName::parse(&format!("Key {k}"))?),
            aaguid: Some(Uuid::from_u128(0xadce_0002_35bc_c60a_648b_0b25_f1f0_5503)),
            backup_eligible: true,
            backup_state: false,
            sign_count: 0,
            transports: vec!["internal".into()],
            at: at(base, 2 + i64::from(k)),
        }];
        for u in 1..=3u32 {
            events.push(CredentialEvent::Used {
                sign_count: u,
                backup_state: u % 2 == 0,
                at: at(base, 100 + i64::from(u)),
            });
        }
        for (i, event) in events.iter().enumerate() {
            out.push(serialized("Credential", &id, i + 1, event)?);
        }
    }
    for s in 0..2u32 {
        let sid = Uuid::from_u128(0x5000_0000_0000 + u128::from(n) * 4 + u128::from(s)).to_string();
        let mut events = vec![SessionEvent::Created {
            customer_id,
            method: AuthMethod::Webauthn {
                credential_id: credential_ids[s as usize % credential_ids.len()],
            },
            refresh_hash: hash(&format!("s{s}r0")),
            family_id: SessionFamilyId::from_uuid(Uuid::from_u128(
                u128::from(n) << 8 | u128::from(s),
            )),
            idle_timeout_secs: 1_800,
            absolute_timeout_secs: 43_200,
            at: at(base, 200),
            authn_instant: None,
        }];
        for r in 1..=3u32 {
            events.push(SessionEvent::Refreshed {
                previous: hash(&format!("s{s}r{}", r - 1)),
                new: hash(&format!("s{s}r{r}")),
                grace_retry: false,
                at: at(base, 200 + 600 * i64::from(r)),
            });
        }
        if s == 0 {
            events.push(SessionEvent::Revoked {
                reason: RevokeReason::Logout,
                at: at(base, 3_000),
            });
        }
        for (i, event) in events.iter().enumerate() {
            out.push(serialized("Session", &sid, i + 1, event)?);
        }
    }
    let service = ServiceName::parse("billing")?;
    let key = format!("bench-{n}");
    let audit = AuditEvent::Recorded {
        service: service.clone(),
        actor: Actor::parse("svc-billing")?,
        action: AuditAction::parse("invoice.paid")?,
        target: AuditTarget::parse(&format!("invoice/{n}"))?,
        customer_id: Some(customer_id),
        ticket_id: None,
        occurred_at: at(base, 400),
        metadata: json!({"amount_cents": n % 100_000, "currency": "EUR"}),
        idempotency_key: IdempotencyKey::parse(&key)?,
        at: at(base, 400),
        tenant_id: None,
    };
    let audit_id = AuditEventId::for_idempotency_key(service.as_str(), &key).to_string();
    out.push(serialized("Audit", &audit_id, 1, &audit)?);
    Ok(out)
}
