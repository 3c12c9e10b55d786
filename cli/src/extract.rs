//! `queue extract --target-database-url URL`: copy the verified log to a new
//! database and rebuild every table there (Phase 3 as one command).

use crate::stdout::out;
use std::process::ExitCode;

use clap::Args;
use queue_eventstore::{db, VerifyProgress};
use queue_projections::rebuild;
use queue_projections::{ExtractKeys, ExtractOptions, ExtractReport};

use crate::config::{self, Lookup};
use crate::progress::Bar;
use crate::{print_json, CliError};

#[derive(Args)]
pub struct ExtractArgs {
    /// The new database (migrated first). Re-run to copy only what is new.
    #[arg(
        long,
        value_name = "URL",
        env = "QUEUE_TARGET_DATABASE_URL",
        hide_env_values = true
    )]
    target_database_url: String,
    /// Events per copy transaction.
    #[arg(long, default_value_t = 5_000)]
    batch_size: i64,
    /// Checkpoint verifier key for `queue verify` on the target; default:
    /// derived from QUEUE_CHECKPOINT_KEY (skipped when neither is set).
    #[arg(long, value_name = "VERIFIER_KEY")]
    checkpoint_key: Option<String>,
}

struct ExtractBar(Bar);

impl rebuild::Progress for ExtractBar {
    fn phase(&self, name: &str, total: u64) {
        VerifyProgress::phase(&self.0, name, total);
    }
    fn advance(&self, n: u64) {
        VerifyProgress::advance(&self.0, n);
    }
}

pub async fn run(args: ExtractArgs, json: bool, env: Lookup<'_>) -> Result<ExitCode, CliError> {
    let keys = config::mac_keys(env)?;
    let verifier = match config::checkpoint_verifier(env, args.checkpoint_key.as_deref()) {
        Ok(v) => Some(v),
        Err(config::ConfigError::Missing(var)) => {
            tracing::warn!("{var} is not set: the target's checkpoints will not be verified");
            None
        }
        Err(other) => return Err(other.into()),
    };
    let source = db::connect(&config::database_url(env)?, 4).await?;
    let target = db::connect(&args.target_database_url, 4)
        .await
        .map_err(|e| CliError::Io(format!("target database: {e}")))?;
    let bar = ExtractBar(Bar::new());
    let report = queue_projections::extract(
        &source,
        &target,
        &ExtractKeys {
            mac_keys: &keys,
            checkpoint_key: verifier.as_ref(),
        },
        &ExtractOptions {
            batch_size: args.batch_size,
        },
        &bar,
    )
    .await;
    bar.0.finish();
    let report = report?;
    if json {
        print_json(&report);
    } else {
        print_report(&report);
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn yes(ok: bool) -> &'static str {
    if ok {
        "equal"
    } else {
        "DIFFERENT"
    }
}

fn print_report(r: &ExtractReport) {
    out!(
        "copied {} events ({} in the target, {} in the source up to this run's end; {} committed since)",
        r.copied_events, r.target_events, r.source_events, r.source_events_after
    );
    out!("event order: {}", yes(r.order_equal));
    out!(
        "ledger: {} entries copied; target size {} (source {}); root at size {}: {} ({})",
        r.copied_ledger_entries,
        r.target_ledger_size,
        r.source_ledger_size,
        r.target_ledger_size,
        yes(r.ledger_root_equal),
        r.target_ledger_root
    );
    out!(
        "checkpoints: {} copied, {} in the target; target verify: {}",
        r.copied_checkpoints,
        r.target_checkpoints,
        match r.target_verified {
            Some(true) => "intact",
            Some(false) => "DAMAGED",
            None => "skipped (no checkpoint key)",
        }
    );
    out!(
        "rebuild in the target: {} events in {} ms",
        r.rebuild.events,
        r.rebuild.elapsed_ms
    );
    out!(
        "  {:<30} {:>10} {:>10}  {:<9} checksum",
        "table",
        "source",
        "target",
        ""
    );
    for t in &r.tables {
        out!(
            "  {:<30} {:>10} {:>10}  {:<9} {}",
            t.table,
            t.source_rows,
            t.target_rows,
            yes(t.equal),
            t.target_checksum
        );
    }
    out!("  {}", r.source_live_note);
    if r.ok {
        out!(
            "OK: the target holds the same verified log and the same tables ({} ms)",
            r.elapsed_ms
        );
    } else {
        out!("FAILED:");
        for problem in &r.problems {
            out!("  {problem}");
        }
    }
}
