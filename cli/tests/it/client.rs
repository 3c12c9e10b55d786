//! `queue-client` against a real `queue serve`: token verification through
//! a key rotation and through a Queue outage (JWKS cache, refresh on an
//! unknown kid, rate limited), an audit write that is retried across
//! 503s and stays idempotent, the RBAC and admin calls, and the founders
//! gate check with ADR 0094's fail-open rule.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use queue_client::{
    AuditWrite, ClientError, CustomerId, FoundersGate, GateDecision, GrantRole, RetryPolicy,
    ServiceClient, TokenVerifier,
};
use serde_json::{json, Value};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use tower::ServiceExt as _;

use crate::procs::{client, poll, Instance, Keys, Proxy, TestDb, AUDITOR};
use crate::recipes::{post_json, register_as};

/// The axum guard of `client/examples/guard`, as its example serves it.
#[path = "../../../client/examples/guard/extract.rs"]
mod guard;

const ISSUER: &str = "http://localhost:8080";
const AUDIENCE: &str = "queue";

/// The token with its header's kid replaced (the signature no longer
/// matters: the kid is looked up first).
fn with_kid(token: &str, kid: &str) -> String {
    let mut parts = token.splitn(2, '.');
    let header: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts.next().unwrap()).unwrap()).unwrap();
    let mut header = header.as_object().unwrap().clone();
    header.insert("kid".into(), json!(kid));
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap()),
        parts.next().unwrap()
    )
}

