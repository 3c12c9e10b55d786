//! Rate-limit checks: per-process buckets (the baseline) vs buckets shared
//! through Redis (one GCRA Lua call each) vs Redis configured but
//! unreachable (the degraded fallback). Sequential latency (p50/p99) and
//! concurrent throughput, each against the baseline measured in this run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use queue_api::config::{RedisConfig, Secret};
use queue_api::resilience::ratelimit::{RateLimitMode, RateLimiter, SharedCounters};

use crate::support::{rate, BenchResult};

#[derive(clap::Args)]
pub struct Args {
    /// Redis to share the counters through.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Checks per variant and phase.
    #[arg(long, default_value_t = 20_000)]
    checks: u64,
    /// Concurrent callers in the throughput phase.
    #[arg(long, default_value_t = 16)]
    concurrency: u64,
}

struct Numbers {
    p50: Duration,
    p99: Duration,
    per_sec: f64,
}

pub async fn run(args: Args) -> BenchResult<()> {
    let checks = args.checks.clamp(100, 1_000_000);
    let concurrency = args.concurrency.clamp(1, 256);
    println!("load average before: {}", load_average());
    let prefix = format!("queue-bench:{}:", uuid::Uuid::new_v4().simple());
    let shared = counters(&args.redis_url, &prefix)?;
    let unreachable = counters("redis://127.0.0.1:1", &prefix)?;
    wait_for(&shared, RateLimitMode::Shared).await?;
    wait_for(&unreachable, RateLimitMode::Degraded).await?;

    let variants: [(&str, Option<Arc<SharedCounters>>); 3] = [
        ("local (baseline)", None),
        ("shared via Redis", Some(shared)),
        ("Redis unreachable", Some(unreachable)),
    ];
    let mut baseline: Option<Numbers> = None;
    println!(
        "{:<20} {:>10} {:>10} {:>14} {:>8}",
        "variant", "p50", "p99", "checks/s", "ratio"
    );
    for (name, counters) in variants {
        // Limits high enough that every check is allowed: the cost measured
        // is the check, not the 429 path.
        let limiter = Arc::new(RateLimiter::with_shared(
            "bench",
            1_000_000,
            counters.clone(),
        ));
        let numbers = measure(&limiter, checks, concurrency).await?;
        let ratio = baseline
            .as_ref()
            .map(|b| b.per_sec / numbers.per_sec.max(1e-9))
            .unwrap_or(1.0);
        println!(
            "{:<20} {:>8.1}µs {:>8.1}µs {:>14.0} {:>7.1}x",
            name,
            numbers.p50.as_secs_f64() * 1e6,
            numbers.p99.as_secs_f64() * 1e6,
            numbers.per_sec,
            ratio
        );
        if let Some(counters) = &counters {
            println!("  mode afterwards: {}", counters.mode().as_str());
        }
        if baseline.is_none() {
            baseline = Some(numbers);
        }
    }
    println!("(ratio: baseline checks/s over this variant's; higher is slower)");
    println!("load average after: {}", load_average());
    Ok(())
}

fn counters(url: &str, prefix: &str) -> BenchResult<Arc<SharedCounters>> {
    Ok(SharedCounters::new(&RedisConfig {
        url: Secret::new(url.to_owned()),
        prefix: prefix.to_owned(),
        timeout: Duration::from_millis(50),
    })?)
}

async fn wait_for(counters: &Arc<SharedCounters>, mode: RateLimitMode) -> BenchResult<()> {
    counters.supervise();
    let deadline = Instant::now() + Duration::from_secs(5);
    while counters.mode() != mode {
        if Instant::now() > deadline {
            return Err(format!("rate limits did not become {}", mode.as_str()).into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

async fn measure(
    limiter: &Arc<RateLimiter>,
    checks: u64,
    concurrency: u64,
) -> BenchResult<Numbers> {
    // Sequential: latency of one check, distinct keys like distinct clients.
    let mut latencies = Vec::with_capacity(checks as usize);
    for i in 0..checks {
        let key = format!("client-{}", i % 1000);
        let started = Instant::now();
        limiter.check(&key).await?;
        latencies.push(started.elapsed());
    }
    latencies.sort();
    let pick = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q) as usize];
    let (p50, p99) = (pick(0.50), pick(0.99));

    // Concurrent: throughput with `concurrency` callers sharing the limiter.
    let started = Instant::now();
    let per_task = checks / concurrency;
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let limiter = Arc::clone(limiter);
        tasks.push(tokio::spawn(async move {
            for i in 0..per_task {
                let key = format!("client-{t}-{}", i % 100);
                if limiter.check(&key).await.is_err() {
                    return Err("a check was refused");
                }
            }
            Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let per_sec = rate(per_task * concurrency, started.elapsed().as_secs_f64());
    Ok(Numbers { p50, p99, per_sec })
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}
