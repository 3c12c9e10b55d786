#![forbid(unsafe_code)]
//! Queue benchmarks. Each prints its measurement beside a baseline measured
//! in the same run, and the ratio. Never asserted in tests.

mod backfill;
mod export;
mod http;
mod ledger;
mod load;
mod ratelimit;
mod rebuild;
mod saml;
mod support;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "queue-bench")]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Compliance export and offline verify-export: events/s and peak RSS.
    Export(export::Args),
    /// Chained append vs plain postgres-es append (1 and 16 writers), and verify throughput.
    Ledger(ledger::Args),
    /// Projection rebuild events/s vs a bare scan of the events table.
    Rebuild(rebuild::Args),
    /// login/complete and refresh over HTTP vs a plain axum + sqlx handler doing the same row inserts.
    Http(http::Args),
    /// Legacy backfill rows/s vs a bare read and a plain copy of the same legacy rows.
    Backfill(backfill::Args),
    /// Rate-limit checks: per-process vs shared through Redis vs Redis unreachable.
    Ratelimit(ratelimit::Args),
    /// Mixed CRITICAL + LOW load, shedding off and on, and a 2x overload phase.
    Load(load::Args),
    /// SAML sign-in at the ACS (first and returning) vs passkey login/complete.
    Saml(saml::Args),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.bench {
        Bench::Ledger(args) => ledger::run(args).await,
        Bench::Rebuild(args) => rebuild::run(args).await,
        Bench::Export(args) => export::run(args).await,
        Bench::Http(args) => http::run(args).await,
        Bench::Load(args) => load::run(args).await,
        Bench::Backfill(args) => backfill::run(args).await,
        Bench::Ratelimit(args) => ratelimit::run(args).await,
        Bench::Saml(args) => saml::run(args).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("queue-bench: error: {e}");
            std::process::ExitCode::from(2)
        }
    }
}
