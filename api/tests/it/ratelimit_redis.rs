//! Rate limits shared through the real Redis at 127.0.0.1:6379 (a unique key
//! prefix per test), and the fallback to per-process limits when Redis is
//! unreachable or goes away mid-run: logins never fail because of Redis.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::json;
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

use crate::helpers::{eventually, Passkey, TestApp};

const REDIS: &str = "redis://127.0.0.1:6379";

fn prefix() -> String {
    format!("queue-test:{}:", uuid::Uuid::new_v4().simple())
}

async fn rate_limits_become(app: &TestApp, mode: &str) {
    eventually(&format!("rate_limits {mode}"), || async {
        let ready = app.get("/readyz").await;
        assert_eq!(ready.status, StatusCode::OK, "{}", ready.text);
        (ready.json["rate_limits"] == mode).then_some(())
    })
    .await;
}

async fn begin(app: &TestApp, email: &str) -> crate::helpers::Response {
    app.post("/api/v1/auth/webauthn/login/begin", json!({"email": email}))
        .await
}

/// login/begin from `client` (the test router's peer is a trusted proxy).
async fn begin_from(app: &TestApp, email: &str, client: &str) -> crate::helpers::Response {
    let request = axum::http::Request::builder()
        .method(axum::http::Method::POST)
        .uri("/api/v1/auth/webauthn/login/begin")
        .header(axum::http::header::CONTENT_TYPE, "application/json")
        .header("x-forwarded-for", client)
        .body(axum::body::Body::from(json!({"email": email}).to_string()))
        .unwrap();
    app.send(request).await
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn two_instances_share_one_limit_through_redis(pool: PgPool) {
    let prefix = prefix();
    let overrides = [
        ("QUEUE_REDIS_URL", REDIS),
        ("QUEUE_REDIS_PREFIX", prefix.as_str()),
        // login/begin is limited per client address (since issue 17 the
        // per-account buckets count failed verifications only).
        ("QUEUE_RATE_LIMIT_PER_ADDRESS", "3"),
        ("QUEUE_TRUSTED_PROXIES", "127.0.0.1/32"),
    ];
    let a = TestApp::with(pool.clone(), &overrides).await;
    let b = TestApp::with(pool.clone(), &overrides).await;
    rate_limits_become(&a, "shared").await;
    rate_limits_become(&b, "shared").await;

    // Three tokens for the address between both instances, not three each.
    for app in [&a, &b, &a] {
        let ok = begin_from(app, "ada@example.com", "203.0.113.5").await;
        assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
    }
    for app in [&b, &a] {
        let limited = begin_from(app, "ada@example.com", "203.0.113.5").await;
        limited.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
        let retry: u64 = limited.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=20).contains(&retry), "Retry-After {retry}");
    }
    // Another address has its own bucket.
    assert_eq!(
        begin_from(&b, "ada@example.com", "198.51.100.5")
            .await
            .status,
        StatusCode::OK
    );

    // The counters are under the prefix, and hold no email address.
    let client = redis::Client::open(REDIS).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        keys.iter()
            .any(|k| k.starts_with(&format!("{prefix}rl:address:"))),
        "{keys:?}"
    );
    assert!(
        keys.iter()
            .all(|k| !k.contains("example.com") && !k.contains("203.0.113")),
        "{keys:?}"
    );
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&keys[0])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 60_000, "counters expire: {ttl}");

    metrics_show(&a, "queue_rate_limits_mode{mode=\"shared\"} 1").await;
    let _: () = redis::cmd("DEL")
        .arg(keys)
        .query_async(&mut conn)
        .await
        .unwrap();
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn an_unreachable_redis_falls_back_to_local_limits_and_logins_succeed(pool: PgPool) {
    let app = TestApp::with(
        pool,
        &[
            ("QUEUE_REDIS_URL", "redis://127.0.0.1:1"),
            ("QUEUE_RATE_LIMIT_PER_ADDRESS", "3"),
        ],
    )
    .await;
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.text);
    assert_eq!(ready.json["rate_limits"], "degraded");

    // A full WebAuthn registration and login work without Redis.
    let mut passkey = Passkey::new();
    app.register(&mut passkey, "ada@example.com").await;
    let tokens = app.login(&mut passkey, "ada@example.com").await;
    assert!(tokens["access_token"].is_string());

    // The per-process limit still holds: the login took two of the
    // address's three tokens (begin and complete).
    assert_eq!(begin(&app, "ada@example.com").await.status, StatusCode::OK);
    begin(&app, "ada@example.com")
        .await
        .assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");

    let ready = app.get("/readyz").await;
    assert_eq!(ready.json["rate_limits"], "degraded");
    metrics_show(&app, "queue_rate_limits_mode{mode=\"degraded\"} 1").await;
    metrics_show(&app, "queue_rate_limit_fallbacks_total").await;
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn without_redis_the_limits_are_local(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let ready = app.get("/readyz").await;
    assert_eq!(ready.json["rate_limits"], "local");
}

