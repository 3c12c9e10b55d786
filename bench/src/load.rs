//! `queue-bench load`: a mixed load against `queue serve` over loopback
//! TCP, bounded in time and in count. CRITICAL routes (login/complete,
//! refresh, audit writes) mixed with LOW ones (customer history, audit log
//! reads); throughput, p50/p99 per route and class, and answers by status and
//! code — with shedding off (QUEUE_MAX_IN_FLIGHT huge) and on.
//!
//! The service runs as two child `queue serve` processes (the release
//! `queue` binary next to this one, or `--queue-bin`) on one scratch
//! database, each on a free loopback port: shedding off and shedding on. They
//! are killed when the run ends, also on error. The generator lowers its own
//! CPU priority (`renice -n 10`, best effort) once they are up, so on a small
//! machine the client's work does not compete with the service as it would
//! not in a real deployment; its lateness still counts (latency is measured
//! from the scheduled send).
//!
//! Phases, all in one run:
//! 1. unloaded: CRITICAL only, one request at a time → the reference p99
//!    (measured again at the end; the lower p99 of the two is the reference);
//! 2. sustainable: the full mix, closed loop at `--concurrency` → req/s;
//! 3. overload: open loop at 2× that rate (requests are sent on schedule
//!    whether or not earlier ones have finished), shedding off and on. The
//!    verdict: CRITICAL p99 under overload with shedding on against 2× the
//!    unloaded p99, and how much LOW was shed.
//!
//! Login assertions are signed before each phase (one per customer, so sign
//! counters never race); refresh tokens are used by one request at a time.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use queue_eventstore::{CheckpointSigner, MacKeys};
use serde_json::{json, Value};

use crate::http::{assertion, register_all, Customer, ORIGIN};
use crate::support::{process_cpu, rate, BenchResult, CpuTimes, ScratchDb};

#[derive(clap::Args)]
pub struct Args {
    /// Seconds per measured phase.
    #[arg(long, default_value_t = 5)]
    secs: u64,
    /// Most requests a phase may send.
    #[arg(long, default_value_t = 20_000)]
    max_requests: usize,
    /// Customers registered up front (each logs in at most once per phase).
    #[arg(long, default_value_t = 300)]
    customers: usize,
    /// Requests in flight while measuring the sustainable rate.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Share of LOW requests in the mix (the rest is CRITICAL).
    #[arg(long, default_value_t = 0.5)]
    low_share: f64,
    /// QUEUE_MAX_IN_FLIGHT with shedding on.
    #[arg(long, default_value_t = 32)]
    max_in_flight: usize,
    /// The no-overload phases' rate, as a share of the sustainable rate.
    #[arg(long, default_value_t = 0.5)]
    calm: f64,
    /// Overload factor over the sustainable rate.
    #[arg(long, default_value_t = 2.0)]
    overload: f64,
    /// Niceness the load generator gives itself once the service runs (0: none).
    #[arg(long, default_value_t = 10)]
    nice: u8,
    /// The `queue` binary to serve with (default: `queue` next to this binary).
    #[arg(long)]
    queue_bin: Option<PathBuf>,
    /// QUEUE_SHED_HOLD_MS with shedding on (the service's default is 0).
    #[arg(long, default_value_t = 0)]
    hold_ms: u32,
    /// Extra `KEY=VALUE` settings for the shedding-on instance (repeatable),
    /// e.g. to try other shedding levels.
    #[arg(long = "on-env", value_parser = parse_setting)]
    on_env: Vec<(String, String)>,
}

fn parse_setting(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

const TOKEN: &str = "bench-service-token-000001";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Route {
    LoginComplete,
    Refresh,
    AuditWrite,
    History,
    AuditList,
}

impl Route {
    fn name(self) -> &'static str {
        match self {
            Self::LoginComplete => "login/complete",
            Self::Refresh => "session/refresh",
            Self::AuditWrite => "audit write",
            Self::History => "customer history",
            Self::AuditList => "audit log read",
        }
    }

    fn critical(self) -> bool {
        matches!(self, Self::LoginComplete | Self::Refresh | Self::AuditWrite)
    }
}

struct Sample {
    route: Route,
    status: u16,
    code: String,
    /// From the scheduled send to the whole answer.
    latency: Duration,
    /// From the scheduled send to the moment the generator sent it.
    late: Duration,
}

/// What the requests of one phase draw on.
struct Material {
    client: reqwest::Client,
    base: String,
    assertions: Mutex<Vec<Value>>,
    refresh_tokens: Mutex<Vec<String>>,
    customer_ids: Vec<String>,
    next_key: AtomicU64,
}

impl Material {
    /// The i-th request of the mix: every 20 requests carry `low_share` × 20 LOW ones.
    fn route(&self, i: usize, low_share: f64) -> Route {
        let low_slots = (low_share * 20.0).round() as usize;
        let slot = i % 20;
        if slot < low_slots {
            if (i / 20 + slot).is_multiple_of(2) {
                Route::History
            } else {
                Route::AuditList
            }
        } else {
            match (i / 20 + slot) % 3 {
                0 => Route::LoginComplete,
                1 => Route::Refresh,
                _ => Route::AuditWrite,
            }
        }
    }

