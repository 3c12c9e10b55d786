//! Issue 17: each test performs an attack a hostile client can mount
//! cheaply, against the real router (or a real TCP server) on real
//! PostgreSQL, and shows that it no longer works.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::helpers::{bearer, eventually, Passkey, Response, TempDir, TestApp};

const LOGIN_BEGIN: &str = "/api/v1/auth/webauthn/login/begin";
const LOGIN_COMPLETE: &str = "/api/v1/auth/webauthn/login/complete";
const REDEEM: &str = "/api/v1/auth/backup-codes/redeem";
const REGISTER_BEGIN: &str = "/api/v1/auth/webauthn/register/begin";
const REGISTER_COMPLETE: &str = "/api/v1/auth/webauthn/register/complete";

/// The test router's peer is 127.0.0.1: a trusted proxy in these tests, so
/// `X-Forwarded-For` says which client a request comes from.
const BEHIND_PROXY: (&str, &str) = ("QUEUE_TRUSTED_PROXIES", "127.0.0.1/32");

async fn post_from(app: &TestApp, path: &str, body: Value, forwarded_for: &str) -> Response {
    let request = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-forwarded-for", forwarded_for)
        .body(Body::from(body.to_string()))
        .unwrap();
    app.send(request).await
}

async fn login_from(app: &TestApp, passkey: &mut Passkey, email: &str, client: &str) -> Response {
    let begin = post_from(app, LOGIN_BEGIN, json!({"email": email}), client).await;
    assert_eq!(begin.status, StatusCode::OK, "{}", begin.text);
    let credential = passkey.get(&begin.json["options"]);
    post_from(
        app,
        LOGIN_COMPLETE,
        json!({"challenge_id": begin.json["challenge_id"], "credential": credential}),
        client,
    )
    .await
}

/// An assertion for the victim's passkey id whose signature is garbage.
async fn garbage_login_from(
    app: &TestApp,
    victim_passkey: &mut Passkey,
    email: &str,
    client: &str,
) -> Response {
    let begin = post_from(app, LOGIN_BEGIN, json!({"email": email}), client).await;
    assert_eq!(begin.status, StatusCode::OK, "{}", begin.text);
    let mut credential = victim_passkey.get(&begin.json["options"]);
    credential["response"]["signature"] = json!(URL_SAFE_NO_PAD.encode([0x30u8; 70]));
    post_from(
        app,
        LOGIN_COMPLETE,
        json!({"challenge_id": begin.json["challenge_id"], "credential": credential}),
        client,
    )
    .await
}

// ---------------------------------------------------------------------------
// Item 1: slow clients.

/// A real TCP server (the server loop `queue serve` uses, with its header
/// timeout) until [`Server::stop`].
struct Server {
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(router: axum::Router, header_timeout: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(queue_api::http::timeouts::serve(
            listener,
            router,
            header_timeout,
            async move {
                let _ = stopped.await;
            },
        ));
        Self { addr, stop, task }
    }