/// A clock the test moves on: the verifier's refresh interval passes
/// without sleeping through it.
#[derive(Clone)]
struct TestClock {
    start: std::time::Instant,
    offset_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl TestClock {
    fn new() -> Self {
        Self {
            start: std::time::Instant::now(),
            offset_ms: Default::default(),
        }
    }

    fn advance(&self, by: Duration) {
        self.offset_ms
            .fetch_add(by.as_millis() as u64, std::sync::atomic::Ordering::SeqCst);
    }

    fn clock(&self) -> queue_client::Clock {
        let this = self.clone();
        std::sync::Arc::new(move || {
            this.start
                + Duration::from_millis(this.offset_ms.load(std::sync::atomic::Ordering::SeqCst))
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_verify_through_a_rotation_and_a_queue_outage() {
    let db = TestDb::create("client_verify").await;
    let keys = Keys::new("client_verify");
    let mut queue = Instance::start("queue-client", &db.url("queue-client"), &keys).await;
    let tokens = register_as(&queue.base, "ada@example.com").await;
    let old = tokens["access_token"].as_str().unwrap().to_owned();
    let time = TestClock::new();
    let verifier = TokenVerifier::with_clock(
        &format!("{}/.well-known/jwks.json", queue.base),
        ISSUER,
        AUDIENCE,
        Duration::from_millis(500),
        time.clock(),
    )
    .unwrap();

    let claims = verifier.verify(&old).await.unwrap();
    assert_eq!(claims.sub, tokens["customer_id"].as_str().unwrap());
    assert_eq!(verifier.stats().fetches, 1);
    verifier.verify(&old).await.unwrap();
    assert_eq!(verifier.stats().fetches, 1, "served from the cache");

    // A forged token of a known kid fails on its signature, without a fetch.
    let mut forged = old.clone();
    forged.pop();
    forged.push(if old.ends_with('A') { 'B' } else { 'A' });
    assert!(matches!(
        verifier.verify(&forged).await,
        Err(ClientError::InvalidToken(_))
    ));

    // Rotate; a refreshed token is signed by the new key: one more fetch.
    let rotated = keys
        .queue(
            &["--json", "keys", "rotate", "--kind", "jwt"],
            &db.url("rotate"),
        )
        .await;
    assert!(rotated.status.success(), "{}", crate::stderr(&rotated));
    let base = queue.base.clone();
    poll(
        "the rotated key in the JWKS",
        Duration::from_secs(10),
        || {
            let base = base.clone();
            async move {
                let jwks: Value = client()
                    .get(format!("{base}/.well-known/jwks.json"))
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                (jwks["keys"].as_array()?.len() == 2).then_some(())
            }
        },
    )
    .await;
    let (status, refreshed) = post_json(
        &queue.base,
        "/api/v1/auth/session/refresh",
        json!({"refresh_token": tokens["refresh_token"]}),
    )
    .await;
    assert_eq!(status, 200, "{refreshed}");
    let new = refreshed["access_token"].as_str().unwrap().to_owned();
    // Refreshes are rate limited (here one per 500 ms; 30 s by default, as
    // jose's cooldown): past the interval, the unknown kid makes one fetch.
    time.advance(Duration::from_millis(600));
    verifier.verify(&new).await.unwrap();
    verifier.verify(&old).await.unwrap();
    assert_eq!(
        verifier.stats().fetches,
        2,
        "one refresh for the unknown kid"
    );

    // Queue goes away: what was verifiable still is.
    queue.kill9();
    verifier.verify(&old).await.unwrap();
    verifier.verify(&new).await.unwrap();
    assert_eq!(verifier.stats().fetches, 2);
    verifier.verify(&new).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_kid_during_an_outage_costs_one_failed_fetch() {
    let db = TestDb::create("client_outage").await;
    let keys = Keys::new("client_outage");
    let mut queue = Instance::start("queue-client", &db.url("queue-client"), &keys).await;
    let tokens = register_as(&queue.base, "ada@example.com").await;
    let token = tokens["access_token"].as_str().unwrap().to_owned();
    let time = TestClock::new();
    let verifier = TokenVerifier::with_clock(
        &format!("{}/.well-known/jwks.json", queue.base),
        ISSUER,
        AUDIENCE,
        Duration::from_secs(3),
        time.clock(),
    )
    .unwrap();
    verifier.verify(&token).await.unwrap();
    queue.kill9();
    time.advance(Duration::from_millis(3100));
    for kid in ["nope-1", "nope-2", "nope-3"] {
        assert!(matches!(
            verifier.verify(&with_kid(&token, kid)).await,
            Err(ClientError::UnknownKey { .. })
        ));
    }
    let stats = verifier.stats();
    assert_eq!(
        (stats.fetches, stats.failed_fetches),
        (2, 1),
        "rate limited"
    );
    // The failed fetch kept the cached keys.
    verifier.verify(&token).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_write_is_retried_across_503s_and_stays_idempotent() {
    let db = TestDb::create("client_audit").await;
    let keys = Keys::new("client_audit");
    let proxy = Proxy::to_database().await;
    let queue = Instance::start(
        "queue-client",
        &db.url_via(proxy.port, "queue-client"),
        &keys,
    )
    .await;
    let service = ServiceClient::new(&queue.base, AUDITOR)
        .unwrap()
        .with_retry(RetryPolicy {
            max_attempts: 40,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(500),
        });
    let write = AuditWrite::new("billing", "invoice.sent", "invoice:42");

    // The database is cut: Queue answers 503 until it is back.
    proxy.cut();
    let raw = client()
        .post(format!("{}/api/v1/audit/events", queue.base))
        .bearer_auth(AUDITOR)
        .json(&json!({"actor": "x", "action": "x.y", "target": "t:1", "idempotency_key": "probe"}))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status().as_u16(), 503);
    let restore = tokio::spawn(async move {
        // The outage's length (the client retries through it), not a wait.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        proxy.restore();
        proxy
    });
    let written = service.write_audit(&write).await.unwrap();
    let _proxy = restore.await.unwrap();
    assert!(written.attempts >= 2, "{written:?}");
    assert!(!written.replayed);
    assert_eq!(written.ledger_status, "appended");

    // The same write again (a caller that never saw the answer): the
    // original event, not a second one.
    let again = service.write_audit(&write).await.unwrap();
    assert!(again.replayed);
    assert_eq!(again.event_id, written.event_id);
    assert_eq!(again.hash, written.hash);
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE aggregate_type = 'Audit' AND payload::text LIKE '%' || $1 || '%'",
    )
    .bind(&write.idempotency_key)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(n, 1);

    // A refusal that is not 503/429 is not retried.
    let bad = ServiceClient::new(&queue.base, "not-a-real-service-token")
        .unwrap()
        .write_audit(&write)
        .await;
    assert!(
        matches!(bad, Err(ClientError::Api { status: 401, .. })),
        "{bad:?}"
    );

    // An entry about no customer, in a tenant: the default one (`queue
    // serve` creates its stream); a tenant that does not exist is 404.
    let in_default =
        AuditWrite::new("billing", "invoice.voided", "invoice:43").in_tenant("default");
    let written = service.write_audit(&in_default).await.unwrap();
    let tenant: Option<String> = sqlx::query_scalar(
        "SELECT payload->'AuditRecorded'->>'tenant_id' FROM events \
         WHERE aggregate_type = 'Audit' AND aggregate_id = $1",
    )
    .bind(&written.event_id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        tenant.as_deref(),
        Some("e02b51ee-91ce-59b2-8ff6-b3ef33a10a99")
    );
    let nowhere = service
        .write_audit(
            &AuditWrite::new("billing", "invoice.voided", "invoice:44").in_tenant("initech"),
        )
        .await;
    assert!(
        matches!(nowhere, Err(ClientError::Api { status: 404, .. })),
        "{nowhere:?}"
    );
}

/// A service with every scope the RBAC, admin and gate calls need.
const OPS: &str = "ops-token-client-000001";
const OPS_ENV: &[(&str, &str)] = &[
    ("QUEUE_SERVICE_TOKEN_OPS", OPS),
    (
        "QUEUE_SERVICE_SCOPES_OPS",
        "rbac:read,rbac:write,admin,internal",
    ),
];

fn customer_of(tokens: &Value) -> CustomerId {
    tokens["customer_id"].as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_grants_and_admin_suspensions_through_the_client() {
    let db = TestDb::create("client_rbac").await;
    let keys = Keys::new("client_rbac");
    let queue = Instance::start_with("queue-client", &db.url("queue-client"), &keys, OPS_ENV).await;
    let tokens = register_as(&queue.base, "ada@example.com").await;
    let ada = customer_of(&tokens);
    let ops = ServiceClient::new(&queue.base, OPS).unwrap();

    // grant → listed → revoke → gone.
    assert!(!ops.roles(ada).await.unwrap().has("support-agent"));
    let grant = ops
        .grant_role(&GrantRole::new(ada, "support-agent", "on call this week").with_ticket("OPS-7"))
        .await
        .unwrap();
    let roles = ops.roles(ada).await.unwrap();
    assert!(roles.has("support-agent"), "{roles:?}");
    let listed = roles.roles.iter().find(|g| g.grant_id == grant).unwrap();
    assert_eq!(listed.ticket_id.as_deref(), Some("OPS-7"));
    ops.revoke_grant(grant, "rotation over").await.unwrap();
    let roles = ops.roles(ada).await.unwrap();
    assert!(!roles.has("support-agent"), "{roles:?}");
    // A refusal comes back as Queue's error, not retried into something else.
    let again = ops.revoke_grant(grant, "again").await;
    assert!(
        matches!(
            &again,
            Err(ClientError::Api {
                status: 404 | 409,
                ..
            })
        ),
        "{again:?}"
    );
    let unknown = ops
        .grant_role(&GrantRole::new(ada, "no-such-role", "x"))
        .await;
    assert!(
        matches!(&unknown, Err(ClientError::Api { status: 400, code, .. }) if code == "invalid_request"),
        "{unknown:?}"
    );

    // suspend: the sessions go; history shows it; reinstate.
    let before = chrono::Utc::now();
    ops.suspend(ada, "chargeback").await.unwrap();
    let (status, refused) = post_json(
        &queue.base,
        "/api/v1/auth/session/refresh",
        json!({"refresh_token": tokens["refresh_token"]}),
    )
    .await;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (403, Some("customer_suspended")),
        "{refused}"
    );
    let history = ops.customer_history(ada, None).await.unwrap();
    assert_eq!(history.status(), Some("suspended"));
    let earlier = ops.customer_history(ada, Some(before)).await.unwrap();
    assert_eq!(earlier.status(), Some("active"));
    let twice = ops.suspend(ada, "chargeback").await;
    assert!(
        matches!(&twice, Err(ClientError::Api { status: 409, .. })),
        "{twice:?}"
    );
    ops.reinstate(ada, "resolved").await.unwrap();
    let history = ops.customer_history(ada, None).await.unwrap();
    assert_eq!(history.status(), Some("active"));
    assert!(history.events.len() >= 3, "{history:?}");
    // The session the suspension revoked stays revoked.
    let (status, after) = post_json(
        &queue.base,
        "/api/v1/auth/session/refresh",
        json!({"refresh_token": tokens["refresh_token"]}),
    )
    .await;
    assert_eq!(status, 401, "{after}");

    // Without the scope: 403, whoever asks.
    let auditor = ServiceClient::new(&queue.base, AUDITOR).unwrap();
    let refused = auditor.suspend(ada, "x").await;
    assert!(
        matches!(&refused, Err(ClientError::Api { status: 403, .. })),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_founders_gate_admits_refuses_and_fails_open() {
    let db = TestDb::create("client_gate").await;
    let keys = Keys::new("client_gate");
    let proxy = Proxy::to_database().await;
    let mut queue = Instance::start_with(
        "queue-client",
        &db.url_via(proxy.port, "queue-client"),
        &keys,
        OPS_ENV,
    )
    .await;
    register_as(&queue.base, "ada@example.com").await;
    register_as(&queue.base, "grace@example.com").await;
    let ops = ServiceClient::new(&queue.base, OPS).unwrap();
    let open = FoundersGate::new(ops.clone(), 3);
    let full = FoundersGate::new(ops.clone(), 2);

    // Per the threshold: two customers, room for three but not for two.
    let refused = poll("both customers counted", Duration::from_secs(10), || {
        let full = full.clone();
        async move {
            match full.check().await.unwrap() {
                d @ GateDecision::Refuse { .. } => Some(d),
                GateDecision::Admit { .. } => None,
            }
        }
    })
    .await;
    assert_eq!(
        refused,
        GateDecision::Refuse {
            count: 2,
            threshold: 2
        }
    );
    assert_eq!(
        open.check().await.unwrap(),
        GateDecision::Admit { degraded: false }
    );

    // A misconfigured token is an error, not an open gate.
    let wrong = FoundersGate::new(ServiceClient::new(&queue.base, AUDITOR).unwrap(), 2);
    assert!(matches!(
        wrong.check().await,
        Err(ClientError::Api { status: 403, .. })
    ));

    // Queue answers 503 (its database is cut): admit, degraded, even when full.
    proxy.cut();
    assert_eq!(
        full.check().await.unwrap(),
        GateDecision::Admit { degraded: true }
    );

    // Queue is gone: admit, degraded, quickly.
    queue.kill9();
    let started = std::time::Instant::now();
    let decision = full.check().await.unwrap();
    assert_eq!(decision, GateDecision::Admit { degraded: true });
    assert!(decision.admits() && decision.is_degraded());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let audit = full.check_failed_audit("signup", "challenge:42");
    assert_eq!(audit.action, "founders.gate.check_failed");
    assert_eq!(
        audit.idempotency_key,
        full.check_failed_audit("signup", "challenge:42")
            .idempotency_key
    );
}

/// `GET path` through the guard example's router with `token` (if any).
async fn guarded(
    app: &axum::Router,
    path: &str,
    token: Option<&str>,
) -> (StatusCode, String, String) {
    let mut request = Request::get(path);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, challenge, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guard_example_admits_verified_tokens_and_checks_roles() {
    let db = TestDb::create("client_guard").await;
    let keys = Keys::new("client_guard");
    let mut queue =
        Instance::start_with("queue-client", &db.url("queue-client"), &keys, OPS_ENV).await;
    let tokens = register_as(&queue.base, "ada@example.com").await;
    let ada = customer_of(&tokens);
    let token = tokens["access_token"].as_str().unwrap().to_owned();
    let verifier = TokenVerifier::new(
        &format!("{}/.well-known/jwks.json", queue.base),
        ISSUER,
        AUDIENCE,
    )
    .unwrap();
    let app = guard::app(verifier);

    let (status, challenge, _) = guarded(&app, "/me", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    let (status, _, body) = guarded(&app, "/me", Some(&token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let me: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(me["customer_id"], tokens["customer_id"]);
    let mut forged = token.clone();
    forged.pop();
    forged.push(if token.ends_with('A') { 'B' } else { 'A' });
    assert_eq!(
        guarded(&app, "/me", Some(&forged)).await.0,
        StatusCode::UNAUTHORIZED
    );

    // The role route: 403 until a grant is in a (refreshed) token.
    assert_eq!(
        guarded(&app, "/tickets", Some(&token)).await.0,
        StatusCode::FORBIDDEN
    );
    let ops = ServiceClient::new(&queue.base, OPS).unwrap();
    ops.grant_role(&GrantRole::new(ada, "support-agent", "on call"))
        .await
        .unwrap();
    let (status, refreshed) = post_json(
        &queue.base,
        "/api/v1/auth/session/refresh",
        json!({"refresh_token": tokens["refresh_token"]}),
    )
    .await;
    assert_eq!(status, 200, "{refreshed}");
    let agent = refreshed["access_token"].as_str().unwrap().to_owned();
    let (status, _, body) = guarded(&app, "/tickets", Some(&agent)).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Queue gone: the guard keeps admitting what verified (ADR 0068).
    queue.kill9();
    assert_eq!(
        guarded(&app, "/tickets", Some(&agent)).await.0,
        StatusCode::OK
    );
}