    /// Sends the i-th request, due at `scheduled`; its latency counts from then.
    async fn send(&self, wanted: Route, i: usize, scheduled: Instant) -> Sample {
        let mut route = wanted;
        let request = match wanted {
            Route::LoginComplete => match lock(&self.assertions).pop() {
                Some(body) => self
                    .client
                    .post(format!("{}/api/v1/auth/webauthn/login/complete", self.base))
                    .json(&body),
                None => {
                    route = Route::AuditWrite;
                    self.audit_write()
                }
            },
            Route::Refresh => match lock(&self.refresh_tokens).pop() {
                Some(token) => self
                    .client
                    .post(format!("{}/api/v1/auth/session/refresh", self.base))
                    .json(&json!({ "refresh_token": token })),
                None => {
                    route = Route::AuditWrite;
                    self.audit_write()
                }
            },
            Route::AuditWrite => self.audit_write(),
            Route::History => {
                let id = &self.customer_ids[i % self.customer_ids.len().max(1)];
                self.client
                    .get(format!("{}/api/v1/admin/customers/{id}/history", self.base))
                    .bearer_auth(TOKEN)
            }
            Route::AuditList => self
                .client
                .get(format!("{}/api/v1/audit/events?limit=100", self.base))
                .bearer_auth(TOKEN),
        };
        let late = scheduled.elapsed();
        let (status, body) = match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                (
                    status,
                    response.json::<Value>().await.unwrap_or(Value::Null),
                )
            }
            Err(e) => (0, json!({"error": {"code": transport_code(&e)}})),
        };
        let latency = scheduled.elapsed();
        if let Some(token) = body["refresh_token"].as_str() {
            lock(&self.refresh_tokens).push(token.to_owned());
        }
        let code = match body["error"]["code"].as_str() {
            Some(code) => code.to_owned(),
            None => "ok".to_owned(),
        };
        Sample {
            route,
            status,
            code,
            latency,
            late,
        }
    }

    fn audit_write(&self) -> reqwest::RequestBuilder {
        let n = self.next_key.fetch_add(1, Ordering::SeqCst);
        self.client
            .post(format!("{}/api/v1/audit/events", self.base))
            .bearer_auth(TOKEN)
            .json(
                &json!({"actor": "bench", "action": "bench.load", "target": format!("item:{n}"),
                          "idempotency_key": format!("load-{n}")}),
            )
    }
}

fn transport_code(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "transport_timeout"
    } else if e.is_connect() {
        "transport_connect"
    } else {
        "transport_error"
    }
}

/// A poisoned lock only means another request task panicked; the data is fine.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct PhaseResult {
    name: String,
    /// From the first send to the last answer.
    secs: f64,
    /// From the first scheduled send to the last actual send.
    send_secs: f64,
    samples: Vec<Sample>,
    /// The service's own timing of the CRITICAL routes in this phase.
    server: Option<Histogram>,
    /// CPU seconds the phase cost, by process.
    cpu: Option<PhaseCost>,
}

/// CPU seconds (user + system) one phase cost: the generator (this
/// process), the `queue serve` under test, and PostgreSQL (every backend).
/// Unlike latency these add up: they show what a refused request costs.
#[derive(Clone, Copy, Debug)]
struct PhaseCost {
    generator: f64,
    service: f64,
    postgres: f64,
}

/// A CPU reading of the generator, one service process and PostgreSQL.
#[derive(Clone, Copy)]
struct CpuMark {
    times: CpuTimes,
    service: f64,
}

impl CpuMark {
    fn now(service_pid: u32) -> Option<Self> {
        Some(Self {
            times: CpuTimes::now()?,
            service: process_cpu(service_pid)?,
        })
    }

    fn since(self, earlier: Self) -> PhaseCost {
        let times = self.times.since(earlier.times);
        PhaseCost {
            generator: times.client,
            service: self.service - earlier.service,
            postgres: times.server,
        }
    }
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[derive(Default)]
struct ClassStats {
    sent: usize,
    ok: usize,
    p50: Duration,
    p99: Duration,
    /// p99 from the moment the generator actually sent (its lateness left out).
    p99_from_send: Duration,
    by_code: BTreeMap<String, usize>,
}

impl PhaseResult {
    fn stats(&self, keep: impl Fn(Route) -> bool) -> ClassStats {
        let mut ok: Vec<Duration> = Vec::new();
        let mut from_send: Vec<Duration> = Vec::new();
        let mut stats = ClassStats::default();
        for s in self.samples.iter().filter(|s| keep(s.route)) {
            stats.sent += 1;
            if (200..300).contains(&s.status) {
                ok.push(s.latency);
                from_send.push(s.latency.saturating_sub(s.late));
            } else {
                *stats
                    .by_code
                    .entry(format!("{} {}", s.status, s.code))
                    .or_default() += 1;
            }
        }
        ok.sort();
        from_send.sort();
        stats.ok = ok.len();
        stats.p50 = percentile(&ok, 0.50);
        stats.p99 = percentile(&ok, 0.99);
        stats.p99_from_send = percentile(&from_send, 0.99);
        stats
    }