/// A TCP proxy in front of Redis that the test can cut and restore, as a
/// network partition would, or freeze (connections stay open, nothing
/// flows), as an overloaded Redis would.
struct Proxy {
    port: u16,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
    frozen: Arc<AtomicBool>,
}

impl Proxy {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let proxy = Self {
            port,
            tasks: Arc::default(),
            frozen: Arc::default(),
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&self, listener: TcpListener) {
        let tasks = Arc::clone(&self.tasks);
        let frozen = Arc::clone(&self.frozen);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                let Ok(outbound) = TcpStream::connect("127.0.0.1:6379").await else {
                    continue;
                };
                let (in_read, in_write) = inbound.into_split();
                let (out_read, out_write) = outbound.into_split();
                for task in [
                    tokio::spawn(pump(in_read, out_write, Arc::clone(&frozen))),
                    tokio::spawn(pump(out_read, in_write, Arc::clone(&frozen))),
                ] {
                    tasks.lock().unwrap().push(task.abort_handle());
                }
            }
        });
        self.tasks.lock().unwrap().push(accept.abort_handle());
    }

    /// Drops every connection and stops listening.
    fn cut(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    async fn restore(&self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        self.serve(listener);
    }

    fn freeze(&self, frozen: bool) {
        self.frozen.store(frozen, Ordering::SeqCst);
    }
}

/// Copies bytes one way; while frozen, holds them back (the connection
/// stays open, so the client waits rather than seeing an error).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let Ok(n) = from.read(&mut buf).await else {
            return;
        };
        if n == 0 {
            return;
        }
        while frozen.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn a_redis_that_stops_answering_costs_one_timeout_then_local_limits(pool: PgPool) {
    let proxy = Proxy::start().await;
    let url = format!("redis://127.0.0.1:{}", proxy.port);
    let prefix = prefix();
    let app = TestApp::with(
        pool,
        &[
            ("QUEUE_REDIS_URL", url.as_str()),
            ("QUEUE_REDIS_PREFIX", prefix.as_str()),
            ("QUEUE_REDIS_TIMEOUT_MS", "50"),
        ],
    )
    .await;
    rate_limits_become(&app, "shared").await;
    let mut passkey = Passkey::new();
    app.register(&mut passkey, "ada@example.com").await;

    // Redis hangs: the login still completes (the check gives up after the
    // timeout and uses the local bucket), and the mode says degraded.
    proxy.freeze(true);
    let tokens = app.login(&mut passkey, "ada@example.com").await;
    assert!(tokens["access_token"].is_string());
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.json["rate_limits"], "degraded");
    for _ in 0..3 {
        assert_eq!(begin(&app, "ada@example.com").await.status, StatusCode::OK);
    }

    // Answers again: shared again, found by the background probe.
    proxy.freeze(false);
    rate_limits_become(&app, "shared").await;
    app.login(&mut passkey, "ada@example.com").await;
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn losing_redis_mid_run_degrades_then_reconnects(pool: PgPool) {
    let proxy = Proxy::start().await;
    let url = format!("redis://127.0.0.1:{}", proxy.port);
    let prefix = prefix();
    // A cut connection fails at once; the call timeout is not what this
    // test is about, and on a loaded machine 50 ms can pass in a healthy
    // call, which then counts in the per-instance bucket and leaves no key.
    let app = TestApp::with(
        pool,
        &[
            ("QUEUE_REDIS_URL", url.as_str()),
            ("QUEUE_REDIS_PREFIX", prefix.as_str()),
            ("QUEUE_REDIS_TIMEOUT_MS", "2000"),
        ],
    )
    .await;
    rate_limits_become(&app, "shared").await;
    assert_eq!(begin(&app, "ada@example.com").await.status, StatusCode::OK);

    proxy.cut();
    // Every request still answers, never with a 500, while Redis is away.
    for _ in 0..5 {
        assert_eq!(begin(&app, "ada@example.com").await.status, StatusCode::OK);
    }
    rate_limits_become(&app, "degraded").await;
    assert_eq!(begin(&app, "ada@example.com").await.status, StatusCode::OK);

    // Back in the background, with no request needed to notice.
    proxy.restore().await;
    rate_limits_become(&app, "shared").await;
    assert_eq!(begin(&app, "ada@example.com").await.status, StatusCode::OK);

    let client = redis::Client::open(REDIS).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!keys.is_empty());
    let _: () = redis::cmd("DEL")
        .arg(keys)
        .query_async(&mut conn)
        .await
        .unwrap();
}