    /// Stops accepting, lets open connections finish (so the test's
    /// database can be dropped).
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

async fn serve(app: &TestApp) -> Server {
    Server::start(
        queue_api::app(app.state.clone()),
        app.state.config().timeouts.header,
    )
    .await
}

/// A client that sends its headers, then one body byte every `every`;
/// returns what the server answered (until it closed the connection, or
/// `give_up`).
async fn dribble_body(
    addr: SocketAddr,
    every: Duration,
    give_up: Duration,
    dribbling: Arc<AtomicUsize>,
) -> String {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return "connect failed".to_owned();
    };
    let head = "POST /api/v1/auth/session/refresh HTTP/1.1\r\nHost: queue\r\n\
                Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{";
    if stream.write_all(head.as_bytes()).await.is_err() {
        return "write failed".to_owned();
    }
    dribbling.fetch_add(1, Ordering::SeqCst);
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut writing = true;
    let mut buf = [0u8; 4096];
    while started.elapsed() < give_up {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            },
            () = tokio::time::sleep(every), if writing => {
                writing = stream.write_all(b" ").await.is_ok();
            }
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// The normal client: logs in with its passkey and refreshes, over HTTP.
async fn login_and_refresh(base: &str, passkey: &mut Passkey, email: &str) -> (u16, u16, u16) {
    let http = reqwest::Client::new();
    let begin = http
        .post(format!("{base}{LOGIN_BEGIN}"))
        .json(&json!({"email": email}))
        .send()
        .await
        .unwrap();
    let begin_status = begin.status().as_u16();
    let begin: Value = begin.json().await.unwrap();
    let credential = passkey.get(&begin["options"]);
    let complete = http
        .post(format!("{base}{LOGIN_COMPLETE}"))
        .json(&json!({"challenge_id": begin["challenge_id"], "credential": credential}))
        .send()
        .await
        .unwrap();
    let complete_status = complete.status().as_u16();
    let tokens: Value = complete.json().await.unwrap();
    let refreshed = http
        .post(format!("{base}/api/v1/auth/session/refresh"))
        .json(&json!({"refresh_token": tokens["refresh_token"]}))
        .send()
        .await
        .unwrap();
    (begin_status, complete_status, refreshed.status().as_u16())
}

/// Before issue 17, 9 slow-body POSTs made every NORMAL route answer 429
/// and 300 made login and refresh answer 429 `overloaded`, then 503 once the
/// breaker opened. Here 300 connections dribble a refresh body one byte
/// every 250 ms into a real server with a shedding limit of 8, while a
/// normal client logs in and refreshes.
#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn slow_body_clients_do_not_take_the_api_down(pool: PgPool) {
    const SLOW: usize = 300;
    let app = TestApp::with(
        pool,
        &[
            ("QUEUE_MAX_IN_FLIGHT", "8"),
            ("QUEUE_BODY_TIMEOUT_MS", "6000"),
            ("QUEUE_BREAKER_LATENCY_WINDOW", "5"),
            ("QUEUE_BREAKER_MAX_MEAN_LATENCY_MS", "2000"),
        ],
    )
    .await;
    let mut passkey = Passkey::new();
    app.register(&mut passkey, "ada@example.com").await;
    let server = serve(&app).await;
    let addr = server.addr;
    let base = format!("http://{addr}");

    let attack_started = Instant::now();
    let dribbling = Arc::new(AtomicUsize::new(0));
    let slow: Vec<_> = (0..SLOW)
        .map(|_| {
            tokio::spawn(dribble_body(
                addr,
                Duration::from_millis(250),
                Duration::from_secs(20),
                Arc::clone(&dribbling),
            ))
        })
        .collect();
    // Every slow client is connected and has sent its headers.
    eventually("every slow client to be dribbling", || async {
        (dribbling.load(Ordering::SeqCst) == SLOW).then_some(())
    })
    .await;
    assert_eq!(
        app.state.inner.in_flight.total(),
        0,
        "a request whose body is still arriving counts against shedding"
    );

    let mut rounds = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let statuses = login_and_refresh(&base, &mut passkey, "ada@example.com").await;
        assert_eq!(statuses, (200, 200, 200), "the normal client was refused");
        rounds.push(started.elapsed());
    }
    let during_attack = attack_started.elapsed();
    assert!(
        during_attack < Duration::from_secs(6),
        "the normal client finished after the slow clients were cut off ({during_attack:?})"
    );
    assert!(app.state.inner.breaker.is_closed());
    eprintln!("normal login+refresh rounds under {SLOW} slow bodies: {rounds:?}");

    let mut timed_out = 0;
    for task in slow {
        let answer = task.await.unwrap();
        if answer.starts_with("HTTP/1.1 408") && answer.contains("\"request_timeout\"") {
            timed_out += 1;
        }
    }
    let cut_after = attack_started.elapsed();
    eprintln!("{timed_out}/{SLOW} slow clients answered 408 request_timeout after {cut_after:?}");
    assert_eq!(
        timed_out, SLOW,
        "every slow body answers 408 request_timeout"
    );
    assert!(app.state.inner.breaker.is_closed());
    // And the service still answers afterwards.
    let statuses = login_and_refresh(&base, &mut passkey, "ada@example.com").await;
    assert_eq!(statuses, (200, 200, 200));
    server.stop().await;
}