    fn critical(&self) -> ClassStats {
        self.stats(Route::critical)
    }

    fn low(&self) -> ClassStats {
        self.stats(|r| !r.critical())
    }

    fn print(&self) {
        let mut late: Vec<Duration> = self.samples.iter().map(|s| s.late).collect();
        late.sort();
        println!(
            "{}  ({} requests, sent at {:.0} req/s over {:.1} s (generator late p50 {:.2} ms, p99 {:.2} ms), {:.0} req/s answered 2xx over {:.1} s)",
            self.name,
            self.samples.len(),
            rate(self.samples.len() as u64, self.send_secs),
            self.send_secs,
            percentile(&late, 0.50).as_secs_f64() * 1e3,
            percentile(&late, 0.99).as_secs_f64() * 1e3,
            rate(
                self.samples
                    .iter()
                    .filter(|s| (200..300).contains(&s.status))
                    .count() as u64,
                self.secs
            ),
            self.secs,
        );
        let line = |label: &str, s: &ClassStats| {
            let errors = if s.by_code.is_empty() {
                "none".to_owned()
            } else {
                s.by_code
                    .iter()
                    .map(|(code, n)| format!("{code}: {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            println!(
                "  {label:<18} {:>6} sent {:>6} ok  {:>7.0} ok/s  p50 {:>8.2} ms  p99 {:>8.2} ms (from send {:>8.2} ms)  errors: {errors}",
                s.sent,
                s.ok,
                rate(s.ok as u64, self.secs),
                s.p50.as_secs_f64() * 1e3,
                s.p99.as_secs_f64() * 1e3,
                s.p99_from_send.as_secs_f64() * 1e3,
            );
        };
        line("CRITICAL", &self.critical());
        if let Some(h) = &self.server {
            println!(
                "  CRITICAL as the service timed it (its histogram, interpolated within buckets): {} requests, p50 {:.1} ms, p99 {:.1} ms",
                h.total(),
                h.quantile(0.50) * 1e3,
                h.quantile(0.99) * 1e3,
            );
        }
        line("LOW", &self.low());
        if let Some(cpu) = &self.cpu {
            let per_request_us = |secs: f64| secs * 1e6 / self.samples.len().max(1) as f64;
            println!(
                "  CPU seconds: generator {:.2}, service {:.2}, postgres {:.2}  (per request: {:.0} / {:.0} / {:.0} µs)",
                cpu.generator,
                cpu.service,
                cpu.postgres,
                per_request_us(cpu.generator),
                per_request_us(cpu.service),
                per_request_us(cpu.postgres),
            );
        }
        for route in [
            Route::LoginComplete,
            Route::Refresh,
            Route::AuditWrite,
            Route::History,
            Route::AuditList,
        ] {
            let s = self.stats(|r| r == route);
            if s.sent > 0 {
                line(&format!("  {}", route.name()), &s);
            }
        }
    }
}

/// The CRITICAL routes' share of `queue_http_request_duration_seconds`:
/// cumulative counts per bucket bound, summed over the routes.
#[derive(Clone, Debug, Default)]
struct Histogram(Vec<(f64, u64)>);

const CRITICAL_ROUTES: [(&str, &str); 3] = [
    ("POST", "/api/v1/auth/webauthn/login/complete"),
    ("POST", "/api/v1/auth/session/refresh"),
    ("POST", "/api/v1/audit/events"),
];

impl Histogram {
    fn parse(text: &str) -> Self {
        let mut buckets: BTreeMap<u64, (f64, u64)> = BTreeMap::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("queue_http_request_duration_seconds_bucket{")
            else {
                continue;
            };
            let Some((labels, count)) = rest.split_once("} ") else {
                continue;
            };
            let label = |name: &str| {
                labels
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(name)?.strip_prefix("=\""))
                    .map(|v| v.trim_end_matches('"'))
            };
            let critical = CRITICAL_ROUTES
                .iter()
                .any(|(m, r)| label("method") == Some(*m) && label("route") == Some(*r));
            let le = match label("le") {
                Some("+Inf") => f64::INFINITY,
                Some(v) => match v.parse::<f64>() {
                    Ok(v) => v,
                    Err(_) => continue,
                },
                None => continue,
            };
            if let (true, Ok(count)) = (critical, count.trim().parse::<f64>()) {
                let entry = buckets.entry(le.to_bits()).or_insert((le, 0));
                entry.1 += count as u64;
            }
        }
        let mut v: Vec<(f64, u64)> = buckets.into_values().collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        Self(v)
    }

    fn since(&self, earlier: &Self) -> Self {
        Self(
            self.0
                .iter()
                .map(|(le, n)| {
                    let before = earlier
                        .0
                        .iter()
                        .find(|(l, _)| l == le)
                        .map_or(0, |(_, n)| *n);
                    (*le, n.saturating_sub(before))
                })
                .collect(),
        )
    }

    fn total(&self) -> u64 {
        self.0.last().map_or(0, |(_, n)| *n)
    }

