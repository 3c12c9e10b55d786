//! `queue verify`, compliance export and offline verify-export over a large
//! ledger: rates in events/s and each process's peak RSS (the `queue` binary
//! runs as a child; its VmHWM is sampled from /proc until it exits), beside
//! a bare ordered scan in SQL and, with `--baseline DIR`, the same commands
//! of an older `queue` binary on the same store in the same run.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cqrs_es::persist::SerializedEvent;
use queue_eventstore::{
    db, ChainedEventRepository, CheckpointSigner, MacKeys, Sealer, SealerConfig, SharedMacKeys,
    SystemClock,
};
use serde_json::json;

use crate::support::{rate, BenchResult, ScratchDb};

#[derive(clap::Args)]
pub struct Args {
    /// Events in the ledger (all exported).
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// A directory holding an older `queue` binary to run the same commands
    /// with, first (ratios printed against it).
    #[arg(long)]
    baseline: Option<std::path::PathBuf>,
}

struct ChildRun {
    secs: f64,
    peak_rss_kib: u64,
    ok: bool,
    stdout: String,
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

fn run_child(mut cmd: Command) -> BenchResult<ChildRun> {
    let started = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let pid = child.id();
    let mut peak = 0;
    let status = loop {
        if let Some(hwm) = vm_hwm_kib(pid) {
            peak = peak.max(hwm);
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let secs = started.elapsed().as_secs_f64();
    let mut stdout = String::new();
    if let Some(mut out) = child.stdout.take() {
        std::io::Read::read_to_string(&mut out, &mut stdout)?;
    }
    Ok(ChildRun {
        secs,
        peak_rss_kib: peak,
        ok: status.success(),
        stdout,
    })
}

pub async fn run(args: Args) -> BenchResult<()> {
    let queue_bin = std::env::current_exe()?
        .parent()
        .map(|d| d.join("queue"))
        .ok_or("cannot locate the queue binary")?;
    if !queue_bin.exists() {
        return Err(format!(
            "{} not found: cargo build --release -p queue-cli first",
            queue_bin.display()
        )
        .into());
    }
    let scratch = ScratchDb::create("queue_bench", 8).await?;
    let pool = scratch.pool.clone();
    db::migrate(&pool).await?;
    let mac = MacKeys::single("bench", vec![0x42; 32])?;
    let signer = Arc::new(CheckpointSigner::generate("bench.queue/ledger")?);
    let repo = ChainedEventRepository::new(
        pool.clone(),
        SharedMacKeys::new(mac.clone()),
        Arc::new(SystemClock),
    );

    let fill_at = Instant::now();
    let mut written = 0u64;
    while written < args.events {
        let n = (args.events - written).min(2_000);
        let batch: Vec<SerializedEvent> = (0..n)
            .map(|i| {
                let k = written + i;
                SerializedEvent::new(
                    format!("s-{}", k / 4),
                    (k % 4) as usize + 1,
                    "Session".into(),
                    "SessionRefreshed".into(),
                    "1.0".into(),
                    json!({"SessionRefreshed": {"previous": format!("{k:064x}"), "new": format!("{:064x}", k + 1), "at": "2026-11-25T16:22:14.123456Z"}}),
                    json!({}),
                )
            })
            .collect();
        repo.append(&batch).await?;
        written += n;
    }
    let fill_rate = rate(written, fill_at.elapsed().as_secs_f64());
    let seal_at = Instant::now();
    Sealer::new(
        Arc::clone(&signer),
        SealerConfig {
            batch_size: 10_000,
            ..SealerConfig::default()
        },
        SharedMacKeys::new(mac.clone()),
    )
    .seal_pending(&pool)
    .await?;
    let seal_rate = rate(written, seal_at.elapsed().as_secs_f64());
    println!("ledger of {written} events: appended at {fill_rate:.0} ev/s (batches of 2000), sealed at {seal_rate:.0} ev/s");

    let base = std::env::var("DATABASE_URL")?;
    let (server, _) = base
        .rsplit_once('/')
        .ok_or("DATABASE_URL has no database part")?;
    let url = format!("{server}/{}", scratch.name);

    let scan_rate = crate::support::ordered_scan_rate(&pool).await?;
    println!("bare ordered scan in SQL: {scan_rate:.0} ev/s");

    let mut bins = Vec::new();
    if let Some(dir) = &args.baseline {
        bins.push(("baseline", dir.join("queue")));
    }
    bins.push(("this build", queue_bin));
    let mut rates: Vec<[f64; 3]> = Vec::new();
    for (label, bin) in &bins {
        let env = |cmd: &mut Command| {
            cmd.env("DATABASE_URL", &url)
                .env("QUEUE_MAC_KEYS", mac.to_spec())
                .env("QUEUE_CHECKPOINT_KEY", signer.to_private_spec())
                .env("QUEUE_LOG", "warn");
        };
        let mut verify = Command::new(bin);
        verify.arg("verify");
        env(&mut verify);
        let verified = run_child(verify)?;
        let verify_rate = rate(written, verified.secs);
        println!(
            "[{label}] verify: {} ({}), {:.1} s, {verify_rate:.0} ev/s ({:.2}x the scan), peak RSS {} MiB",
            if verified.ok { "ok" } else { "FAILED" },
            verified.stdout.lines().next().unwrap_or("").trim(),
            verified.secs,
            verify_rate / scan_rate,
            verified.peak_rss_kib / 1024
        );

        let file = std::env::temp_dir().join(format!("{}.jsonl", scratch.name));
        let mut export = Command::new(bin);
        export.args(["export", "--no-seal", "--out"]).arg(&file);
        env(&mut export);
        let exported = run_child(export)?;
        let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        let export_rate = rate(written, exported.secs);
        println!(
            "[{label}] export: {} ({}), {:.1} s, {export_rate:.0} ev/s, peak RSS {} MiB, file {} MiB",
            if exported.ok { "ok" } else { "FAILED" },
            exported.stdout.trim(),
            exported.secs,
            exported.peak_rss_kib / 1024,
            size / (1024 * 1024)
        );
        let mut check = Command::new(bin);
        check
            .arg("verify-export")
            .arg(&file)
            .args(["--checkpoint-key", &signer.verifier().to_string()])
            .env_clear()
            .env("QUEUE_LOG", "warn");
        let checked = run_child(check)?;
        let check_rate = rate(written, checked.secs);
        println!(
            "[{label}] verify-export: {} ({}), {:.1} s, {check_rate:.0} ev/s, peak RSS {} MiB",
            if checked.ok { "ok" } else { "FAILED" },
            checked.stdout.trim(),
            checked.secs,
            checked.peak_rss_kib / 1024
        );
        std::fs::remove_file(&file).ok();
        rates.push([verify_rate, export_rate, check_rate]);
    }
    if let [before, after] = rates.as_slice() {
        println!(
            "this build / baseline: verify {:.2}x, export {:.2}x, verify-export {:.2}x",
            after[0] / before[0],
            after[1] / before[1],
            after[2] / before[2]
        );
    }
    scratch.drop_db().await?;
    Ok(())
}