/// Slowloris on the headers: the connection is closed at the header timeout.
#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn slow_headers_are_cut_off_at_the_header_timeout(pool: PgPool) {
    let app = TestApp::with(pool, &[("QUEUE_HEADER_TIMEOUT_MS", "1000")]).await;
    let server = serve(&app).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: queue\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let closed_after = loop {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => break started.elapsed(),
                Ok(_) => {}
            },
            () = tokio::time::sleep(Duration::from_millis(200)) => {
                if stream.write_all(b"X-Slow: 1\r\n").await.is_err() {
                    break started.elapsed();
                }
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the server kept a slow-header connection open"
        );
    };
    assert!(
        closed_after >= Duration::from_millis(900),
        "{closed_after:?}"
    );
    eprintln!("slow-header connection closed after {closed_after:?}");
    server.stop().await;
}

/// A half-open probe that hangs on the store re-opens the breaker at its
/// own deadline instead of holding it half-open.
#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn a_hanging_half_open_probe_reopens_the_breaker_at_its_deadline(pool: PgPool) {
    let app = TestApp::with(
        pool.clone(),
        &[
            ("QUEUE_BREAKER_OPEN_MS", "10"),
            ("QUEUE_BREAKER_PROBE_TIMEOUT_MS", "300"),
        ],
    )
    .await;
    let tokens = app.register(&mut Passkey::new(), "ada@example.com").await;
    let breaker = &app.state.inner.breaker;
    for _ in 0..5 {
        breaker.record(app.state.now(), true, Duration::ZERO);
    }
    assert!(!breaker.is_closed());
    // Past the open time (the breaker reads the service clock).
    app.clock().advance(1);

    // The store hangs: the events table is locked.
    let mut locker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *locker)
        .await
        .unwrap();
    let started = Instant::now();
    let probe = app
        .post(
            "/api/v1/auth/session/refresh",
            json!({"refresh_token": tokens["refresh_token"]}),
        )
        .await;
    let took = started.elapsed();
    probe.assert_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    assert!(took < Duration::from_secs(3), "the probe ran {took:?}");
    assert!(
        matches!(
            breaker.state(),
            queue_api::resilience::breaker::BreakerState::Open { .. }
        ),
        "{:?}",
        breaker.state()
    );
    locker.rollback().await.unwrap();

    // The store is back: the next probe, past the open time, closes it.
    app.clock().advance(1);
    let again = app
        .post(
            "/api/v1/auth/session/refresh",
            json!({"refresh_token": tokens["refresh_token"]}),
        )
        .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    assert!(breaker.is_closed());
}

// ---------------------------------------------------------------------------
// Item 2: the client address and the limiter's memory.

/// Behind a proxy that appends to X-Forwarded-For, the client writes what
/// it likes to the left; a new fake entry per request used to be a new
/// rate-limit key per request.
#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn spoofed_forwarded_for_does_not_escape_the_address_limit(pool: PgPool) {
    let app = TestApp::with(pool, &[BEHIND_PROXY, ("QUEUE_RATE_LIMIT_PER_ADDRESS", "5")]).await;
    let mut statuses = Vec::new();
    for i in 0..8 {
        let forwarded = format!("10.{i}.{i}.1, 203.0.113.7");
        let r = post_from(&app, LOGIN_BEGIN, json!({}), &forwarded).await;
        statuses.push(r.status.as_u16());
        if i >= 5 {
            r.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
        }
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429]);
    // Another client behind the same proxy has its own budget.
    let other = post_from(&app, LOGIN_BEGIN, json!({}), "203.0.113.7, 198.51.100.9").await;
    assert_eq!(other.status, StatusCode::OK, "{}", other.text);
    // IPv6: a new address in the same /64 is the same client.
    for i in 0..5 {
        let r = post_from(
            &app,
            LOGIN_BEGIN,
            json!({}),
            &format!("2001:db8:7:7::{i:x}"),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    }
    post_from(&app, LOGIN_BEGIN, json!({}), "2001:db8:7:7:ffff::1")
        .await
        .assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    // A malformed hop: the peer (the proxy) is the client.
    let r = post_from(&app, LOGIN_BEGIN, json!({}), "198.51.100.10, not-an-ip").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
}