/// Gauges are process-wide and other tests' instances set them too, so poll.
async fn metrics_show(app: &TestApp, line: &str) {
    eventually(&format!("/metrics to show {line}"), || async {
        app.get("/metrics").await.text.contains(line).then_some(())
    })
    .await;
}

/// Failed verifications are counted through Redis too, and the look before
/// a backup code is checked (a peek, which takes nothing) sees what another
/// instance counted; the victim's own address is untouched.
#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn failed_verifications_are_shared_and_peeked_through_redis(pool: PgPool) {
    let prefix = prefix();
    let overrides = [
        ("QUEUE_REDIS_URL", REDIS),
        ("QUEUE_REDIS_PREFIX", prefix.as_str()),
        ("QUEUE_RATE_LIMIT_PER_ACCOUNT", "2"),
        ("QUEUE_TRUSTED_PROXIES", "127.0.0.1/32"),
    ];
    let a = TestApp::with(pool.clone(), &overrides).await;
    let b = TestApp::with(pool.clone(), &overrides).await;
    rate_limits_become(&a, "shared").await;
    rate_limits_become(&b, "shared").await;
    let tokens = a.register(&mut Passkey::new(), "ada@example.com").await;
    let codes = a
        .post_auth(
            "/api/v1/auth/backup-codes",
            json!({}),
            &crate::helpers::bearer(&tokens),
        )
        .await;
    let code = codes.json["codes"][0].as_str().unwrap().to_owned();
    let redeem = |app: &'static str, code: String, client: &'static str| {
        let app = if app == "a" { &a } else { &b };
        async move {
            let request = axum::http::Request::builder()
                .method(axum::http::Method::POST)
                .uri("/api/v1/auth/backup-codes/redeem")
                .header(axum::http::header::CONTENT_TYPE, "application/json")
                .header("x-forwarded-for", client)
                .body(axum::body::Body::from(
                    json!({"email": "ada@example.com", "code": code}).to_string(),
                ))
                .unwrap();
            app.send(request).await
        }
    };
    for app in ["a", "a"] {
        redeem(app, "WRONG-CODE-0000".into(), "203.0.113.9")
            .await
            .assert_error(StatusCode::UNAUTHORIZED, "invalid_code");
    }
    // Instance b never saw a failure, but the shared bucket is empty: the
    // attacker's address is refused before its (now valid) code is checked.
    redeem("b", code.clone(), "203.0.113.9")
        .await
        .assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    let ok = redeem("b", code, "198.51.100.9").await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);

    let client = redis::Client::open(REDIS).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        keys.iter()
            .any(|k| k.starts_with(&format!("{prefix}rl:account:"))),
        "{keys:?}"
    );
    let _: () = redis::cmd("DEL")
        .arg(keys)
        .query_async(&mut conn)
        .await
        .unwrap();
}
