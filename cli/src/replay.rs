//! `queue replay`: a customer's state at an instant, from the event log.

use crate::stdout::out;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::Args;
use queue_eventstore::history::{self, CustomerHistory};
use queue_eventstore::{db, ChainedEventRepository, EventStore, SharedMacKeys, SystemClock};
use std::sync::Arc;

use crate::config::{self, Lookup};
use crate::CliError;

#[derive(Args)]
pub struct ReplayArgs {
    /// The customer id.
    #[arg(long)]
    customer: String,
    /// The instant (RFC 3339); default: now.
    #[arg(long)]
    at: Option<DateTime<Utc>>,
    /// Show what changed between two instants instead.
    #[arg(long, num_args = 2, value_names = ["FROM", "TO"], conflicts_with = "at")]
    diff: Option<Vec<DateTime<Utc>>>,
}

pub async fn run(args: ReplayArgs, json: bool, env: Lookup<'_>) -> Result<ExitCode, CliError> {
    let pool = db::connect(&config::database_url(env)?, 2).await?;
    // Forensics fold checked history only: the MAC keys are needed.
    let store = EventStore::new(ChainedEventRepository::new(
        pool,
        SharedMacKeys::new(config::mac_keys(env)?),
        Arc::new(SystemClock),
    ));
    if let Some(instants) = args.diff {
        let (from, to) = match instants.as_slice() {
            [from, to] => (*from, *to),
            _ => return Err(CliError::Io("--diff takes FROM and TO".into())),
        };
        let before = history::customer_history(&store, &args.customer, from).await?;
        let after = history::customer_history(&store, &args.customer, to).await?;
        let changes = history::diff(
            &serde_json::to_value(&before.state).unwrap_or_default(),
            &serde_json::to_value(&after.state).unwrap_or_default(),
        );
        let between: Vec<_> = after
            .events
            .iter()
            .filter(|e| !before.events.contains(e))
            .collect();
        if json {
            crate::print_json(&serde_json::json!({
                "customer_id": args.customer, "from": from, "to": to,
                "changes": changes, "events": between,
                "covered_by_checkpoint": after.covered_by_checkpoint,
            }));
        } else {
            out!("customer {} from {from} to {to}", args.customer);
            for c in &changes {
                out!("  {}: {} -> {}", c.path, c.before, c.after);
            }
            out!("events between:");
            for e in between {
                out!("  {}", event_line(e));
            }
            out!("{}", coverage(&after));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let at = args.at.unwrap_or_else(Utc::now);
    let history = history::customer_history(&store, &args.customer, at).await?;
    if json {
        crate::print_json(&history);
    } else {
        print_history(&history);
    }
    Ok(ExitCode::SUCCESS)
}

fn event_line(e: &history::HistoryEvent) -> String {
    format!(
        "{} ledger {:>8} {}/{} #{} {} {}",
        e.recorded_at,
        e.ledger_seq.map_or("unsealed".into(), |s| s.to_string()),
        e.aggregate_type,
        e.aggregate_id,
        e.sequence,
        e.event_type,
        &e.hash[..16]
    )
}

fn coverage(h: &CustomerHistory) -> String {
    if h.covered_by_checkpoint {
        format!(
            "every event above is covered by the signed checkpoint of size {}",
            h.checkpoint_tree_size.unwrap_or(0)
        )
    } else {
        "NOT every event above is covered by a signed checkpoint yet (run queue seal)".into()
    }
}

fn print_history(h: &CustomerHistory) {
    out!("customer {} at {}", h.customer_id, h.at);
    match &h.state {
        None => out!("  did not exist yet"),
        Some(s) => {
            out!(
                "  email {} (verified: {}), status {}",
                s.email,
                s.email_verified,
                s.status
            );
            for r in &s.roles {
                out!(
                    "  role {} {} grant {} ticket {}",
                    r.role,
                    if r.active { "active" } else { "inactive" },
                    r.grant_id.as_deref().unwrap_or("default"),
                    r.ticket_id.as_deref().unwrap_or("-")
                );
                // Reasons are free text (line breaks allowed): quoted, escaped.
                if let (Some(by), Some(at)) = (&r.granted_by, r.granted_at) {
                    out!(
                        "    granted {at} by {by}, reason {:?}",
                        r.grant_reason.as_deref().unwrap_or("")
                    );
                }
                if let Some(at) = r.revoked_at {
                    out!(
                        "    revoked {at} by {}, reason {:?}",
                        r.revoked_by.as_deref().unwrap_or("-"),
                        r.revoke_reason.as_deref().unwrap_or("")
                    );
                }
            }
            for p in &s.passkeys {
                out!(
                    "  passkey {} {:?} counter {}{}",
                    p.credential_id,
                    p.name.as_deref().unwrap_or(""),
                    p.sign_count,
                    if p.revoked_at.is_some() {
                        " (revoked)"
                    } else {
                        ""
                    }
                );
            }
            for x in &s.sessions {
                out!(
                    "  session {} {} (created {})",
                    x.session_id,
                    x.status,
                    x.created_at
                );
            }
            out!("  unused backup codes: {}", s.unused_backup_codes);
        }
    }
    out!("events:");
    for e in &h.events {
        out!("  {}", event_line(e));
    }
    out!("{}", coverage(h));
}