/// 100,000 distinct spoofed addresses (each a new key) against a limiter:
/// its key count stays under its cap during the flood and eviction empties
/// it once the buckets are as good as fresh; checks stay cheap.
#[tokio::test]
async fn a_flood_of_spoofed_addresses_keeps_the_limiter_bounded() {
    const FLOOD: u32 = 100_000;
    const CAP: usize = 20_000;
    let trusted = queue_api::http::client_address::TrustedProxies::parse("10.0.0.0/8").unwrap();
    let limiter = queue_api::resilience::ratelimit::RateLimiter::bounded("address", 60, CAP, None);
    let peer = Some("10.0.0.1".parse().unwrap());
    let mut max_keys = 0;
    let started = Instant::now();
    for i in 0..FLOOD {
        let spoofed = format!("198.{}.{}.{}", (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff);
        let client =
            queue_api::http::client_address::resolve(peer, [spoofed.as_str()], &trusted).unwrap();
        let key = queue_api::http::client_address::key_of(client);
        let _ = limiter.check_local(&format!("login:{key}"));
        max_keys = max_keys.max(limiter.key_count());
    }
    let per_check = started.elapsed() / FLOOD;
    eprintln!(
        "{FLOOD} distinct addresses: at most {max_keys} keys held (cap {CAP}), {per_check:?} per resolve+check"
    );
    assert!(max_keys <= CAP + 1, "{max_keys}");
    // A key GCRA has forgotten: one token used, 1 s per token: gone after
    // two emission intervals.
    // (The shared overflow bucket, used up, is the one key that may stay.)
    // GCRA's own clock is real time: poll eviction until the keys are gone.
    eventually("the forgotten keys to be evicted", || async {
        limiter.evict();
        (limiter.key_count() <= 1).then_some(())
    })
    .await;
    assert!(limiter.check_local("login:192.0.2.1").is_ok());
}

// ---------------------------------------------------------------------------
// Item 3: lockout as a weapon.

const VICTIM: &str = "198.51.100.1";
const ATTACKER: &str = "203.0.113.66";

/// An attacker sends garbage assertions for the victim's account from their
/// own address; the victim logs in from theirs with a valid passkey, again
/// and again (a success charges nothing). Even an attacker spread over many
/// addresses, who uses up the account's ceiling, cannot stop a valid
/// passkey.
#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn an_attacker_cannot_lock_a_victim_out_of_login(pool: PgPool) {
    let app = TestApp::with(
        pool,
        &[
            BEHIND_PROXY,
            ("QUEUE_RATE_LIMIT_PER_ACCOUNT", "3"),
            ("QUEUE_RATE_LIMIT_PER_ACCOUNT_CEILING", "10"),
        ],
    )
    .await;
    let mut passkey = Passkey::new();
    app.register(&mut passkey, "victim@example.com").await;

    let mut attacker = Vec::new();
    for round in 0..8 {
        let r = garbage_login_from(&app, &mut passkey, "victim@example.com", ATTACKER).await;
        attacker.push(r.json["error"]["code"].as_str().unwrap_or("").to_owned());
        // The victim, between the attacker's tries, more often than the
        // per-account limit: every login succeeds.
        let ok = login_from(&app, &mut passkey, "victim@example.com", VICTIM).await;
        assert_eq!(ok.status, StatusCode::OK, "round {round}: {}", ok.text);
    }
    assert_eq!(
        attacker,
        [
            "webauthn_failed",
            "webauthn_failed",
            "webauthn_failed",
            "rate_limited",
            "rate_limited",
            "rate_limited",
            "rate_limited",
            "rate_limited"
        ]
    );

    // Many addresses: the account's ceiling (10) is used up.
    let mut codes = Vec::new();
    for i in 0..12 {
        let r = garbage_login_from(
            &app,
            &mut passkey,
            "victim@example.com",
            &format!("192.0.2.{i}"),
        )
        .await;
        codes.push(r.json["error"]["code"].as_str().unwrap_or("").to_owned());
    }
    assert!(codes.iter().any(|c| c == "rate_limited"), "{codes:?}");
    let ok = login_from(&app, &mut passkey, "victim@example.com", VICTIM).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
}

