//! Backfill throughput: legacy customers with two passkeys and one live
//! session each, imported as events, against baselines measured in the
//! same run on the same rows:
//! - bare read: every legacy row in the backfill's keyset pages, nothing
//!   done with it;
//! - plain copy: the same pages copied as plain rows (one INSERT per page,
//!   one transaction per page) into an unchained table of the Queue
//!   database: moving the rows, without parsing, COSE validation, the
//!   domain, the hash chain, the MAC or the email index.
//!
//! Then the projections catch up (events/s into the read tables), a second
//! backfill run (zero events: everything skipped) and the parity check.
//! Passkeys are real: COSE keys from a software authenticator, as
//! py-webauthn stores them (a pool of distinct keys shared by the rows).

use std::time::Instant;

use chrono::Utc;
use queue_backfill::legacy::{self, Table};
use queue_backfill::Options;
use queue_eventstore::{ChainedEventRepository, MacKeys, SharedMacKeys, SystemClock};
use serde_json::json;
use sqlx::PgPool;
use std::sync::Arc;
use url::Url;
use webauthn_authenticator_rs::softpasskey::SoftPasskey;
use webauthn_authenticator_rs::WebauthnAuthenticator;
use webauthn_rs_proto::CreationChallengeResponse;

use crate::support::{rate, BenchResult, ScratchDb};

#[derive(clap::Args)]
pub struct Args {
    /// Legacy customers (each with 2 passkeys and 1 live session).
    #[arg(long, default_value_t = 100_000)]
    customers: i64,
    /// Legacy rows per backfill transaction.
    #[arg(long, default_value_t = 500)]
    batch_size: i64,
    /// Distinct authenticator keys shared by the passkey rows.
    #[arg(long, default_value_t = 64)]
    keys: usize,
}

pub async fn run(args: Args) -> BenchResult<()> {
    let queue = ScratchDb::create("queue_bench", 8).await?;
    let legacy = ScratchDb::create("queue_bench", 8).await?;
    let result = bench(&queue.pool, &legacy.pool, &args).await;
    queue.drop_db().await?;
    legacy.drop_db().await?;
    result
}

async fn bench(queue: &PgPool, legacy: &PgPool, args: &Args) -> BenchResult<()> {
    queue_eventstore::MIGRATOR.run(queue).await?;
    sqlx::raw_sql(queue_backfill::LEGACY_SCHEMA)
        .execute(legacy)
        .await?;
    let started = Instant::now();
    fill(legacy, args).await?;
    sqlx::raw_sql("VACUUM ANALYZE").execute(legacy).await?;
    let rows = args.customers as u64 * 4;
    println!(
        "legacy: {} customers, {} passkeys ({} distinct keys), {} sessions = {rows} rows; filled in {:.1} s",
        args.customers,
        args.customers * 2,
        args.keys,
        args.customers,
        started.elapsed().as_secs_f64()
    );
    println!("load average before: {}", load_average());

    let t = Instant::now();
    let read = bare_read(legacy, args.batch_size).await?;
    let read_secs = t.elapsed().as_secs_f64();
    println!(
        "bare read:   {read} rows in {read_secs:.2} s = {:.0} rows/s",
        rate(read, read_secs)
    );

    let t = Instant::now();
    let copied = plain_copy(queue, legacy, args.batch_size).await?;
    let copy_secs = t.elapsed().as_secs_f64();
    println!(
        "plain copy:  {copied} rows in {copy_secs:.2} s = {:.0} rows/s",
        rate(copied, copy_secs)
    );

    let keys = SharedMacKeys::new(MacKeys::single("bench", vec![7u8; 32])?);
    let repo = ChainedEventRepository::new(queue.clone(), keys, Arc::new(SystemClock));
    let options = Options {
        batch_size: args.batch_size,
        dry_run: false,
        now: Utc::now(),
    };
    let t = Instant::now();
    let report =
        queue_backfill::backfill(&repo, legacy, &options, &queue_backfill::run::NoProgress).await?;
    let secs = t.elapsed().as_secs_f64();
    let backfill_rate = rate(report.rows_read(), secs);
    println!(
        "backfill:    {} rows in {secs:.2} s = {backfill_rate:.0} rows/s ({} events, {} rejected)",
        report.rows_read(),
        report.events_appended,
        report.rejected_count()
    );
    println!(
        "ratio: backfill / plain copy = {:.3}; backfill / bare read = {:.3}",
        backfill_rate / rate(copied, copy_secs),
        backfill_rate / rate(read, read_secs)
    );
    println!("load average after the backfill: {}", load_average());

    let t = Instant::now();
    let mut applied = 0;
    for projection in queue_projections::runner::catch_up(queue).await? {
        if let Some(error) = projection.error {
            return Err(format!("projection {:?}: {error}", projection.projection).into());
        }
        applied += projection.applied;
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "projections catch-up: {applied} event applications in {secs:.2} s = {:.0} /s",
        rate(applied, secs)
    );

    let t = Instant::now();
    let again =
        queue_backfill::backfill(&repo, legacy, &options, &queue_backfill::run::NoProgress).await?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "second run:  {} rows in {secs:.2} s = {:.0} rows/s, {} events appended",
        again.rows_read(),
        rate(again.rows_read(), secs),
        again.events_appended
    );

    let t = Instant::now();
    let parity = queue_backfill::parity(queue, legacy).await?;
    println!(
        "parity:      {} in {:.2} s ({} differences)",
        if parity.agrees() { "agrees" } else { "DIFFERS" },
        t.elapsed().as_secs_f64(),
        parity.differences.len()
    );
    println!("load average at the end: {}", load_average());
    Ok(())
}

