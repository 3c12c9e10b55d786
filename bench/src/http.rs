//! HTTP throughput and latency of `POST /api/v1/auth/webauthn/login/complete`
//! and `POST /api/v1/auth/session/refresh` under concurrent load, through a
//! real TCP server, next to a baseline measured in the same run: a plain
//! axum + sqlx handler doing the same number of row inserts per request in
//! one transaction (login/complete appends 2 events, refresh 1).
//!
//! Every login uses its own customer (a software passkey each), so the
//! assertions' sign counters never race; begin and signing are not timed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::routing::post;
use axum::Router;
use futures::stream::{self, StreamExt};
use queue_api::mail::mailer::LogMailer;
use queue_api::{AppState, Config, ServiceClock};
use queue_eventstore::{MacKeys, SharedMacKeys};
use serde_json::{json, Value};
use sqlx::PgPool;
use url::Url;
use webauthn_authenticator_rs::softpasskey::SoftPasskey;
use webauthn_authenticator_rs::WebauthnAuthenticator;
use webauthn_rs_proto::{CreationChallengeResponse, RequestChallengeResponse};

use crate::support::{rate, BenchResult, ScratchDb};

#[derive(clap::Args)]
pub struct Args {
    /// Logins (one customer each) and as many refreshes.
    #[arg(long, default_value_t = 1_000)]
    logins: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Database connections of the service (and of the baseline).
    #[arg(long, default_value_t = 16)]
    connections: u32,
    /// History growth: uses recorded on the long-used passkey (0: skip the case).
    #[arg(long, default_value_t = 10_000)]
    history_uses: usize,
    /// History growth: rotations of the long-lived session.
    #[arg(long, default_value_t = 1_000)]
    history_rotations: usize,
    /// History growth: timed requests of each kind (one at a time, alternating).
    #[arg(long, default_value_t = 200)]
    history_samples: usize,
    /// Run only the history-growth case.
    #[arg(long)]
    history_only: bool,
}

pub(crate) const ORIGIN: &str = "http://localhost:8080";

pub(crate) struct Stats {
    count: usize,
    secs: f64,
    p50: Duration,
    p99: Duration,
}

impl Stats {
    pub(crate) fn from(mut latencies: Vec<Duration>, secs: f64) -> Self {
        latencies.sort();
        let at = |q: f64| {
            let i = ((latencies.len() as f64 - 1.0) * q).round() as usize;
            latencies.get(i).copied().unwrap_or_default()
        };
        Self {
            count: latencies.len(),
            secs,
            p50: at(0.50),
            p99: at(0.99),
        }
    }

    pub(crate) fn rps(&self) -> f64 {
        rate(self.count as u64, self.secs)
    }

    pub(crate) fn line(&self) -> String {
        format!(
            "{:>5} req  {:>8.0} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms",
            self.count,
            self.rps(),
            self.p50.as_secs_f64() * 1e3,
            self.p99.as_secs_f64() * 1e3
        )
    }
}