/// The same for recovery: bad backup codes from the attacker's address do
/// not stop the victim redeeming a good one from theirs; successes are not
/// charged.
#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn an_attacker_cannot_lock_a_victim_out_of_recovery(pool: PgPool) {
    let app = TestApp::with(pool, &[BEHIND_PROXY, ("QUEUE_RATE_LIMIT_PER_ACCOUNT", "3")]).await;
    let tokens = app
        .register(&mut Passkey::new(), "victim@example.com")
        .await;
    let generated = app
        .post_auth("/api/v1/auth/backup-codes", json!({}), &bearer(&tokens))
        .await;
    let codes: Vec<String> = generated.json["codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();

    let mut attacker = Vec::new();
    for i in 0..6 {
        let r = post_from(
            &app,
            REDEEM,
            json!({"email": "victim@example.com", "code": format!("AAAA-BBBB-{i:04}")}),
            ATTACKER,
        )
        .await;
        attacker.push(r.json["error"]["code"].as_str().unwrap_or("").to_owned());
    }
    assert_eq!(
        attacker,
        [
            "invalid_code",
            "invalid_code",
            "invalid_code",
            "rate_limited",
            "rate_limited",
            "rate_limited"
        ]
    );
    // More redemptions than the per-account limit, all good: all succeed.
    for code in &codes[..5] {
        let ok = post_from(
            &app,
            REDEEM,
            json!({"email": "victim@example.com", "code": code}),
            VICTIM,
        )
        .await;
        assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
    }
    // The attacker's address stays refused, even with a valid code: a
    // used-up bucket is checked before the code (codes can be guessed).
    post_from(
        &app,
        REDEEM,
        json!({"email": "victim@example.com", "code": codes[6]}),
        ATTACKER,
    )
    .await
    .assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
}

// ---------------------------------------------------------------------------
// Item 4: registration.

/// A script registering from one address, and one hammering one email
/// (where `email_taken` is the only signal), both hit 429 at the shipped
/// limits (20 per address, 5 per email per minute).
#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn scripted_registrations_hit_429(pool: PgPool) {
    let app = TestApp::with(
        pool,
        &[
            BEHIND_PROXY,
            ("QUEUE_RATE_LIMIT_REGISTER_PER_ADDRESS", "20"),
            ("QUEUE_RATE_LIMIT_REGISTER_PER_EMAIL", "5"),
        ],
    )
    .await;
    let mut statuses = Vec::new();
    for i in 0..25 {
        let r = post_from(
            &app,
            REGISTER_BEGIN,
            json!({"email": format!("bot{i}@example.com"), "display_name": "Bot"}),
            "203.0.113.20",
        )
        .await;
        statuses.push(r.status.as_u16());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 20);
    assert!(statuses[20..].iter().all(|s| *s == 429), "{statuses:?}");

    // One email from many addresses: the begin/complete pairs of a taken
    // email answer email_taken, then 429.
    app.register(&mut Passkey::new(), "taken@example.com").await;
    let mut codes = Vec::new();
    for i in 0..4 {
        let client = format!("198.51.100.{}", 50 + i);
        let begin = post_from(
            &app,
            REGISTER_BEGIN,
            json!({"email": "taken@example.com", "display_name": "Probe"}),
            &client,
        )
        .await;
        if begin.status != StatusCode::OK {
            codes.push(
                begin.json["error"]["code"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
            );
            continue;
        }
        let credential = Passkey::new().create(&begin.json["options"]);
        let done = post_from(
            &app,
            REGISTER_COMPLETE,
            json!({"challenge_id": begin.json["challenge_id"], "credential": credential}),
            &client,
        )
        .await;
        codes.push(done.json["error"]["code"].as_str().unwrap_or("").to_owned());
    }
    // The register() above used 2 of the 5; 3 more requests pass.
    assert_eq!(
        codes,
        [
            "email_taken",
            "rate_limited",
            "rate_limited",
            "rate_limited"
        ],
        "{codes:?}"
    );
}

