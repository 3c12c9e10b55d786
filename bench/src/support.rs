//! Support for every bench: a scratch database per run (queue-testkit's,
//! dropped afterwards), rates and CPU readings.

pub type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

pub use queue_testkit::db::ScratchDb;

pub fn rate(count: u64, secs: f64) -> f64 {
    count as f64 / secs.max(1e-9)
}

/// The baseline of the verify and export benches: events per second of a
/// bare ordered scan of `events` inside PostgreSQL (stream order, nothing
/// sent to the client).
pub async fn ordered_scan_rate(pool: &sqlx::PgPool) -> BenchResult<f64> {
    let started = std::time::Instant::now();
    let scanned: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT * FROM events ORDER BY aggregate_type, aggregate_id, sequence) e",
    )
    .fetch_one(pool)
    .await?;
    Ok(rate(scanned as u64, started.elapsed().as_secs_f64()))
}

/// CPU time used so far, in seconds: by this process (user + system), and by
/// the PostgreSQL server on this host (every live `postgres` process plus
/// what the postmaster has reaped from exited backends). Differences of two
/// readings give the CPU a phase cost on either side, which, unlike wall
/// time, does not depend on how busy a shared machine is. The server side
/// includes any other client's work at the time. `None` where /proc is not
/// readable (not Linux).
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuTimes {
    pub client: f64,
    pub server: f64,
}

impl CpuTimes {
    pub fn now() -> Option<Self> {
        let client = proc_stat("/proc/self/stat").map(|s| s.own)?;
        let mut server = 0.0;
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            if let Some(stat) = proc_stat(&format!("/proc/{pid}/stat")) {
                if stat.command == "postgres" {
                    // The postmaster's children are the backends and workers.
                    server += stat.own + stat.reaped_children;
                }
            }
        }
        Some(Self { client, server })
    }

    pub fn since(self, earlier: Self) -> Self {
        Self {
            client: self.client - earlier.client,
            server: self.server - earlier.server,
        }
    }
}

/// CPU seconds (user + system) process `pid` has used so far.
pub fn process_cpu(pid: u32) -> Option<f64> {
    proc_stat(&format!("/proc/{pid}/stat")).map(|s| s.own)
}

struct ProcStat {
    command: String,
    own: f64,
    reaped_children: f64,
}

/// utime, stime, cutime and cstime of /proc/<pid>/stat (fields 14–17).
fn proc_stat(path: &str) -> Option<ProcStat> {
    const TICKS_PER_SEC: f64 = 100.0;
    let text = std::fs::read_to_string(path).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let command = text.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = text.get(close + 2..)?.split_whitespace().collect();
    // fields[0] is field 3 (state); field n is fields[n - 3].
    let tick = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok());
    Some(ProcStat {
        command,
        own: (tick(14)? + tick(15)?) / TICKS_PER_SEC,
        reaped_children: (tick(16)? + tick(17)?) / TICKS_PER_SEC,
    })
}
