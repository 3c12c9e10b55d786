//! `queue backfill`: the Phase 2 import from the legacy tables, and
//! `queue backfill parity`: the offline comparison afterwards.

use crate::stdout::out;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use queue_backfill::{Options, ParityReport, Report};
use queue_eventstore::{db, ChainedEventRepository, SharedMacKeys, SystemClock};

use crate::config::{self, Lookup};
use crate::{print_json, CliError};

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct BackfillArgs {
    #[command(subcommand)]
    command: Option<BackfillCommand>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args)]
struct RunArgs {
    /// The legacy database (customers, webauthn_credentials, customer_sessions, rbac_grants).
    #[arg(long, env = "QUEUE_LEGACY_DATABASE_URL", hide_env_values = true)]
    legacy_database_url: Option<String>,
    /// Read and report; write nothing (not even the migrated_to_queue column).
    #[arg(long)]
    dry_run: bool,
    /// Legacy rows per transaction.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(i64).range(1..=10_000))]
    batch_size: i64,
}

#[derive(Subcommand)]
enum BackfillCommand {
    /// Compare legacy rows marked migrated_to_queue with the queue_* read tables.
    Parity {
        #[arg(long, env = "QUEUE_LEGACY_DATABASE_URL", hide_env_values = true)]
        legacy_database_url: String,
    },
}

/// Exit codes: backfill 0 when every row is in Queue, 1 when some rows were
/// rejected (listed), 2 on errors; parity 0 when they agree, 1 otherwise.
pub async fn run(args: BackfillArgs, json: bool, env: Lookup<'_>) -> Result<ExitCode, CliError> {
    match args.command {
        Some(BackfillCommand::Parity {
            legacy_database_url,
        }) => parity(&legacy_database_url, json, env).await,
        None => {
            let url = args
                .run
                .legacy_database_url
                .ok_or(config::ConfigError::Missing("--legacy-database-url"))?;
            backfill(&url, args.run.dry_run, args.run.batch_size, json, env).await
        }
    }
}

async fn backfill(
    legacy_url: &str,
    dry_run: bool,
    batch_size: i64,
    json: bool,
    env: Lookup<'_>,
) -> Result<ExitCode, CliError> {
    let keys = config::mac_keys(env)?;
    let pool = db::connect(&config::database_url(env)?, 4).await?;
    let legacy = db::connect(legacy_url, 4).await?;
    let repo = ChainedEventRepository::new(pool, SharedMacKeys::new(keys), Arc::new(SystemClock));
    let bar = Bar::new();
    let options = Options {
        batch_size,
        dry_run,
        now: chrono::Utc::now(),
    };
    let report = queue_backfill::backfill(&repo, &legacy, &options, &bar)
        .await
        .map_err(|e| CliError::Io(e.to_string()))?;
    bar.0.finish_and_clear();
    if json {
        print_json(&report);
    } else {
        print_report(&report);
    }
    Ok(if report.rejected_count() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_report(report: &Report) {
    let mode = if report.dry_run {
        " (dry run: nothing written)"
    } else {
        ""
    };
    out!(
        "backfill{mode}: {} rows in {} ms ({} rows/s), {} events appended",
        report.rows_read(),
        report.elapsed_ms,
        report.rows_per_second,
        report.events_appended
    );
    for t in &report.tables {
        out!(
            "  {:<22} read {:>8}  imported {:>8}  skipped (already imported) {:>8}  rejected {:>6}",
            t.table,
            t.read,
            t.imported,
            t.skipped,
            t.rejected.len()
        );
    }
    for t in &report.tables {
        for r in &t.rejected {
            out!(
                "  rejected {} #{}: {} ({})",
                t.table,
                r.legacy_id,
                r.reason,
                r.detail
            );
        }
    }
}

async fn parity(legacy_url: &str, json: bool, env: Lookup<'_>) -> Result<ExitCode, CliError> {
    let pool = db::connect(&config::database_url(env)?, 2).await?;
    let legacy = db::connect(legacy_url, 2).await?;
    let report = queue_backfill::parity(&pool, &legacy)
        .await
        .map_err(|e| CliError::Io(e.to_string()))?;
    if json {
        print_json(&report);
    } else {
        print_parity(&report);
    }
    Ok(if report.agrees() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_parity(report: &ParityReport) {
    for t in &report.tables {
        out!(
            "  {:<22} legacy migrated {:>8}  not migrated {:>6}  queue rows {:>8}  matched {:>8}",
            t.table,
            t.legacy_migrated,
            t.legacy_not_migrated,
            t.queue_rows,
            t.matched
        );
    }
    for d in &report.differences {
        out!(
            "  {} #{} {}: legacy {} / queue {}",
            d.table,
            d.legacy_id,
            d.field,
            d.legacy,
            d.queue
        );
    }
    if report.agrees() {
        out!("OK: Queue agrees with every migrated legacy row");
    } else {
        out!("FAILED: {} difference(s)", report.differences.len());
    }
}

/// Rows/s per table on stderr when it is a terminal.
struct Bar(ProgressBar);

impl Bar {
    fn new() -> Self {
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        if let Ok(style) =
            ProgressStyle::with_template("{msg:>20} [{bar:40}] {pos}/{len} ({per_sec}, ETA {eta})")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        Self(bar)
    }
}

impl queue_backfill::Progress for Bar {
    fn table(&self, name: &str, total: u64) {
        self.0.set_message(name.to_string());
        self.0.set_length(total);
        self.0.set_position(0);
        self.0.reset_eta();
    }

    fn advance(&self, rows: u64) {
        self.0.inc(rows);
    }
}