async fn verification_token(app: &TestApp, tokens: &Value) -> String {
    let r = app
        .post_auth(
            "/api/v1/auth/email/verification",
            json!({}),
            &bearer(tokens),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let mail = app.last_mail().await;
    let start = mail.find("token=").unwrap() + "token=".len();
    mail[start..].split_whitespace().next().unwrap().to_owned()
}

/// Sign-ups that never verify do not fill the founders cohort; verified
/// customers are counted exactly, also when they verify at once.
#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn unverified_signups_do_not_fill_the_founders_cohort(pool: PgPool) {
    let app = TestApp::with(
        pool,
        &[
            ("FLAG_FOUNDERS_GATE", "1"),
            ("FOUNDERS_COHORT_THRESHOLD", "3"),
        ],
    )
    .await;
    // Six scripted sign-ups: all admitted, none takes a place.
    let mut customers = Vec::new();
    for i in 0..6 {
        customers.push(
            app.register(&mut Passkey::new(), &format!("early{i}@example.com"))
                .await,
        );
    }
    let mut tokens = Vec::new();
    for customer in &customers[..4] {
        tokens.push(verification_token(&app, customer).await);
    }
    let verified = futures::future::join_all(
        tokens
            .iter()
            .map(|token| app.post("/api/v1/auth/email/verify", json!({"token": token}))),
    )
    .await;
    for r in &verified {
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    }
    let counted: i64 = sqlx::query_scalar("SELECT used FROM founders_gate WHERE id = 2")
        .fetch_one(&app.state.pool)
        .await
        .unwrap();
    assert_eq!(counted, 4);
    // Now the cohort is full.
    let begin = app
        .post(
            REGISTER_BEGIN,
            json!({"email": "late@example.com", "display_name": "Late"}),
        )
        .await;
    let credential = Passkey::new().create(&begin.json["options"]);
    app.post(
        REGISTER_COMPLETE,
        json!({"challenge_id": begin.json["challenge_id"], "credential": credential}),
    )
    .await
    .assert_error(StatusCode::FORBIDDEN, "founders_cohort_full");
}