    /// Seconds; linear within the bucket that holds the quantile.
    fn quantile(&self, q: f64) -> f64 {
        let target = q * self.total() as f64;
        let (mut lower, mut below) = (0.0, 0u64);
        for (le, n) in &self.0 {
            if *n as f64 >= target && *n > below {
                if le.is_infinite() {
                    return lower;
                }
                return lower + (le - lower) * (target - below as f64) / (*n - below) as f64;
            }
            lower = *le;
            below = *n;
        }
        lower
    }
}

async fn critical_histogram(client: &reqwest::Client, base: &str) -> Option<Histogram> {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    Some(Histogram::parse(&text))
}

/// Runs `phase` against the service at `base` (process `pid`) and adds the
/// service's own view of it and the CPU time it cost.
async fn with_server_view(
    client: &reqwest::Client,
    (base, pid): (&str, u32),
    phase: impl std::future::Future<Output = PhaseResult>,
) -> PhaseResult {
    let before = critical_histogram(client, base).await;
    let cpu_before = CpuMark::now(pid);
    let mut result = phase.await;
    let cpu_after = CpuMark::now(pid);
    let after = critical_histogram(client, base).await;
    result.server = before.zip(after).map(|(b, a)| a.since(&b));
    result.cpu = cpu_before.zip(cpu_after).map(|(b, a)| a.since(b));
    result
}

/// Closed loop: `concurrency` workers, each sending its next request when the
/// previous one is answered, for `secs` or `max` requests.
async fn closed_loop(
    name: &str,
    material: Arc<Material>,
    concurrency: usize,
    secs: u64,
    max: usize,
    low_share: f64,
) -> PhaseResult {
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let material = material.clone();
            let next = next.clone();
            tokio::spawn(async move {
                let mut samples = Vec::new();
                while Instant::now() < deadline {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= max {
                        break;
                    }
                    samples.push(
                        material
                            .send(material.route(i, low_share), i, Instant::now())
                            .await,
                    );
                }
                samples
            })
        })
        .collect();
    let mut samples = Vec::new();
    for w in workers {
        if let Ok(s) = w.await {
            samples.extend(s);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    PhaseResult {
        name: name.to_owned(),
        secs,
        send_secs: secs,
        samples,
        server: None,
        cpu: None,
    }
}

/// Open loop: requests sent on a fixed schedule of `rps` per second, however
/// many are still unanswered, for `secs` or `max` requests.
async fn open_loop(
    name: &str,
    material: Arc<Material>,
    rps: f64,
    secs: u64,
    max: usize,
    low_share: f64,
) -> PhaseResult {
    let total = ((rps * secs as f64) as usize).min(max);
    let period = Duration::from_secs_f64(1.0 / rps.max(1.0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        // A fixed schedule: a late generator catches up in a burst, and the
        // lateness counts in each request's latency.
        let scheduled = started + period * i as u32;
        tokio::time::sleep_until(scheduled.into()).await;
        let material = material.clone();
        tasks.push(tokio::spawn(async move {
            material
                .send(material.route(i, low_share), i, scheduled)
                .await
        }));
    }
    let send_secs = started.elapsed().as_secs_f64();
    let mut samples = Vec::with_capacity(total);
    for t in tasks {
        if let Ok(s) = t.await {
            samples.push(s);
        }
    }
    PhaseResult {
        name: name.to_owned(),
        secs: started.elapsed().as_secs_f64(),
        send_secs,
        samples,
        server: None,
        cpu: None,
    }
}

pub async fn run(args: Args) -> BenchResult<()> {
    if !(0.0..=0.9).contains(&args.low_share)
        || args.overload < 1.0
        || args.secs == 0
        || args.concurrency == 0
    {
        return Err(
            "--low-share must be within 0..0.9, --overload at least 1, --secs and --concurrency above 0"
                .into(),
        );
    }
    let queue_bin = match &args.queue_bin {
        Some(path) => path.clone(),
        None => std::env::current_exe()?
            .parent()
            .map(|d| d.join("queue"))
            .ok_or("cannot locate the queue binary")?,
    };
    if !queue_bin.exists() {
        return Err(format!(
            "{} not found: cargo build --release -p queue-cli first, or pass --queue-bin",
            queue_bin.display()
        )
        .into());
    }
    let db = ScratchDb::create("queue_bench", 2).await?;
    let result = run_in(&args, &queue_bin, &db).await;
    db.drop_db().await?;
    result
}

/// Every shedding level out of reach: shedding off.
const UNLIMITED: &str = "1000000";

/// The service's settings, as the environment of `queue serve`; `None`:
/// shedding off.
fn settings(max_in_flight: Option<usize>, keys: &Keys, dir: &Path) -> Vec<(String, String)> {
    let mut settings: Vec<(String, String)> = [
        ("QUEUE_DEV", "1".to_owned()),
        // Dev mode never writes into the working directory: every key is
        // given, and the dev key directory is the scratch one.
        ("QUEUE_DEV_KEY_DIR", dir.join("keys").display().to_string()),
        ("QUEUE_MAC_KEYS", keys.mac.clone()),
        ("QUEUE_CHECKPOINT_KEY", keys.checkpoint.clone()),
        ("QUEUE_JWT_KEYS", keys.jwt.clone()),
        ("QUEUE_RP_ID", "localhost".to_owned()),
        ("QUEUE_RP_ORIGIN", ORIGIN.to_owned()),
        ("QUEUE_MAILER_DIR", dir.join("mail").display().to_string()),
        ("QUEUE_LOG", "warn".to_owned()),
        ("QUEUE_RATE_LIMIT_PER_ADDRESS", "1000000".to_owned()),
        ("QUEUE_RATE_LIMIT_PER_ACCOUNT", "1000000".to_owned()),
        (
            "QUEUE_RATE_LIMIT_REGISTER_PER_ADDRESS",
            "1000000".to_owned(),
        ),
        ("QUEUE_RATE_LIMIT_REGISTER_PER_EMAIL", "1000000".to_owned()),
        ("QUEUE_RATE_LIMIT_PER_SERVICE", "10000000".to_owned()),
        ("QUEUE_SERVICE_TOKEN_BENCH", TOKEN.to_owned()),
        (
            "QUEUE_SERVICE_SCOPES_BENCH",
            "audit:write,audit:read,admin".to_owned(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    match max_in_flight {
        Some(max) => settings.push(("QUEUE_MAX_IN_FLIGHT".to_owned(), max.to_string())),
        None => {
            for var in [
                "QUEUE_MAX_IN_FLIGHT",
                "QUEUE_SHED_LOW_PAST_URGENT",
                "QUEUE_SHED_NORMAL_PAST_URGENT",
            ] {
                settings.push((var.to_owned(), UNLIMITED.to_owned()));
            }
            settings.push(("QUEUE_SHED_LOW_LATENCY_PCT".to_owned(), "0".to_owned()));
        }
    }
    settings
}

/// Throwaway keys, the same for both instances (they share one store).
struct Keys {
    mac: String,
    checkpoint: String,
    jwt: String,
}

impl Keys {
    fn generate() -> BenchResult<Self> {
        let mut mac = [0u8; 32];
        mac[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        mac[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        Ok(Self {
            mac: MacKeys::single("bench", mac.to_vec())?.to_spec(),
            checkpoint: CheckpointSigner::generate("bench.queue/ledger")?.to_private_spec(),
            jwt: queue_api::auth::jwt::JwtKeySet::generate("bench")?.to_spec(),
        })
    }
}

/// The `queue serve` children and their scratch directory (keys, mail,
/// logs): the children are killed and the directory removed when this is
/// dropped, whether the run succeeded or not.
struct Services {
    bin: PathBuf,
    database_url: url::Url,
    dir: PathBuf,
    keys: Keys,
    children: Vec<(String, Child)>,
}

impl Drop for Services {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A loopback port nobody listens on right now (the child binds it; a port
/// taken in between makes the child fail, and `start` tries another).
fn free_port() -> BenchResult<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Services {
    fn new(bin: &Path, scratch: &ScratchDb) -> BenchResult<Self> {
        let raw = std::env::var("DATABASE_URL").map_err(|_| "DATABASE_URL is not set")?;
        let mut database_url = url::Url::parse(&raw)?;
        database_url.set_path(&format!("/{}", scratch.name));
        let dir = std::env::temp_dir().join(format!(
            "queue-bench-load-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(dir.join("mail"))?;
        Ok(Self {
            bin: bin.to_owned(),
            database_url,
            dir,
            keys: Keys::generate()?,
            children: Vec::new(),
        })
    }

    /// Starts `queue serve` as `name` and waits for its `/readyz`; returns
    /// its base URL and process id.
    async fn start(
        &mut self,
        name: &str,
        max_in_flight: Option<usize>,
        extra: &[(String, String)],
        client: &reqwest::Client,
    ) -> BenchResult<(String, u32)> {
        let mut url = self.database_url.clone();
        url.query_pairs_mut().append_pair("application_name", name);
        let mut env = settings(max_in_flight, &self.keys, &self.dir);
        env.extend(extra.iter().cloned());
        env.push(("DATABASE_URL".to_owned(), url.to_string()));
        let log_path = self.dir.join(format!("{name}.log"));
        for _attempt in 0..5 {
            let port = free_port()?;
            let mut cmd = Command::new(&self.bin);
            cmd.arg("serve")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(File::create(&log_path)?);
            // Only the settings given here: none leaks in from the caller's shell.
            for (k, _) in std::env::vars() {
                if k.starts_with("QUEUE_") || k.starts_with("FLAG_") || k.starts_with("FOUNDERS_") {
                    cmd.env_remove(k);
                }
            }
            cmd.envs(env.iter().map(|(k, v)| (k, v)))
                .env("QUEUE_LISTEN", format!("127.0.0.1:{port}"));
            let child = cmd.spawn()?;
            let pid = child.id();
            self.children.push((name.to_owned(), child));
            let base = format!("http://127.0.0.1:{port}");
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if let Ok(r) = client.get(format!("{base}/readyz")).send().await {
                    if r.status().is_success() {
                        eprintln!("{name}: queue serve (pid {pid}) ready on {base}");
                        return Ok((base, pid));
                    }
                }
                let exited = match self.children.last_mut() {
                    Some((_, child)) => child.try_wait()?,
                    None => None,
                };
                if let Some(status) = exited {
                    self.children.pop();
                    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                    if log.contains("cannot listen") {
                        break; // the port was taken in between: another one
                    }
                    return Err(format!("{name}: queue serve exited ({status}): {log}").into());
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "{name}: not ready after 60 s (log: {})",
                        log_path.display()
                    )
                    .into());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Err(format!("{name}: no free loopback port after 5 tries").into())
    }
}

/// Lowers this process's CPU priority (every thread: Linux niceness is per
/// thread, and the runtime's workers already exist). Best effort, printed.
/// Children started before this keep their priority.
fn lower_own_priority(nice: u8) {
    let pid = std::process::id().to_string();
    let mut ids: Vec<String> = std::fs::read_dir("/proc/self/task")
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    if ids.is_empty() {
        ids.push(pid.clone());
    }
    match Command::new("renice")
        .args(["-n", &nice.to_string(), "-p"])
        .args(&ids)
        .output()
    {
        Ok(out) if out.status.success() => eprintln!(
            "load generator (pid {pid}, {} threads) reniced to +{nice}; the queue serve children and PostgreSQL keep their priority",
            ids.len()
        ),
        Ok(out) => eprintln!(
            "renice of the load generator failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => eprintln!("renice of the load generator not run: {e}"),
    }
}

/// One signed login per customer, against `base`, for the next phase.
async fn sign_logins(
    client: &reqwest::Client,
    base: &str,
    customers: &mut [Customer],
) -> BenchResult<Vec<Value>> {
    let mut bodies = Vec::with_capacity(customers.len());
    for customer in customers.iter_mut() {
        bodies.push(assertion(client, base, customer).await?);
    }
    Ok(bodies)
}

async fn run_in(args: &Args, queue_bin: &Path, scratch: &ScratchDb) -> BenchResult<()> {
    queue_eventstore::MIGRATOR.run(&scratch.pool).await?;
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(1024)
        .build()?;
    let mut services = Services::new(queue_bin, scratch)?;
    // One after the other: the second finds the store migrated.
    let (off_base, off_pid) = services
        .start("queue-bench-off", None, &[], &client)
        .await?;
    let on_env: Vec<(String, String)> =
        std::iter::once(("QUEUE_SHED_HOLD_MS".to_owned(), args.hold_ms.to_string()))
            .chain(args.on_env.iter().cloned())
            .collect();
    let (on_base, on_pid) = services
        .start("queue-bench-on", Some(args.max_in_flight), &on_env, &client)
        .await?;
    if args.nice > 0 {
        lower_own_priority(args.nice);
    }

    eprintln!("registering {} customers…", args.customers);
    let mut customers = register_all(&client, &off_base, args.customers, args.concurrency).await?;
    let customer_ids: Vec<String> = customers
        .iter()
        .filter_map(|c| uuid::Uuid::from_slice(&c.user_handle).ok())
        .map(|u| u.to_string())
        .collect();
    // Every customer logs in once up front: refresh tokens for the mix.
    let first_logins = sign_logins(&client, &off_base, &mut customers).await?;
    let mut refresh_tokens = Vec::new();
    for body in first_logins {
        let tokens = crate::http::post_json(
            &client,
            format!("{off_base}/api/v1/auth/webauthn/login/complete"),
            body,
        )
        .await?;
        if let Some(t) = tokens["refresh_token"].as_str() {
            refresh_tokens.push(t.to_owned());
        }
    }
    let mut phases = Phases {
        client: client.clone(),
        customers,
        customer_ids,
        refresh_tokens,
        secs: args.secs,
        max_requests: args.max_requests,
        pids: vec![(off_base.clone(), off_pid), (on_base.clone(), on_pid)],
    };
    let mut results = Vec::new();

    eprintln!("phase 1: unloaded CRITICAL, one at a time…");
    let unloaded = phases
        .run(
            &on_base,
            "unloaded: CRITICAL only, 1 in flight, shedding on".to_owned(),
            Pace::Closed { concurrency: 1 },
            0.0,
        )
        .await?;
    results.push(unloaded);

    eprintln!("phase 2: sustainable rate, closed loop…");
    let sustainable = phases
        .run(
            &off_base,
            format!(
                "sustainable: mix ({:.0}% LOW), {} in flight, shedding off",
                args.low_share * 100.0,
                args.concurrency
            ),
            Pace::Closed {
                concurrency: args.concurrency,
            },
            args.low_share,
        )
        .await?;
    let sustainable_rps = rate(
        sustainable
            .samples
            .iter()
            .filter(|s| (200..300).contains(&s.status))
            .count() as u64,
        sustainable.secs,
    );
    results.push(sustainable);

    let sustainable_on = phases
        .run(
            &on_base,
            format!(
                "sustainable: mix, {} in flight, shedding on (QUEUE_MAX_IN_FLIGHT={})",
                args.concurrency, args.max_in_flight
            ),
            Pace::Closed {
                concurrency: args.concurrency,
            },
            args.low_share,
        )
        .await?;
    results.push(sustainable_on);

    // No overload: the mix on a schedule below the sustainable rate, where
    // shedding should refuse little LOW work.
    let calm_rps = sustainable_rps * args.calm;
    for (label, base) in [("shedding off", &off_base), ("shedding on", &on_base)] {
        eprintln!("no overload: mix at {calm_rps:.0} req/s, {label}…");
        let r = phases
            .run(
                base,
                format!(
                    "no overload: mix ({:.0}% LOW) at {calm_rps:.0} req/s ({:.2}x sustainable), open loop, {label}",
                    args.low_share * 100.0,
                    args.calm
                ),
                Pace::Open { rps: calm_rps },
                args.low_share,
            )
            .await?;
        results.push(r);
    }

    // The overload comes from LOW traffic (a reporting storm): CRITICAL keeps
    // its sustainable rate and LOW fills the rest up to `overload` × the
    // sustainable rate. A last phase overloads with the same mix, where the
    // CRITICAL demand alone may exceed what the machine can do.
    let overload_rps = sustainable_rps * args.overload;
    let storm_low_share = 1.0 - (1.0 - args.low_share) / args.overload;
    let on_label = format!("shedding on (QUEUE_MAX_IN_FLIGHT={})", args.max_in_flight);
    // What CRITICAL's own load costs it: CRITICAL alone at the rate it keeps
    // in the storm. Shedding can protect CRITICAL from LOW, not from itself.
    let critical_rps = sustainable_rps * (1.0 - args.low_share);
    eprintln!("CRITICAL alone at {critical_rps:.0} req/s…");
    let alone = phases
        .run(
            &on_base,
            format!(
                "CRITICAL alone at its storm rate: {critical_rps:.0} req/s, open loop, {on_label}"
            ),
            Pace::Open { rps: critical_rps },
            0.0,
        )
        .await?;
    results.push(alone);
    for (label, base, low_share, mix) in [
        (
            "shedding off".to_owned(),
            &off_base,
            storm_low_share,
            "LOW storm",
        ),
        (on_label.clone(), &on_base, storm_low_share, "LOW storm"),
        (on_label, &on_base, args.low_share, "same mix"),
    ] {
        eprintln!("overload at {overload_rps:.0} req/s ({mix}), {label}…");
        let r = phases
            .run(
                base,
                format!(
                    "overload ({mix}, {:.0}% LOW): {overload_rps:.0} req/s ({:.1}x sustainable), open loop, {label}",
                    low_share * 100.0,
                    args.overload
                ),
                Pace::Open { rps: overload_rps },
                low_share,
            )
            .await?;
        results.push(r);
    }
    // The machine is shared: measure the unloaded reference again at the end
    // and hold the overload to the better (lower) of the two.
    eprintln!("unloaded CRITICAL again…");
    let unloaded_again = phases
        .run(
            &on_base,
            "unloaded again, after the overload phases".to_owned(),
            Pace::Closed { concurrency: 1 },
            0.0,
        )
        .await?;
    results.push(unloaded_again);
    drop(services);

    println!(
        "HTTP over TCP on 127.0.0.1 to two queue serve processes (shedding off / on; 16 pool connections each), {} customers, {} s per phase; shedding-on settings: QUEUE_MAX_IN_FLIGHT={}{}",
        args.customers,
        args.secs,
        args.max_in_flight,
        on_env
            .iter()
            .map(|(k, v)| format!(" {k}={v}"))
            .collect::<String>()
    );
    for r in &results {
        r.print();
    }
    // The phases in the order they ran.
    let [unloaded, _, _, calm_off, calm_on, alone, storm_off, storm_on, same_mix, unloaded_again] =
        &results[..]
    else {
        return Err("a phase is missing".into());
    };
    let server_p99 = |r: &PhaseResult| {
        r.server
            .as_ref()
            .map_or(f64::NAN, |h| h.quantile(0.99) * 1e3)
    };
    let (calm_low_off, calm_low_on) = (calm_off.low(), calm_on.low());
    println!(
        "no overload ({:.2}x sustainable): LOW served {} of {} with shedding on ({:.0}%; {} with shedding off); CRITICAL p99 {:.2} ms on, {:.2} ms off",
        args.calm,
        calm_low_on.ok,
        calm_low_on.sent,
        100.0 * calm_low_on.ok as f64 / calm_low_on.sent.max(1) as f64,
        calm_low_off.ok,
        calm_on.critical().p99.as_secs_f64() * 1e3,
        calm_off.critical().p99.as_secs_f64() * 1e3,
    );
    println!(
        "as the service timed CRITICAL (p99): unloaded {:.1} / {:.1} ms, alone {:.1} ms, LOW storm off {:.1} ms, on {:.1} ms, same mix on {:.1} ms",
        server_p99(unloaded),
        server_p99(unloaded_again),
        server_p99(alone),
        server_p99(storm_off),
        server_p99(storm_on),
        server_p99(same_mix),
    );
    let unloaded_p99 = unloaded.critical().p99.min(unloaded_again.critical().p99);
    let alone = alone.critical();
    let off = storm_off.critical();
    let on = storm_on.critical();
    let low_on = storm_on.low();
    let same_mix = same_mix.critical();
    let low_shed = low_on.by_code.get("429 overloaded").copied().unwrap_or(0);
    let ratio = |d: Duration| d.as_secs_f64() / unloaded_p99.as_secs_f64().max(1e-9);
    println!(
        "generator lateness counts in every p99 below; from the actual send (lateness left out) the LOW-storm CRITICAL p99 is {:.2} ms with shedding on, {:.2} ms for CRITICAL alone",
        on.p99_from_send.as_secs_f64() * 1e3,
        alone.p99_from_send.as_secs_f64() * 1e3,
    );
    println!(
        "LOW storm vs CRITICAL alone at the same CRITICAL rate: p99 {:.2} ms vs {:.2} ms ({:.1}x); within 2x: {}",
        on.p99.as_secs_f64() * 1e3,
        alone.p99.as_secs_f64() * 1e3,
        on.p99.as_secs_f64() / alone.p99.as_secs_f64().max(1e-9),
        if on.p99.as_secs_f64() <= 2.0 * alone.p99.as_secs_f64() { "yes" } else { "no" }
    );
    println!(
        "same-mix overload, shedding on: CRITICAL p99 {:.2} ms ({:.1}x unloaded), {} of {} CRITICAL shed",
        same_mix.p99.as_secs_f64() * 1e3,
        ratio(same_mix.p99),
        same_mix.by_code.get("429 overloaded").copied().unwrap_or(0),
        same_mix.sent
    );
    println!(
        "verdict (LOW storm): CRITICAL p99 unloaded {:.2} ms (the lower of the two unloaded phases); under {:.1}x overload {:.2} ms ({:.1}x) with shedding off, {:.2} ms ({:.1}x) with shedding on; LOW shed {low_shed} of {} ({:.0}%); CRITICAL shed {} of {}; within 2x: {}",
        unloaded_p99.as_secs_f64() * 1e3,
        args.overload,
        off.p99.as_secs_f64() * 1e3,
        ratio(off.p99),
        on.p99.as_secs_f64() * 1e3,
        ratio(on.p99),
        low_on.sent,
        100.0 * low_shed as f64 / low_on.sent.max(1) as f64,
        on.by_code.get("429 overloaded").copied().unwrap_or(0),
        on.sent,
        if ratio(on.p99) <= 2.0 { "yes" } else { "no" }
    );
    Ok(())
}

/// How a phase sends its requests.
#[derive(Clone, Copy)]
enum Pace {
    /// `concurrency` workers, each sending when its previous one is answered.
    Closed { concurrency: usize },
    /// On a fixed schedule of `rps` per second, answered or not.
    Open { rps: f64 },
}

/// What every phase draws on: the customers (one fresh login each per
/// phase) and the refresh tokens (handed back after each phase).
struct Phases {
    client: reqwest::Client,
    customers: Vec<Customer>,
    customer_ids: Vec<String>,
    refresh_tokens: Vec<String>,
    secs: u64,
    max_requests: usize,
    /// Each service's base URL and process id.
    pids: Vec<(String, u32)>,
}

impl Phases {
    /// Signs one login per customer against `base`, runs one phase there
    /// with the service's own view of it, and takes the refresh tokens back.
    async fn run(
        &mut self,
        base: &str,
        name: String,
        pace: Pace,
        low_share: f64,
    ) -> BenchResult<PhaseResult> {
        let pid = self
            .pids
            .iter()
            .find(|(b, _)| b == base)
            .map(|(_, pid)| *pid)
            .ok_or("no such service")?;
        let assertions = sign_logins(&self.client, base, &mut self.customers).await?;
        let material = Arc::new(Material {
            client: self.client.clone(),
            base: base.to_owned(),
            assertions: Mutex::new(assertions),
            refresh_tokens: Mutex::new(std::mem::take(&mut self.refresh_tokens)),
            customer_ids: self.customer_ids.clone(),
            next_key: AtomicU64::new(key_base()),
        });
        let result = match pace {
            Pace::Closed { concurrency } => {
                with_server_view(
                    &self.client,
                    (base, pid),
                    closed_loop(
                        &name,
                        material.clone(),
                        concurrency,
                        self.secs,
                        self.max_requests,
                        low_share,
                    ),
                )
                .await
            }
            Pace::Open { rps } => {
                with_server_view(
                    &self.client,
                    (base, pid),
                    open_loop(
                        &name,
                        material.clone(),
                        rps,
                        self.secs,
                        self.max_requests,
                        low_share,
                    ),
                )
                .await
            }
        };
        self.refresh_tokens = std::mem::take(&mut *lock(&material.refresh_tokens));
        Ok(result)
    }
}

/// Idempotency keys must not repeat across phases: each phase's counter
/// starts at the clock in microseconds.
fn key_base() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}
