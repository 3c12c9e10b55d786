//! `queue projections rebuild|status|catch-up`.

use crate::stdout::out;
use std::process::ExitCode;

use clap::Subcommand;
use queue_eventstore::{db, VerifyProgress};
use queue_projections::rebuild::{self, RebuildOptions, RebuildReport};
use queue_projections::{Projection, ProjectionStatus};

use crate::config::{self, Lookup};
use crate::progress::Bar;
use crate::{print_json, CliError};

#[derive(Subcommand)]
pub enum ProjectionsCommand {
    /// Replay the whole log into shadow tables, validate them (row counts and
    /// checksums against a second fold, and against the live tables when the
    /// runner is caught up), then swap them in atomically. Exit 1 when
    /// validation fails (the live tables are left untouched).
    Rebuild {
        /// Rebuild one projection: customers, credentials, sessions or audit.
        #[arg(long, value_name = "NAME")]
        only: Option<Projection>,
        /// Build and validate, but do not swap.
        #[arg(long)]
        dry_run: bool,
    },
    /// Position, lag and errors of every projection.
    Status,
    /// Apply every committed event now (when no `queue serve` runs the projections).
    CatchUp,
}

/// The verify progress bar, reused for rebuild phases.
struct RebuildBar(Bar);

impl rebuild::Progress for RebuildBar {
    fn phase(&self, name: &str, total: u64) {
        VerifyProgress::phase(&self.0, name, total);
    }
    fn advance(&self, n: u64) {
        VerifyProgress::advance(&self.0, n);
    }
}

pub async fn run(
    command: ProjectionsCommand,
    json: bool,
    env: Lookup<'_>,
) -> Result<ExitCode, CliError> {
    let pool = db::connect(&config::database_url(env)?, 4).await?;
    match command {
        ProjectionsCommand::Rebuild { only, dry_run } => {
            let bar = RebuildBar(Bar::new());
            let report = rebuild::rebuild(
                &pool,
                &RebuildOptions {
                    only,
                    no_swap: dry_run,
                },
                &bar,
            )
            .await;
            bar.0.finish();
            let report = report?;
            if json {
                print_json(&report);
            } else {
                print_rebuild(&report);
            }
            Ok(if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        ProjectionsCommand::Status => {
            let statuses = queue_projections::status(&pool).await?;
            let outbox = queue_projections::outbox::status(&pool).await?;
            if json {
                print_json(&serde_json::json!({
                    "projections": statuses,
                    "mail_outbox": outbox,
                }));
            } else {
                print_status(&statuses);
                print_outbox(&outbox);
            }
            Ok(
                if statuses.iter().any(|s| s.error.is_some()) || outbox.error.is_some() {
                    ExitCode::from(1)
                } else {
                    ExitCode::SUCCESS
                },
            )
        }
        ProjectionsCommand::CatchUp => {
            let report = queue_projections::catch_up(&pool).await?;
            if json {
                print_json(&report);
            } else {
                for entry in &report {
                    match &entry.error {
                        None => out!("{:<12} applied {}", entry.projection, entry.applied),
                        Some(e) => out!(
                            "{:<12} applied {}; STOPPED: {e}",
                            entry.projection,
                            entry.applied
                        ),
                    }
                }
            }
            Ok(if report.iter().any(|c| c.error.is_some()) {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

pub fn print_rebuild(report: &RebuildReport) {
    let names: Vec<&str> = report.projections.iter().map(|p| p.name()).collect();
    out!(
        "rebuild of {}: {} events replayed in {} ms ({} events/s), validated in {} ms, swap {} ms",
        names.join(", "),
        report.events,
        report.replay_ms,
        report.events_per_second,
        report.validate_ms,
        report.swap_ms
    );
    for table in &report.tables {
        out!(
            "  {:<30} {:>10} rows  checksum {}",
            table.table,
            table.rows,
            table.checksum
        );
    }
    out!("  {}", report.live_note);
    if report.ok {
        if report.swapped {
            out!(
                "OK: swapped in ({} events committed meanwhile applied during the swap)",
                report.delta_events
            );
        } else {
            out!("OK: validated (dry run, not swapped)");
        }
    } else {
        out!("FAILED: validation found differences; the live tables are untouched");
        for difference in &report.differences {
            out!("  {difference}");
        }
    }
}

fn print_outbox(s: &queue_projections::outbox::OutboxStatus) {
    out!(
        "{:<12} {:>10} {:>8} {:>10.3}  {:<6}",
        "outbox",
        "-",
        s.events_behind,
        s.seconds_behind,
        if s.runner_active { "active" } else { "none" },
    );
    if let Some(error) = &s.error {
        out!("  STOPPED: {error}");
    }
    out!(
        "mail: {} pending (oldest {:.0} s), {} sent, {} dead",
        s.pending,
        s.oldest_pending_seconds,
        s.sent,
        s.dead
    );
    for dead in &s.dead_letters {
        out!(
            "  dead {} {} after {} attempts at {}: {}",
            dead.id,
            dead.kind,
            dead.attempts,
            dead.dead_at.map(|t| t.to_rfc3339()).unwrap_or_default(),
            dead.last_error.as_deref().unwrap_or("-")
        );
    }
}

fn print_status(statuses: &[ProjectionStatus]) {
    out!(
        "{:<12} {:>10} {:>8} {:>10}  {:<6}  position",
        "projection",
        "events",
        "behind",
        "seconds",
        "runner"
    );
    for s in statuses {
        out!(
            "{:<12} {:>10} {:>8} {:>10.3}  {:<6}  ({}, {})",
            s.projection,
            s.events,
            s.events_behind,
            s.seconds_behind,
            if s.runner_active { "active" } else { "none" },
            s.commit_xid,
            s.insert_id
        );
        if let Some(error) = &s.error {
            out!("  STOPPED since {:?}: {error}", s.failed_at);
        }
    }
}