// ---------------------------------------------------------------------------
// Item 9: smaller leaks.

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn metrics_can_require_a_token(pool: PgPool) {
    let app = TestApp::with(pool, &[("QUEUE_METRICS_TOKEN", "scrape-token-0123456789")]).await;
    app.get("/metrics")
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    app.get_auth("/metrics", "wrong-token-0123456789")
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    let ok = app.get_auth("/metrics", "scrape-token-0123456789").await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn metrics_can_live_on_their_own_address(pool: PgPool) {
    let app = TestApp::with(pool, &[("QUEUE_METRICS_LISTEN", "127.0.0.1:0")]).await;
    app.get("/metrics")
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    let server = Server::start(
        queue_api::metrics_app(app.state.clone()),
        Duration::from_secs(5),
    )
    .await;
    let addr = server.addr;
    let scraped = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap();
    assert_eq!(scraped.status().as_u16(), 200);
    let other = reqwest::get(format!("http://{addr}/healthz"))
        .await
        .unwrap();
    assert_eq!(other.status().as_u16(), 404);
    server.stop().await;
}

#[cfg(unix)]
#[tokio::test]
async fn the_log_mailer_writes_files_only_its_user_can_read() {
    use queue_api::mail::mailer::{LogMailer, Mailer, Message};
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new();
    LogMailer::new(dir.0.clone())
        .send(&Message {
            message_id: "<m@example.com>".into(),
            to: "ada@example.com".into(),
            subject: "s".into(),
            body: "secret link".into(),
            html: "<p>secret link</p>".into(),
        })
        .await
        .unwrap();
    let file = std::fs::read_dir(&dir.0).unwrap().next().unwrap().unwrap();
    let mode = file.metadata().unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{mode:o}");
}

#[test]
fn the_service_name_queue_is_reserved() {
    let pairs = [
        ("QUEUE_DEV", "1"),
        (
            "QUEUE_JWT_KEYS",
            "k1=9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        ),
        ("QUEUE_SERVICE_TOKEN_QUEUE", "0123456789abcdef0123"),
        ("QUEUE_SERVICE_SCOPES_QUEUE", "audit:write"),
    ];
    let err = queue_api::Config::from_lookup_with_names(
        |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        },
        pairs.iter().map(|(n, _)| *n),
    )
    .unwrap_err()
    .to_string();
    assert!(err.starts_with("QUEUE_SERVICE_TOKEN_QUEUE"), "{err}");
    assert!(!err.contains("0123456789abcdef0123"), "{err}");
}

/// Captures the SQL statements sqlx runs on the threads that ask for it.
///
/// A *global* subscriber that routes `sqlx::query` events to a thread-local
/// sink, installed once for the test binary. A thread-local default
/// subscriber (`set_default`) raced tracing's global callsite-interest and
/// level caches with the other tests' threads and sometimes captured
/// nothing; a global one that always answers "sometimes" cannot.
mod capture {
    use std::cell::RefCell;
    use std::sync::{Arc, Mutex, Once};

    use tracing::span::{Attributes, Id, Record};
    use tracing::subscriber::Interest;
    use tracing::{Event, Metadata};

    thread_local! {
        static SINK: RefCell<Option<Arc<Mutex<Vec<String>>>>> = const { RefCell::new(None) };
    }

    struct Router;

    struct StatementText(Option<String>);

    impl tracing::field::Visit for StatementText {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            if field.name() == "db.statement" || (field.name() == "summary" && self.0.is_none()) {
                self.0 = Some(format!("{value:?}"));
            }
        }
    }

    impl tracing::Subscriber for Router {
        fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
            Interest::sometimes()
        }
        fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
            Some(tracing::level_filters::LevelFilter::TRACE)
        }
        fn enabled(&self, metadata: &Metadata<'_>) -> bool {
            // sqlx asks `enabled!` (a hint callsite, not an event) first.
            metadata.target() == "sqlx::query" && SINK.with(|sink| sink.borrow().is_some())
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            let mut text = StatementText(None);
            event.record(&mut text);
            if let Some(text) = text.0 {
                SINK.with(|sink| {
                    if let Some(sink) = sink.borrow().as_ref() {
                        sink.lock().unwrap().push(text);
                    }
                });
            }
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    /// Starts capturing this thread's statements.
    pub fn statements() -> Statements {
        static INSTALL: Once = Once::new();
        INSTALL.call_once(|| {
            tracing::subscriber::set_global_default(Router)
                .expect("no other global subscriber in the api test binary");
        });
        let sink = Arc::new(Mutex::new(Vec::new()));
        SINK.with(|s| *s.borrow_mut() = Some(Arc::clone(&sink)));
        Statements(sink)
    }

    pub struct Statements(Arc<Mutex<Vec<String>>>);

    impl Statements {
        pub fn take(&self) -> Vec<String> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    impl Drop for Statements {
        fn drop(&mut self) {
            SINK.with(|s| *s.borrow_mut() = None);
        }
    }
}

/// login/begin runs the same statements for an unknown email as for a
/// customer's, so neither its answer nor its timing tells them apart.
#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn login_begin_does_the_same_queries_for_unknown_and_known_emails(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.register(&mut Passkey::new(), "ada@example.com").await;
    let statements = capture::statements();

    let known = app.login_begin(Some("ada@example.com")).await;
    let known_sql = statements.take();
    let unknown = app.login_begin(Some("nobody@example.com")).await;
    let unknown_sql = statements.take();
    assert!(known_sql.len() >= 3, "{known_sql:?}");
    assert_eq!(known_sql, unknown_sql);
    assert_eq!(
        known["options"]["publicKey"]["allowCredentials"]
            .as_array()
            .map(Vec::len)
            .is_some(),
        unknown["options"]["publicKey"]["allowCredentials"]
            .as_array()
            .map(Vec::len)
            .is_some()
    );
}

