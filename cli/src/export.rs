//! `queue export` and `queue verify-export`.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use clap::Args;
use queue_domain::types::{TenantId, TenantSlug};
use queue_eventstore::export::{self, ExportFilter};
use queue_eventstore::{db, NoteVerifier, Sealer, SealerConfig, SharedMacKeys};

use crate::config::{self, Lookup};
use crate::{progress, CliError};

#[derive(Args)]
pub struct ExportArgs {
    /// Events recorded at or after this time (RFC 3339).
    #[arg(long)]
    since: Option<DateTime<Utc>>,
    /// Events recorded before this time (RFC 3339).
    #[arg(long)]
    until: Option<DateTime<Utc>>,
    /// Only the streams of this customer (its own, its passkeys', sessions', audit events).
    #[arg(long)]
    customer: Option<String>,
    /// Only the streams of this tenant (its tenant stream, its customers' and theirs);
    /// `default` is the tenant of every customer from before tenants.
    #[arg(long, value_name = "SLUG")]
    tenant: Option<TenantSlug>,
    /// Export the contiguous ledger range from this seq (inclusive); completeness is then provable.
    #[arg(long)]
    from_seq: Option<u64>,
    /// …to this seq (inclusive).
    #[arg(long)]
    to_seq: Option<u64>,
    /// Include a consistency proof from the checkpoint of this size to the export's.
    #[arg(long, value_name = "SIZE")]
    consistency_from: Option<u64>,
    /// Output file (JSON Lines).
    #[arg(long)]
    out: PathBuf,
    /// Do not seal pending events first (export against the latest checkpoint as it is).
    #[arg(long)]
    no_seal: bool,
}

#[derive(Args)]
pub struct VerifyExportArgs {
    /// The export file.
    file: PathBuf,
    /// The checkpoint verifier key `<origin>+<8 hex id>+<base64 key>` (`queue keys public checkpoint`).
    #[arg(long)]
    checkpoint_key: String,
    /// An older signed checkpoint note: prove the export's log extends it.
    #[arg(long, value_name = "FILE")]
    consistency: Option<PathBuf>,
}

pub async fn export(args: ExportArgs, json: bool, env: Lookup<'_>) -> Result<ExitCode, CliError> {
    let signer = Arc::new(config::checkpoint_signer(env)?);
    let pool = db::connect(&config::database_url(env)?, 4).await?;
    if !args.no_seal {
        // Make sure a checkpoint covers every event exported.
        // Sealing checks every row first, so it needs the MAC keys.
        let mac = SharedMacKeys::new(config::mac_keys(env)?);
        Sealer::new(Arc::clone(&signer), SealerConfig::default(), mac)
            .seal_pending(&pool)
            .await?;
    }
    let file = File::create(&args.out)
        .map_err(|e| CliError::Io(format!("{}: {e}", args.out.display())))?;
    let mut out = BufWriter::new(file);
    let bar = progress::Bar::new();
    let filter = ExportFilter {
        since: args.since,
        until: args.until,
        customer_id: args.customer,
        tenant_id: args.tenant.as_ref().map(TenantId::for_slug),
        from_seq: args.from_seq,
        to_seq: args.to_seq,
    };
    let summary = export::export(
        &pool,
        &signer.verifier(),
        &filter,
        args.consistency_from,
        &mut out,
        &bar,
    )
    .await?;
    bar.finish();
    crate::output(
        json,
        &summary,
        &format!(
            "exported {} events to {} against checkpoint of size {} (key id {}); {} events/s",
            summary.events,
            args.out.display(),
            summary.tree_size,
            summary.checkpoint_key_id,
            summary.events_per_second
        ),
    );
    Ok(ExitCode::SUCCESS)
}

pub fn verify_export(args: VerifyExportArgs, json: bool) -> Result<ExitCode, CliError> {
    let verifier = NoteVerifier::parse(&args.checkpoint_key).map_err(|e| {
        CliError::Config(config::ConfigError::Invalid {
            var: "--checkpoint-key",
            why: e.to_string(),
        })
    })?;
    let older = match &args.consistency {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| CliError::Io(format!("{}: {e}", path.display())))?,
        ),
        None => None,
    };
    let file = File::open(&args.file)
        .map_err(|e| CliError::Io(format!("{}: {e}", args.file.display())))?;
    let report = export::verify_export(&mut BufReader::new(file), &verifier, older.as_deref());
    let text = match (&report.first_bad_line, &report.problem) {
        (None, _) => format!(
            "OK: {} events proven against the signed checkpoint of size {}{} ({} events/s)",
            report.events,
            report.tree_size,
            if report.consistency_checked {
                ", consistent with the older checkpoint"
            } else {
                ""
            },
            report.events_per_second
        ),
        (Some(line), problem) => format!(
            "FAILED at line {line}: {}",
            problem.as_deref().unwrap_or("unknown problem")
        ),
    };
    crate::output(json, &report, &text);
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
