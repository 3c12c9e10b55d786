#![forbid(unsafe_code)]
//! `queue`: serve, migrate, seal, verify and manage keys.

mod backfill;
mod config;
mod export;
mod extract;
mod keys;
mod progress;
mod projections;
mod replay;
mod serve;
mod stdout;

use crate::stdout::out;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use queue_eventstore::{db, verify_store, Sealer, SealerConfig, SharedMacKeys, VerifyInput};
use serde::Serialize;

use crate::config::{ConfigError, Lookup};

#[derive(Parser)]
#[command(
    name = "queue",
    version,
    about = "Queue: event-sourced passkey authentication with a tamper-evident ledger"
)]
struct Cli {
    /// Print machine-readable JSON on stdout (logs stay on stderr).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP API, the ledger sealer and the projections (never
    /// migrates: refuses a schema `queue migrate` has not brought up to date).
    Serve {
        /// Development mode: generate and use local keys if none are configured.
        #[arg(long)]
        dev: bool,
        /// Where dev mode keeps its keys.
        #[arg(long, default_value = ".dev/keys", env = "QUEUE_DEV_KEY_DIR")]
        dev_key_dir: PathBuf,
    },
    /// Apply database migrations (as the schema's owner).
    Migrate {
        /// Also create the development LOGIN roles (`queue_dev_service`,
        /// `queue_dev_sealer`, `queue_dev_projector`, password `queue-dev`)
        /// in the three groups `queue serve` runs as. Never in production.
        #[arg(long)]
        dev_logins: bool,
    },
    /// Seal every committed event into the ledger now and write a checkpoint.
    Seal,
    /// Recompute every hash, MAC, Merkle root and checkpoint signature.
    Verify {
        /// Checkpoint notes kept outside the database, to check the store against.
        #[arg(long = "checkpoint", value_name = "FILE")]
        checkpoints: Vec<PathBuf>,
        /// Verifier key (`<name>+<id>+<key>`); default: derived from QUEUE_CHECKPOINT_KEY.
        #[arg(long, value_name = "VERIFIER_KEY")]
        checkpoint_key: Option<String>,
    },
    /// Write a compliance export: events with hashes and inclusion proofs against a signed checkpoint.
    Export(export::ExportArgs),
    /// Check an export file offline with only the checkpoint verifier key.
    VerifyExport(export::VerifyExportArgs),
    /// A customer's state at an instant (or the changes between two), folded from the event log.
    Replay(replay::ReplayArgs),
    /// Read tables: rebuild, status, catch-up.
    Projections {
        #[command(subcommand)]
        command: projections::ProjectionsCommand,
    },
    /// Copy the verified log to a new database and rebuild every table there.
    Extract(extract::ExtractArgs),
    /// Import the legacy tables as events (`backfill parity` compares afterwards).
    Backfill(backfill::BackfillArgs),
    /// Key management.
    Keys {
        #[command(subcommand)]
        command: keys::KeysCommand,
    },
}

/// Exit codes: 0 ok, 1 verification found damage, 2 usage/config/database error.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] queue_eventstore::StoreError),
    #[error(transparent)]
    Projections(#[from] queue_projections::ProjectionError),
    #[error("{0}")]
    Io(String),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let env = |k: &str| std::env::var(k).ok();
    match run(cli, &env).await {
        Ok(code) => code,
        // Damage found (e.g. `queue seal` stopping at a row that does not
        // verify) is exit 1, like `queue verify`'s findings.
        Err(err @ CliError::Store(queue_eventstore::StoreError::Integrity(_))) => {
            eprintln!("queue: error: {err}");
            ExitCode::from(1)
        }
        Err(err) => {
            eprintln!("queue: error: {err}");
            ExitCode::from(2)
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("QUEUE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn run(cli: Cli, env: Lookup<'_>) -> Result<ExitCode, CliError> {
    match cli.command {
        Command::Serve { dev, dev_key_dir } => {
            serve::run(serve::ServeArgs { dev, dev_key_dir }, env).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate { dev_logins } => {
            let pool = db::connect(&config::database_url(env)?, 2).await?;
            db::migrate(&pool).await?;
            if dev_logins {
                queue_eventstore::roles::ensure_dev_logins(&pool).await?;
            }
            output(
                cli.json,
                &serde_json::json!({"migrated": true, "dev_logins": dev_logins}),
                if dev_logins {
                    "migrations applied; dev login roles ready"
                } else {
                    "migrations applied"
                },
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Seal => {
            let signer = Arc::new(config::checkpoint_signer(env)?);
            let pool = db::connect(&config::database_url(env)?, 2).await?;
            // Sealing checks every row first, so it needs the MAC keys.
            let mac = SharedMacKeys::new(config::mac_keys(env)?);
            let outcome = Sealer::new(signer, SealerConfig::default(), mac)
                .seal_pending(&pool)
                .await?;
            let text = format!(
                "sealed {} events; ledger size {}; checkpoint {}",
                outcome.sealed,
                outcome.tree_size,
                outcome
                    .checkpoint
                    .map_or("unchanged".into(), |s| s.to_string())
            );
            output(
                cli.json,
                &serde_json::json!({"sealed": outcome.sealed, "tree_size": outcome.tree_size, "checkpoint": outcome.checkpoint}),
                &text,
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify {
            checkpoints,
            checkpoint_key,
        } => {
            let keys = config::mac_keys(env)?;
            let verifier = config::checkpoint_verifier(env, checkpoint_key.as_deref())?;
            let external = checkpoints
                .iter()
                .map(|p| {
                    std::fs::read_to_string(p)
                        .map_err(|e| CliError::Io(format!("{}: {e}", p.display())))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let pool = db::connect(&config::database_url(env)?, 4).await?;
            let bar = progress::Bar::new();
            let report = verify_store(
                &pool,
                &VerifyInput {
                    mac_keys: &keys,
                    checkpoint_key: &verifier,
                    external_checkpoints: &external,
                },
                &bar,
            )
            .await?;
            bar.finish();
            if cli.json {
                print_json(&report);
            } else {
                out!(
                    "{} events in {} streams; ledger {} entries ({} unsealed); {} checkpoints (latest {}); root {}",
                    report.events,
                    report.streams,
                    report.ledger_size,
                    report.unsealed,
                    report.checkpoints,
                    report.latest_checkpoint_size.map_or("none".into(), |s| s.to_string()),
                    report.root_hash
                );
                out!(
                    "{} ms, {} events/s",
                    report.elapsed_ms,
                    report.events_per_second
                );
                for problem in &report.problems {
                    out!("  {}", problem.describe());
                }
                match &report.first_problem {
                    None => out!("OK: the ledger is intact"),
                    Some(first) => out!(
                        "FAILED: {} problem(s); first: {}",
                        report.problem_count,
                        first.describe()
                    ),
                }
            }
            Ok(if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Keys { command } => keys::run(command, cli.json, env),
        Command::Backfill(args) => backfill::run(args, cli.json, env).await,
        Command::Projections { command } => projections::run(command, cli.json, env).await,
        Command::Extract(args) => extract::run(args, cli.json, env).await,
        Command::Replay(args) => replay::run(args, cli.json, env).await,
        Command::Export(args) => export::export(args, cli.json, env).await,
        Command::VerifyExport(args) => export::verify_export(args, cli.json),
    }
}

fn output<T: Serialize>(json: bool, value: &T, text: &str) {
    if json {
        print_json(value);
    } else {
        out!("{text}");
    }
}

fn print_json<T: Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(s) => out!("{s}"),
        Err(e) => eprintln!("queue: error: cannot encode JSON: {e}"),
    }
}