/// A token a session never issued gets `invalid_refresh_token` whether the
/// session id in it exists, is active or is revoked.
#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn refresh_answers_the_same_for_any_unknown_token(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let tokens = app.register(&mut Passkey::new(), "ada@example.com").await;
    let real = tokens["refresh_token"].as_str().unwrap().to_owned();
    // Same session id, another secret.
    let forged = format!("{}{}", &real[..real.len() - 43], "A".repeat(43));
    let nonexistent = format!("qrt_{}_{}", uuid::Uuid::new_v4().simple(), "A".repeat(43));
    let refresh = |token: String| {
        let app = &app;
        async move {
            app.post(
                "/api/v1/auth/session/refresh",
                json!({"refresh_token": token}),
            )
            .await
        }
    };
    refresh(nonexistent.clone())
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "invalid_refresh_token");
    refresh(forged.clone())
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "invalid_refresh_token");
    // Revoked: an unknown token still learns nothing about the session.
    let out = app
        .post_auth("/api/v1/auth/logout", json!({}), &bearer(&tokens))
        .await;
    assert_eq!(out.status, StatusCode::NO_CONTENT, "{}", out.text);
    refresh(forged)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "invalid_refresh_token");
    refresh(nonexistent)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "invalid_refresh_token");
    // The session's own token still says what happened to it.
    refresh(real)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "session_revoked");
}

/// An assertion made with `crossOrigin: true` (signed over that client
/// data, so only the flag differs) is refused; the same without it logs in.
#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn cross_origin_assertions_are_refused_at_login(pool: PgPool) {
    use webauthn_authenticator_rs::AuthenticatorBackendHashedClientData;
    use webauthn_rs_proto::RequestChallengeResponse;
    let app = TestApp::new(pool).await;
    let mut passkey = Passkey::new();
    app.register(&mut passkey, "ada@example.com").await;

    let mut outcome = Vec::new();
    for cross_origin in [true, false] {
        let begin = app.login_begin(Some("ada@example.com")).await;
        let client_data = json!({
            "type": "webauthn.get",
            "challenge": begin["options"]["publicKey"]["challenge"],
            "origin": crate::helpers::ORIGIN,
            "crossOrigin": cross_origin,
        })
        .to_string();
        let rcr: RequestChallengeResponse =
            serde_json::from_value(begin["options"].clone()).unwrap();
        let mut response = AuthenticatorBackendHashedClientData::perform_auth(
            &mut passkey.soft,
            Sha256::digest(client_data.as_bytes()).to_vec(),
            rcr.public_key,
            60_000,
        )
        .unwrap();
        response.response.client_data_json = client_data.into_bytes();
        response.response.user_handle = passkey.user_handle.clone();
        let done = app
            .login_complete(
                &begin["challenge_id"],
                serde_json::to_value(&response).unwrap(),
            )
            .await;
        outcome.push((
            cross_origin,
            done.status.as_u16(),
            done.json["error"]["code"].clone(),
        ));
    }
    assert_eq!(
        outcome,
        [
            (true, 401, json!("webauthn_failed")),
            (false, 200, Value::Null)
        ]
    );
}
