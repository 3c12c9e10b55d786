//! `queue-client` against a real `queue serve`: token verification through
//! a key rotation and through a Queue outage (JWKS cache, refresh on an
//! unknown kid, rate limited), and an audit write that is retried across
//! 503s and stays idempotent.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use queue_client::{AuditWrite, ClientError, RetryPolicy, ServiceClient, TokenVerifier};
use serde_json::{json, Value};

use crate::procs::{client, poll, Instance, Keys, Proxy, TestDb, AUDITOR};
use crate::recipes::{post_json, register_as};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_verify_through_a_rotation_and_a_queue_outage() {
    let db = TestDb::create("client_verify").await;
    let keys = Keys::new("client_verify");
    let mut queue = Instance::start("queue-client", &db.url("queue-client"), &keys).await;
    let tokens = register_as(&queue.base, "ada@example.com").await;
    let old = tokens["access_token"].as_str().unwrap().to_owned();
    let verifier = TokenVerifier::with_refresh_interval(
        &format!("{}/.well-known/jwks.json", queue.base),
        ISSUER,
        AUDIENCE,
        Duration::from_millis(500),
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
    tokio::time::sleep(Duration::from_millis(600)).await;
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
    let verifier = TokenVerifier::with_refresh_interval(
        &format!("{}/.well-known/jwks.json", queue.base),
        ISSUER,
        AUDIENCE,
        Duration::from_secs(3),
    )
    .unwrap();
    verifier.verify(&token).await.unwrap();
    queue.kill9();
    tokio::time::sleep(Duration::from_millis(3100)).await;
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
    let proxy = Proxy::start().await;
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
}