/// COSE keys as py-webauthn stores them, from a software authenticator.
fn cose_keys(n: usize) -> BenchResult<Vec<Vec<u8>>> {
    let origin = Url::parse("https://bench.example")?;
    let mut soft = SoftPasskey::new(true);
    let mut keys = Vec::with_capacity(n);
    for i in 0..n {
        let ccr: CreationChallengeResponse = serde_json::from_value(json!({"publicKey": {
            "rp": {"id": "bench.example", "name": "Bench"},
            "user": {"id": "dXNlcg", "name": format!("user{i}"), "displayName": "User"},
            "challenge": "Y2hhbGxlbmdlY2hhbGxlbmdlY2hhbGxlbmdl",
            "pubKeyCredParams": [{"type": "public-key", "alg": -7}]
        }}))?;
        let response = soft
            .do_registration(origin.clone(), ccr)
            .map_err(|e| format!("softpasskey: {e:?}"))?;
        keys.push(queue_backfill::cose::credential_public_key(
            &response.response.attestation_object,
        )?);
    }
    Ok(keys)
}

async fn fill(legacy: &PgPool, args: &Args) -> BenchResult<()> {
    let keys = cose_keys(args.keys.max(1))?;
    sqlx::query(
        "INSERT INTO customers (email, display_name, email_verified_at, status, created_at) \
         SELECT 'Customer' || g || '@bench.example', 'Customer ' || g, now() - interval '100 days', \
         CASE WHEN g % 50 = 0 THEN 'suspended' ELSE 'active' END, now() - interval '200 days' \
         FROM generate_series(1, $1) g",
    )
    .bind(args.customers)
    .execute(legacy)
    .await?;
    sqlx::query(
        "INSERT INTO webauthn_credentials (customer_id, credential_id, public_key, sign_count, transports, \
         aaguid, backup_eligible, backup_state, name, created_at, last_used_at) \
         SELECT (g + 1) / 2, decode(md5(g::text), 'hex') || int8send(g), $2[1 + g % cardinality($2)], \
         g % 1000, '{internal,hybrid}', '00000000-0000-0000-0000-000000000000', true, g % 3 = 0, \
         'Passkey ' || g, now() - interval '150 days', now() - interval '1 day' \
         FROM generate_series(1, 2 * $1) g",
    )
    .bind(args.customers)
    .bind(&keys)
    .execute(legacy)
    .await?;
    sqlx::query(
        "INSERT INTO customer_sessions (customer_id, token_hash, created_at, last_seen_at, expires_at, user_agent, ip) \
         SELECT g, encode(sha256(('refresh-' || g)::bytea), 'hex'), now() - interval '2 days', \
         now() - interval '1 hour', now() + interval '28 days', 'Mozilla/5.0', '198.51.100.1' \
         FROM generate_series(1, $1) g",
    )
    .bind(args.customers)
    .execute(legacy)
    .await?;
    Ok(())
}

/// Every row the backfill reads, in its pages, and nothing else.
async fn bare_read(legacy: &PgPool, batch: i64) -> BenchResult<u64> {
    let mut n = 0;
    for table in [Table::Customers, Table::Credentials, Table::Sessions] {
        let mut after = 0;
        loop {
            let last = match table {
                Table::Customers => {
                    let rows = legacy::customers(legacy, after, batch).await?;
                    n += rows.len() as u64;
                    rows.last().map(|r| r.id)
                }
                Table::Credentials => {
                    let rows = legacy::credentials(legacy, after, batch).await?;
                    n += rows.len() as u64;
                    rows.last().map(|r| r.id)
                }
                _ => {
                    let rows = legacy::sessions(legacy, after, batch).await?;
                    n += rows.len() as u64;
                    rows.last().map(|r| r.id)
                }
            };
            match last {
                Some(id) => after = id,
                None => break,
            }
        }
    }
    Ok(n)
}

/// The same pages copied as plain rows into an unchained table.
async fn plain_copy(queue: &PgPool, legacy: &PgPool, batch: i64) -> BenchResult<u64> {
    sqlx::raw_sql(
        "CREATE TABLE bench_copy (legacy_table text NOT NULL, legacy_id bigint NOT NULL, \
         row jsonb NOT NULL, PRIMARY KEY (legacy_table, legacy_id))",
    )
    .execute(queue)
    .await?;
    let mut n = 0;
    for table in ["customers", "webauthn_credentials", "customer_sessions"] {
        let mut after = 0i64;
        loop {
            let page: Vec<(i64, serde_json::Value)> = sqlx::query_as(&format!(
                "SELECT id, to_jsonb(t) FROM {table} t WHERE id > $1 ORDER BY id LIMIT $2"
            ))
            .bind(after)
            .bind(batch)
            .fetch_all(legacy)
            .await?;
            let Some(last) = page.last().map(|r| r.0) else {
                break;
            };
            let (ids, rows): (Vec<i64>, Vec<serde_json::Value>) = page.into_iter().unzip();
            let mut tx = queue.begin().await?;
            sqlx::query(
                "INSERT INTO bench_copy SELECT $1, * FROM UNNEST($2::bigint[], $3::jsonb[])",
            )
            .bind(table)
            .bind(&ids)
            .bind(&rows)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            n += ids.len() as u64;
            after = last;
        }
    }
    Ok(n)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}