/// POSTs every body to `url` with `concurrency` in flight; all must answer `expect`.
pub(crate) async fn drive(
    client: &reqwest::Client,
    url: &str,
    bodies: Vec<Value>,
    concurrency: usize,
    expect: u16,
) -> BenchResult<(Stats, Vec<Value>)> {
    let started = Instant::now();
    let results: Vec<BenchResult<(Duration, Value)>> = stream::iter(bodies)
        .map(|body| {
            let client = client.clone();
            let url = url.to_owned();
            async move {
                let t = Instant::now();
                let response = client.post(&url).json(&body).send().await?;
                let status = response.status().as_u16();
                let value: Value = response.json().await.unwrap_or(Value::Null);
                let elapsed = t.elapsed();
                if status != expect {
                    return Err(format!("{url}: {status} {value}").into());
                }
                Ok((elapsed, value))
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let secs = started.elapsed().as_secs_f64();
    let mut latencies = Vec::with_capacity(results.len());
    let mut values = Vec::with_capacity(results.len());
    for result in results {
        let (latency, value) = result?;
        latencies.push(latency);
        values.push(value);
    }
    Ok((Stats::from(latencies, secs), values))
}

pub(crate) struct Customer {
    pub(crate) passkey: SoftPasskey,
    pub(crate) email: String,
    pub(crate) user_handle: Vec<u8>,
}

pub(crate) async fn post_json(
    client: &reqwest::Client,
    url: String,
    body: Value,
) -> BenchResult<Value> {
    let response = client.post(&url).json(&body).send().await?;
    let status = response.status();
    let value: Value = response.json().await?;
    if !status.is_success() {
        return Err(format!("{url}: {status} {value}").into());
    }
    Ok(value)
}

/// Registers `count` customers, `concurrency` at a time.
pub(crate) async fn register_all(
    client: &reqwest::Client,
    base: &str,
    count: usize,
    concurrency: usize,
) -> BenchResult<Vec<Customer>> {
    stream::iter(0..count)
        .map(|i| async move { register(client, base, i).await })
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

pub(crate) async fn register(
    client: &reqwest::Client,
    base: &str,
    i: usize,
) -> BenchResult<Customer> {
    let email = format!("bench{i}@example.com");
    let begin = post_json(
        client,
        format!("{base}/api/v1/auth/webauthn/register/begin"),
        json!({"email": email, "display_name": format!("Bench {i}")}),
    )
    .await?;
    let mut ccr: CreationChallengeResponse = serde_json::from_value(begin["options"].clone())?;
    // SoftPasskey cannot store resident keys and refuses the flag.
    if let Some(selection) = ccr.public_key.authenticator_selection.as_mut() {
        selection.require_resident_key = false;
        selection.resident_key = None;
    }
    let user_handle = ccr.public_key.user.id.to_vec();
    let mut passkey = SoftPasskey::new(true);
    let credential = passkey
        .do_registration(Url::parse(ORIGIN)?, ccr)
        .map_err(|e| format!("softpasskey: {e:?}"))?;
    post_json(
        client,
        format!("{base}/api/v1/auth/webauthn/register/complete"),
        json!({"challenge_id": begin["challenge_id"], "credential": credential}),
    )
    .await?;
    Ok(Customer {
        passkey,
        email,
        user_handle,
    })
}

/// A login/complete body: begin, then sign (both untimed).
pub(crate) async fn assertion(
    client: &reqwest::Client,
    base: &str,
    customer: &mut Customer,
) -> BenchResult<Value> {
    let begin = post_json(
        client,
        format!("{base}/api/v1/auth/webauthn/login/begin"),
        json!({"email": customer.email}),
    )
    .await?;
    let rcr: RequestChallengeResponse = serde_json::from_value(begin["options"].clone())?;
    let mut response = customer
        .passkey
        .do_authentication(Url::parse(ORIGIN)?, rcr)
        .map_err(|e| format!("softpasskey: {e:?}"))?;
    response.response.user_handle = Some(customer.user_handle.clone());
    Ok(json!({"challenge_id": begin["challenge_id"], "credential": response}))
}

/// `count` passkey logins (one new customer each; registering and signing
/// untimed), `concurrency` in flight: their stats and token answers.
pub(crate) async fn passkey_logins(
    client: &reqwest::Client,
    base: &str,
    count: usize,
    concurrency: usize,
) -> BenchResult<(Stats, Vec<Value>)> {
    eprintln!("registering {count} customers…");
    let mut customers = register_all(client, base, count, concurrency).await?;
    eprintln!("preparing {count} signed assertions…");
    let mut bodies = Vec::with_capacity(customers.len());
    for customer in &mut customers {
        bodies.push(assertion(client, base, customer).await?);
    }
    drive(
        client,
        &format!("{base}/api/v1/auth/webauthn/login/complete"),
        bodies,
        concurrency,
        200,
    )
    .await
}

async fn baseline_insert(
    State(pool): State<PgPool>,
    Path(rows): Path<usize>,
) -> Result<axum::Json<Value>, (axum::http::StatusCode, String)> {
    let fail = |e: sqlx::Error| (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    let mut tx = pool.begin().await.map_err(fail)?;
    for i in 0..rows {
        sqlx::query("INSERT INTO bench_http_baseline (stream, payload) VALUES ($1, $2)")
            .bind(uuid::Uuid::new_v4().to_string())
            .bind(json!({"SessionRefreshed": {
                "previous": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                "new": "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752",
                "grace_retry": false, "at": "2026-11-25T16:22:14.123456Z", "row": i}}))
            .execute(&mut *tx)
            .await
            .map_err(fail)?;
    }
    tx.commit().await.map_err(fail)?;
    Ok(axum::Json(json!({"ok": true})))
}

pub(crate) async fn serve(router: Router) -> BenchResult<(String, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let service = router.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(e) = axum::serve(listener, service).await {
            eprintln!("queue-bench: server: {e}");
        }
    });
    Ok((format!("http://{addr}"), task))
}

pub async fn run(args: Args) -> BenchResult<()> {
    let db = ScratchDb::create("queue_bench", args.connections).await?;
    let result = run_in(&args, &db.pool).await;
    db.drop_db().await?;
    result
}

/// The service under test on `pool` (migrated here), with rate limits out
/// of the way and `extra` settings; its MAC keys.
pub(crate) async fn queue_state(
    pool: &PgPool,
    extra: &[(&str, String)],
) -> BenchResult<(AppState, SharedMacKeys)> {
    queue_eventstore::MIGRATOR.run(pool).await?;
    let mail_dir = std::env::temp_dir().join(format!(
        "queue-bench-mail-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let jwt = queue_api::auth::jwt::JwtKeySet::generate("bench")?.to_spec();
    let settings: HashMap<&str, String> = [
        ("QUEUE_DEV", "1".to_owned()),
        ("QUEUE_RP_ID", "localhost".to_owned()),
        ("QUEUE_RP_ORIGIN", ORIGIN.to_owned()),
        ("QUEUE_JWT_KEYS", jwt),
        ("QUEUE_MAILER_DIR", mail_dir.display().to_string()),
        ("QUEUE_RATE_LIMIT_PER_ADDRESS", "1000000".to_owned()),
        ("QUEUE_RATE_LIMIT_PER_ACCOUNT", "1000000".to_owned()),
        (
            "QUEUE_RATE_LIMIT_REGISTER_PER_ADDRESS",
            "1000000".to_owned(),
        ),
        ("QUEUE_RATE_LIMIT_REGISTER_PER_EMAIL", "1000000".to_owned()),
    ]
    .into_iter()
    .chain(extra.iter().cloned())
    .collect();
    let names: Vec<&str> = settings.keys().copied().collect();
    let config = Config::from_lookup_with_names(|k| settings.get(k).cloned(), names)?;
    let mac_keys = SharedMacKeys::new(MacKeys::single("bench", vec![9u8; 32])?);
    let state = AppState::with_parts(
        pool.clone(),
        config,
        mac_keys.clone(),
        ServiceClock::new(),
        Arc::new(LogMailer::new(mail_dir)),
    )?;
    Ok((state, mac_keys))
}

async fn run_in(args: &Args, pool: &PgPool) -> BenchResult<()> {
    let (state, mac_keys) = queue_state(pool, &[]).await?;
    let (base, queue_server) = serve(queue_api::app(state)).await?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency * 2)
        .build()?;
    if args.history_uses > 0 {
        history::run(args, &client, &base, pool, mac_keys).await?;
    }
    if args.history_only {
        queue_server.abort();
        return Ok(());
    }

    let (login, sessions) = passkey_logins(&client, &base, args.logins, args.concurrency).await?;
    let refresh_bodies = sessions
        .iter()
        .map(|tokens| json!({"refresh_token": tokens["refresh_token"]}))
        .collect();
    let (refresh, _) = drive(
        &client,
        &format!("{base}/api/v1/auth/session/refresh"),
        refresh_bodies,
        args.concurrency,
        200,
    )
    .await?;
    queue_server.abort();

    sqlx::raw_sql(
        "CREATE TABLE bench_http_baseline (id bigserial PRIMARY KEY, stream text NOT NULL, \
         payload jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(pool)
    .await?;
    let baseline_router = Router::new()
        .route("/insert/{rows}", post(baseline_insert))
        .with_state(pool.clone());
    let (baseline_base, baseline_server) = serve(baseline_router).await?;
    let empty = || (0..args.logins).map(|_| json!({})).collect::<Vec<_>>();
    let (base2, _) = drive(
        &client,
        &format!("{baseline_base}/insert/2"),
        empty(),
        args.concurrency,
        200,
    )
    .await?;
    let (base1, _) = drive(
        &client,
        &format!("{baseline_base}/insert/1"),
        empty(),
        args.concurrency,
        200,
    )
    .await?;
    baseline_server.abort();

    println!(
        "HTTP over TCP on 127.0.0.1, {} in flight, {} service connections",
        args.concurrency, args.connections
    );
    for (name, queue, baseline, rows) in [
        ("login/complete", &login, &base2, 2),
        ("session/refresh", &refresh, &base1, 1),
    ] {
        println!("{name:<16} queue     {}", queue.line());
        println!(
            "{:<16} baseline  {}   (axum + sqlx, {rows} insert(s) in 1 tx)",
            "",
            baseline.line()
        );
        println!(
            "{:<16} ratio     throughput {:.2}x of baseline, p50 {:.1}x, p99 {:.1}x",
            "",
            queue.rps() / baseline.rps().max(1e-9),
            queue.p50.as_secs_f64() / baseline.p50.as_secs_f64().max(1e-9),
            queue.p99.as_secs_f64() / baseline.p99.as_secs_f64().max(1e-9)
        );
    }
    Ok(())
}

/// Flat in history: login with a passkey used `history_uses` times and
/// refresh of a session rotated `history_rotations` times, against fresh
/// ones, one request at a time (a stream's requests are sequential anyway:
/// its sign counter and refresh token change with each), alternating so
/// both see the same machine.
mod history {
    use std::time::{Duration, Instant};

    use queue_domain::types::Email;
    use queue_domain::{Credential, CredentialCommand};
    use queue_eventstore::{Batch, ChainedEventRepository, EventStore, SharedMacKeys, SystemClock};
    use serde_json::{json, Value};
    use sqlx::PgPool;

    use super::{assertion, post_json, register, Args, Customer, Stats};
    use crate::support::BenchResult;

    /// Appends `uses` passkey uses (sign count 0: a counterless
    /// authenticator, as the soft passkey's counter is still 0) through
    /// the domain and the verified store of another instance, so the
    /// service under test has never folded them.
    async fn age_passkey(
        pool: &PgPool,
        keys: SharedMacKeys,
        email: &str,
        uses: usize,
    ) -> BenchResult<()> {
        let store = EventStore::new(ChainedEventRepository::new(
            pool.clone(),
            keys,
            std::sync::Arc::new(SystemClock),
        ));
        let customer = store
            .customer_by_email(&Email::parse(email)?)
            .await?
            .ok_or("the aged customer is not registered")?;
        let mut conn = pool.acquire().await?;
        let credential = store
            .usable_credentials_of(&mut conn, customer)
            .await?
            .pop()
            .ok_or("the aged customer has no passkey")?;
        drop(conn);
        let id = credential.id;
        let mut done = 0;
        while done < uses {
            let mut loaded = store.load::<Credential>(&id).await?;
            let backup_state = loaded
                .aggregate
                .state()
                .map(|s| s.backup_state)
                .unwrap_or(false);
            let mut batch = Batch::new();
            for _ in 0..(uses - done).min(500) {
                let events = loaded
                    .execute(CredentialCommand::RecordUse {
                        sign_count: 0,
                        backup_state,
                        at: chrono::Utc::now(),
                    })
                    .await
                    .map_err(|e| format!("record use: {e}"))?;
                batch.add(&mut loaded, &events)?;
                done += 1;
            }
            store.append(batch).await?;
        }
        Ok(())
    }

    async fn timed_login(
        client: &reqwest::Client,
        base: &str,
        customer: &mut Customer,
    ) -> BenchResult<(Duration, Value)> {
        let (_, complete, tokens) = timed_login_parts(client, base, customer).await?;
        Ok((complete, tokens))
    }

    /// (begin by email + signing, complete, tokens).
    async fn timed_login_parts(
        client: &reqwest::Client,
        base: &str,
        customer: &mut Customer,
    ) -> BenchResult<(Duration, Duration, Value)> {
        let begun = Instant::now();
        let body = assertion(client, base, customer).await?;
        let begin = begun.elapsed();
        let started = Instant::now();
        let tokens = post_json(
            client,
            format!("{base}/api/v1/auth/webauthn/login/complete"),
            body,
        )
        .await?;
        Ok((begin, started.elapsed(), tokens))
    }

    async fn timed_refresh(
        client: &reqwest::Client,
        base: &str,
        token: &Value,
    ) -> BenchResult<(Duration, Value)> {
        let started = Instant::now();
        let tokens = post_json(
            client,
            format!("{base}/api/v1/auth/session/refresh"),
            json!({"refresh_token": token}),
        )
        .await?;
        Ok((started.elapsed(), tokens))
    }

    fn mean_ms(latencies: &[Duration]) -> f64 {
        latencies.iter().map(Duration::as_secs_f64).sum::<f64>() * 1e3
            / latencies.len().max(1) as f64
    }

    fn line(name: &str, latencies: Vec<Duration>) -> (String, f64) {
        let mean = mean_ms(&latencies);
        let secs = latencies.iter().map(Duration::as_secs_f64).sum();
        let stats = Stats::from(latencies, secs);
        (
            format!(
                "{name:<34} mean {mean:>6.2} ms  p50 {:>6.2} ms  p99 {:>6.2} ms",
                stats.p50.as_secs_f64() * 1e3,
                stats.p99.as_secs_f64() * 1e3
            ),
            mean,
        )
    }

    pub(super) async fn run(
        args: &Args,
        client: &reqwest::Client,
        base: &str,
        pool: &PgPool,
        keys: SharedMacKeys,
    ) -> BenchResult<()> {
        let samples = args.history_samples.max(1);
        eprintln!(
            "history: a passkey used {} times, a session rotated {} times…",
            args.history_uses, args.history_rotations
        );
        let mut fresh = register(client, base, 1_000_000).await?;
        let mut aged = register(client, base, 1_000_001).await?;
        let aging = Instant::now();
        age_passkey(pool, keys, &aged.email, args.history_uses).await?;
        eprintln!(
            "  {} uses appended in {:.1} s",
            args.history_uses,
            aging.elapsed().as_secs_f64()
        );
        // The first login with each after the uses were written elsewhere:
        // its begin (by email: the customer's passkeys are loaded) reads the
        // aged stream whole once (nothing cached yet); complete continues
        // the fold that begin left.
        let (first_fresh, _, _) = timed_login_parts(client, base, &mut fresh).await?;
        let (first_aged, _, aged_tokens) = timed_login_parts(client, base, &mut aged).await?;

        let mut token = aged_tokens["refresh_token"].clone();
        for _ in 0..args.history_rotations {
            let (_, tokens) = timed_refresh(client, base, &token).await?;
            token = tokens["refresh_token"].clone();
        }
        // Fresh sessions to refresh once each (created untimed).
        let mut fresh_tokens = Vec::with_capacity(samples);
        for _ in 0..samples {
            let (_, tokens) = timed_login(client, base, &mut fresh).await?;
            fresh_tokens.push(tokens["refresh_token"].clone());
        }

        let (mut login_fresh, mut login_aged) = (Vec::new(), Vec::new());
        let (mut refresh_fresh, mut refresh_aged) = (Vec::new(), Vec::new());
        for fresh_token in &fresh_tokens {
            login_fresh.push(timed_login(client, base, &mut fresh).await?.0);
            login_aged.push(timed_login(client, base, &mut aged).await?.0);
            refresh_fresh.push(timed_refresh(client, base, fresh_token).await?.0);
            let (took, tokens) = timed_refresh(client, base, &token).await?;
            refresh_aged.push(took);
            token = tokens["refresh_token"].clone();
        }
        println!("history growth: one request at a time, {samples} of each, alternating");
        let (a, fresh_login_ms) = line("login, fresh passkey", login_fresh);
        let (b, aged_login_ms) = line(
            &format!("login, passkey used {}x", args.history_uses),
            login_aged,
        );
        let (c, fresh_refresh_ms) = line("refresh, fresh session", refresh_fresh);
        let (d, aged_refresh_ms) = line(
            &format!("refresh, session rotated {}x", args.history_rotations),
            refresh_aged,
        );
        for l in [a, b, c, d] {
            println!("  {l}");
        }
        println!(
            "  ratio aged/fresh (mean latency): login {:.2}x, refresh {:.2}x",
            aged_login_ms / fresh_login_ms.max(1e-9),
            aged_refresh_ms / fresh_refresh_ms.max(1e-9)
        );
        println!(
            "  first login/begin + signing after the uses were written elsewhere (whole stream read once): fresh {:.2} ms, aged {:.2} ms",
            first_fresh.as_secs_f64() * 1e3,
            first_aged.as_secs_f64() * 1e3
        );
        Ok(())
    }
}
