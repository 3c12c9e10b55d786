//! Service routes: service tokens and scopes, the audit writer, RBAC,
//! admin actions and the founders gate (issue 7).

use axum::http::StatusCode;
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::{bearer, Passkey, TestApp};

pub const AUDITOR: &str = "auditor-token-0000000001";
pub const OPS: &str = "ops-token-000000000000001";
pub const READER: &str = "reader-token-00000000001";
/// Every scope, limited to tenant `acme` (issue 22, ADR 0219).
pub const ACME: &str = "acme-token-00000000000001";

pub const SERVICES: &[(&str, &str)] = &[
    ("QUEUE_SERVICE_TOKEN_AUDITOR", AUDITOR),
    ("QUEUE_SERVICE_SCOPES_AUDITOR", "audit:write,audit:read"),
    ("QUEUE_SERVICE_TOKEN_OPS", OPS),
    (
        "QUEUE_SERVICE_SCOPES_OPS",
        "admin,internal,rbac:read,rbac:write",
    ),
    ("QUEUE_SERVICE_TOKEN_READER", READER),
    ("QUEUE_SERVICE_SCOPES_READER", "audit:read,rbac:read"),
    ("QUEUE_SERVICE_TOKEN_ACME", ACME),
    (
        "QUEUE_SERVICE_SCOPES_ACME",
        "admin,internal,rbac:read,rbac:write,audit:read,audit:write",
    ),
    ("QUEUE_SERVICE_TENANTS_ACME", "acme"),
];

pub async fn service_app(pool: PgPool) -> TestApp {
    TestApp::with(pool, SERVICES).await
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn customer_count_needs_the_internal_scope(pool: PgPool) {
    let app = service_app(pool).await;
    let tokens = app.register(&mut Passkey::new(), "ada@example.com").await;
    app.catch_up().await;

    let ok = app.get_auth("/api/v1/internal/customers/count", OPS).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
    assert_eq!(ok.json, json!({"count": 1}));

    // A token without the scope: 403 forbidden.
    for token in [AUDITOR, READER] {
        app.get_auth("/api/v1/internal/customers/count", token)
            .await
            .assert_error(StatusCode::FORBIDDEN, "forbidden");
    }
    // A customer's JWT is never accepted on a service route: 403.
    app.get_auth("/api/v1/internal/customers/count", &bearer(&tokens))
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    // No token, a wrong token, a near-miss token: 401 unauthorized.
    app.get("/api/v1/internal/customers/count")
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    for token in ["nope", "ops-token-000000000000002", &OPS[..OPS.len() - 1]] {
        app.get_auth("/api/v1/internal/customers/count", token)
            .await
            .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    }
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn service_routes_answer_404_with_the_flag_off(pool: PgPool) {
    let mut overrides = SERVICES.to_vec();
    overrides.push(("FLAG_QUEUE_V1", "0"));
    let app = TestApp::with(pool, &overrides).await;
    app.get_auth("/api/v1/internal/customers/count", OPS)
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
}

pub fn audit_body(key: &str) -> serde_json::Value {
    json!({
        "actor": "ops@example.com",
        "action": "founders.gate.check_failed",
        "target": "registration",
        "customer_id": "7f1c1e4e-0000-4000-8000-000000000001",
        "ticket_id": "T-1",
        "occurred_at": "2026-01-02T03:04:05Z",
        "metadata": {"attempt": 1},
        "idempotency_key": key,
    })
}

async fn seal_and_verify(app: &TestApp) {
    use queue_eventstore::{verify_store, CheckpointSigner, Sealer, SealerConfig, VerifyInput};
    let signer =
        std::sync::Arc::new(CheckpointSigner::from_seed("queue.test/api", [5; 32]).unwrap());
    Sealer::new(
        signer.clone(),
        SealerConfig::default(),
        crate::helpers::mac_keys(),
    )
    .seal_pending(&app.sealer)
    .await
    .unwrap();
    let keys = crate::helpers::mac_keys().current();
    let verifier = signer.verifier();
    let report = verify_store(
        &app.state.pool,
        &VerifyInput {
            mac_keys: &keys,
            checkpoint_key: &verifier,
            external_checkpoints: &[],
        },
        &queue_eventstore::verify::NoProgress,
    )
    .await
    .unwrap();
    assert!(report.ok, "{:?}", report.first_problem);
    assert_eq!(report.unsealed, 0);
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn audit_events_are_idempotent_per_service_and_land_in_the_ledger(pool: PgPool) {
    let app = service_app(pool).await;
    let before = app.event_count().await;
    let first = app
        .post_auth("/api/v1/audit/events", audit_body("k-1"), AUDITOR)
        .await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    assert_eq!(first.json["ledger_status"], "appended");
    let event_id = first.json["event_id"].as_str().unwrap().to_owned();
    let hash = first.json["hash"].as_str().unwrap().to_owned();
    assert_eq!(hash.len(), 64);
    assert_eq!(
        event_id,
        queue_domain::types::AuditEventId::for_idempotency_key("auditor", "k-1").to_string()
    );

    // Same key again, even with another body: 200 with the original event.
    let mut changed = audit_body("k-1");
    changed["target"] = json!("something else");
    let again = app
        .post_auth("/api/v1/audit/events", changed, AUDITOR)
        .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    assert_eq!(again.json["event_id"], event_id.as_str());
    assert_eq!(again.json["hash"], hash.as_str());
    assert_eq!(again.json["event"]["target"], "registration");
    assert_eq!(again.json["event"]["actor"], "ops@example.com");
    assert_eq!(again.json["event"]["service"], "auditor");
    assert_eq!(app.event_count().await, before + 1);

    seal_and_verify(&app).await;
    let sealed = app
        .post_auth("/api/v1/audit/events", audit_body("k-1"), AUDITOR)
        .await;
    assert_eq!(sealed.status, StatusCode::OK, "{}", sealed.text);
    assert_eq!(sealed.json["ledger_status"], "sealed");

    // The reader pages it with its ledger place.
    app.catch_up().await;
    let page = app
        .get_auth(
            "/api/v1/audit/events?action=founders.gate.check_failed&customer_id=7f1c1e4e-0000-4000-8000-000000000001",
            READER,
        )
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    let events = page.json["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{}", page.text);
    assert_eq!(events[0]["event_id"], event_id.as_str());
    assert_eq!(events[0]["hash"], hash.as_str());
    assert_eq!(events[0]["service"], "auditor");
    assert!(events[0]["ledger_seq"].is_i64(), "{}", page.text);
    assert!(events[0]["mac"].is_string(), "{}", page.text);
    assert_eq!(events[0]["metadata"], json!({"attempt": 1}));
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn the_same_key_from_two_services_is_two_events(pool: PgPool) {
    let app = TestApp::with(
        pool,
        &[
            SERVICES,
            &[
                ("QUEUE_SERVICE_TOKEN_BILLING", "billing-token-000000001"),
                ("QUEUE_SERVICE_SCOPES_BILLING", "audit:write"),
            ],
        ]
        .concat(),
    )
    .await;
    let a = app
        .post_auth("/api/v1/audit/events", audit_body("shared"), AUDITOR)
        .await;
    let b = app
        .post_auth(
            "/api/v1/audit/events",
            audit_body("shared"),
            "billing-token-000000001",
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    assert_eq!(b.status, StatusCode::CREATED, "{}", b.text);
    assert_ne!(a.json["event_id"], b.json["event_id"]);
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn audit_scopes_are_enforced(pool: PgPool) {
    let app = service_app(pool).await;
    let tokens = app.register(&mut Passkey::new(), "ada@example.com").await;
    for token in [OPS, READER] {
        app.post_auth("/api/v1/audit/events", audit_body("k"), token)
            .await
            .assert_error(StatusCode::FORBIDDEN, "forbidden");
    }
    app.post_auth("/api/v1/audit/events", audit_body("k"), &bearer(&tokens))
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    app.post("/api/v1/audit/events", audit_body("k"))
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    app.get_auth("/api/v1/audit/events", OPS)
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    app.get_auth("/api/v1/audit/events", &bearer(&tokens))
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    app.get("/api/v1/audit/events")
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    let ok = app.get_auth("/api/v1/audit/events", AUDITOR).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn bad_audit_input_names_the_field_and_writes_nothing(pool: PgPool) {
    let app = service_app(pool).await;
    let before = app.event_count().await;
    let cases: &[(&str, serde_json::Value)] = &[
        ("customer_id", json!("not-a-uuid")),
        ("action", json!("Has Spaces")),
        ("actor", json!("")),
        ("target", json!("")),
        ("occurred_at", json!("yesterday")),
        ("idempotency_key", json!("has space")),
        ("ticket_id", json!("a b")),
        ("metadata", json!([1, 2])),
        ("metadata", json!({"f": 1.5})),
    ];
    for (field, value) in cases {
        let mut body = audit_body("k");
        body[*field] = value.clone();
        let response = app.post_auth("/api/v1/audit/events", body, AUDITOR).await;
        response.assert_error(StatusCode::BAD_REQUEST, "invalid_request");
        let message = response.json["error"]["message"].as_str().unwrap();
        assert!(message.contains(field), "{field}: {message}");
    }
    let mut body = audit_body("k");
    body.as_object_mut().unwrap().remove("idempotency_key");
    let response = app.post_auth("/api/v1/audit/events", body, AUDITOR).await;
    response.assert_error(StatusCode::BAD_REQUEST, "invalid_request");
    assert!(
        response.text.contains("idempotency_key"),
        "{}",
        response.text
    );

    // Metadata over 16 KiB (the body is still under the 64 KiB limit): 413.
    let mut body = audit_body("k");
    body["metadata"] = json!({"blob": "x".repeat(17 * 1024)});
    app.post_auth("/api/v1/audit/events", body, AUDITOR)
        .await
        .assert_error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");

    for query in [
        "customer_id=nope",
        "since=yesterday",
        "until=x",
        "limit=0",
        "limit=100000",
        "cursor=%21%21",
    ] {
        let field = query.split('=').next().unwrap();
        let response = app
            .get_auth(&format!("/api/v1/audit/events?{query}"), READER)
            .await;
        response.assert_error(StatusCode::BAD_REQUEST, "invalid_request");
        assert!(response.text.contains(field), "{query}: {}", response.text);
    }
    assert_eq!(app.event_count().await, before);
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn the_audit_log_pages_with_cursors(pool: PgPool) {
    let app = service_app(pool).await;
    for i in 0..5 {
        let r = app
            .post_auth(
                "/api/v1/audit/events",
                audit_body(&format!("p-{i}")),
                AUDITOR,
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    }
    app.catch_up().await;
    let mut seen = Vec::new();
    let mut path = "/api/v1/audit/events?action=founders.gate.check_failed&limit=2".to_owned();
    loop {
        let page = app.get_auth(&path, READER).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text);
        for e in page.json["events"].as_array().unwrap() {
            seen.push(e["event_id"].as_str().unwrap().to_owned());
        }
        match page.json["next_cursor"].as_str() {
            Some(cursor) => {
                path = format!(
                    "/api/v1/audit/events?action=founders.gate.check_failed&limit=2&cursor={cursor}"
                )
            }
            None => break,
        }
    }
    let expected: Vec<String> = (0..5)
        .map(|i| {
            queue_domain::types::AuditEventId::for_idempotency_key("auditor", &format!("p-{i}"))
                .to_string()
        })
        .collect();
    assert_eq!(seen, expected);
}

/// A time-filtered audit page walks a little of the log, then reads the
/// `occurred_at` range, then walks the log (`read::audit_events_with`): every
/// plan, small or not, must page the same rows in the same order as
/// filtering the whole log by hand. The events' `occurred_at` runs against
/// log order on purpose.
#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn time_filtered_audit_pages_are_the_same_under_every_plan(pool: PgPool) {
    use chrono::{DateTime, Duration, TimeZone, Utc};
    use queue_projections::read::{self, AuditFilter, AuditTimePlan};

    let app = service_app(pool.clone()).await;
    let t0 = Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap();
    for i in 0..24i64 {
        // Hours 0, 23, 2, 21, …: early and late times interleave in the log.
        let hour = if i % 2 == 0 { i } else { 24 - i };
        let mut body = audit_body(&format!("t-{i}"));
        body["occurred_at"] = json!((t0 + Duration::hours(hour)).to_rfc3339());
        if i % 3 == 0 {
            body["action"] = json!("invoice.paid");
        }
        let r = app.post_auth("/api/v1/audit/events", body, AUDITOR).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    }
    app.catch_up().await;
    let all = read::audit_events(
        &pool,
        &AuditFilter {
            limit: Some(read::MAX_AUDIT_PAGE),
            ..AuditFilter::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(all.events.len(), 24);
    assert!(all.next_cursor.is_none());

    let at = |h: i64| Some(t0 + Duration::hours(h));
    type Window = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);
    let windows: [Window; 6] = [
        (at(0), at(6)),
        (at(18), None),
        (None, at(3)),
        (at(5), at(19)),
        (at(30), None),
        (at(11), at(13)),
    ];
    let plans = [
        AuditTimePlan { walk: 1, range: 1 },
        AuditTimePlan { walk: 2, range: 3 },
        AuditTimePlan {
            walk: 3,
            range: 100,
        },
        AuditTimePlan {
            walk: 100,
            range: 100,
        },
        read::AUDIT_TIME_PLAN,
    ];
    for (since, until) in windows {
        for action in [None, Some("invoice.paid")] {
            let expected: Vec<_> = all
                .events
                .iter()
                .filter(|e| since.is_none_or(|s| e.occurred_at >= s))
                .filter(|e| until.is_none_or(|u| e.occurred_at < u))
                .filter(|e| action.is_none_or(|a| e.action == a))
                .map(|e| e.event_id)
                .collect();
            for plan in plans {
                for limit in [1, 2, 5, 100] {
                    let mut filter = AuditFilter {
                        action: action.map(str::to_owned),
                        since,
                        until,
                        limit: Some(limit),
                        cursor: None,
                        ..AuditFilter::default()
                    };
                    let mut seen = Vec::new();
                    loop {
                        let page = read::audit_events_with(&pool, &filter, plan).await.unwrap();
                        assert!(page.events.len() as i64 <= limit);
                        seen.extend(page.events.iter().map(|e| e.event_id));
                        match page.next_cursor {
                            Some(cursor) => filter.cursor = Some(cursor),
                            None => break,
                        }
                    }
                    assert_eq!(
                        seen, expected,
                        "since {since:?} until {until:?} action {action:?} {plan:?} limit {limit}"
                    );
                }
            }
        }
    }
}

async fn customer_id_of(app: &TestApp, tokens: &serde_json::Value) -> String {
    let me = app.get_auth("/api/v1/auth/me", &bearer(tokens)).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.text);
    me.json["customer_id"].as_str().unwrap().to_owned()
}

async fn refresh(app: &TestApp, tokens: &serde_json::Value) -> crate::helpers::Response {
    app.post(
        "/api/v1/auth/session/refresh",
        json!({"refresh_token": tokens["refresh_token"]}),
    )
    .await
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn a_grant_reaches_the_next_jwt_and_a_revoke_removes_it(pool: PgPool) {
    let app = service_app(pool).await;
    let tokens = app.register(&mut Passkey::new(), "ada@example.com").await;
    let customer_id = customer_id_of(&app, &tokens).await;

    let granted = app
        .post_auth(
            "/api/v1/rbac/grants",
            json!({"customer_id": customer_id, "role": "support-agent", "ticket_id": "T-9",
                   "reason": "on call this week", "expires_at": "2099-01-01T00:00:00Z"}),
            OPS,
        )
        .await;
    assert_eq!(granted.status, StatusCode::CREATED, "{}", granted.text);
    let grant_id = granted.json["grant_id"].as_str().unwrap().to_owned();

    let roles = app
        .get_auth(
            &format!("/api/v1/rbac/customers/{customer_id}/roles"),
            READER,
        )
        .await;
    assert_eq!(roles.status, StatusCode::OK, "{}", roles.text);
    assert_eq!(roles.json["roles"][0]["grant_id"], grant_id.as_str());
    assert_eq!(roles.json["roles"][0]["role"], "support-agent");
    assert_eq!(roles.json["roles"][0]["ticket_id"], "T-9");
    assert_eq!(roles.json["roles"].as_array().unwrap().len(), 1);

    let next = refresh(&app, &tokens).await;
    assert_eq!(next.status, StatusCode::OK, "{}", next.text);
    let claims = crate::operations::claims_via_jwks(&app, &bearer(&next.json)).await;
    assert_eq!(claims["roles"], json!(["antlers-user", "support-agent"]));

    // The grant is in the event log with the service as actor and the reason.
    let (actor, reason): (String, String) = sqlx::query_as(
        "SELECT payload->'RoleGranted'->>'actor', payload->'RoleGranted'->>'reason' FROM events \
         WHERE event_type = 'RoleGranted'",
    )
    .fetch_one(&app.state.pool)
    .await
    .unwrap();
    assert_eq!(
        (actor.as_str(), reason.as_str()),
        ("ops", "on call this week")
    );

    let revoked = app
        .request(
            axum::http::Method::DELETE,
            &format!("/api/v1/rbac/grants/{grant_id}"),
            Some(json!({"reason": "rotation ended"})),
            Some(OPS),
        )
        .await;
    assert_eq!(revoked.status, StatusCode::NO_CONTENT, "{}", revoked.text);
    let after = refresh(&app, &next.json).await;
    assert_eq!(after.status, StatusCode::OK, "{}", after.text);
    let claims = crate::operations::claims_via_jwks(&app, &bearer(&after.json)).await;
    assert_eq!(claims["roles"], json!(["antlers-user"]));
    let roles = app
        .get_auth(&format!("/api/v1/rbac/customers/{customer_id}/roles"), OPS)
        .await;
    assert_eq!(roles.json["roles"], json!([]), "{}", roles.text);

    // Revoking again: 409; an unknown grant: 404.
    app.request(
        axum::http::Method::DELETE,
        &format!("/api/v1/rbac/grants/{grant_id}"),
        Some(json!({"reason": "again"})),
        Some(OPS),
    )
    .await
    .assert_error(StatusCode::CONFLICT, "conflict");
    app.request(
        axum::http::Method::DELETE,
        &format!("/api/v1/rbac/grants/{}", uuid::Uuid::new_v4()),
        Some(json!({"reason": "unknown"})),
        Some(OPS),
    )
    .await
    .assert_error(StatusCode::NOT_FOUND, "not_found");
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn rbac_scopes_and_bad_input(pool: PgPool) {
    let app = service_app(pool).await;
    let tokens = app.register(&mut Passkey::new(), "ada@example.com").await;
    let customer_id = customer_id_of(&app, &tokens).await;
    let body = json!({"customer_id": customer_id, "role": "auditor", "reason": "audit"});
    for token in [AUDITOR, READER, bearer(&tokens).as_str()] {
        app.post_auth("/api/v1/rbac/grants", body.clone(), token)
            .await
            .assert_error(StatusCode::FORBIDDEN, "forbidden");
    }
    app.post("/api/v1/rbac/grants", body.clone())
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    app.get_auth(
        &format!("/api/v1/rbac/customers/{customer_id}/roles"),
        AUDITOR,
    )
    .await
    .assert_error(StatusCode::FORBIDDEN, "forbidden");
    app.request(
        axum::http::Method::DELETE,
        &format!("/api/v1/rbac/grants/{}", uuid::Uuid::new_v4()),
        Some(json!({"reason": "x"})),
        Some(READER),
    )
    .await
    .assert_error(StatusCode::FORBIDDEN, "forbidden");

    let before = app.event_count().await;
    let cases: &[(&str, serde_json::Value)] = &[
        ("customer_id", json!("not-a-uuid")),
        ("role", json!("root")),
        ("role", json!("Not A Role")),
        ("reason", json!("")),
        ("reason", json!("   ")),
        ("expires_at", json!("soon")),
        ("expires_at", json!("2001-01-01T00:00:00Z")),
        ("ticket_id", json!("a b")),
    ];
    for (field, value) in cases {
        let mut b = body.clone();
        b[*field] = value.clone();
        let response = app.post_auth("/api/v1/rbac/grants", b, OPS).await;
        response.assert_error(StatusCode::BAD_REQUEST, "invalid_request");
        let message = response.json["error"]["message"].as_str().unwrap();
        assert!(message.contains(field), "{field}: {message}");
    }
    let response = app
        .request(
            axum::http::Method::DELETE,
            "/api/v1/rbac/grants/not-a-uuid",
            Some(json!({"reason": "x"})),
            Some(OPS),
        )
        .await;
    response.assert_error(StatusCode::BAD_REQUEST, "invalid_request");
    assert!(response.text.contains("grant_id"), "{}", response.text);
    let response = app
        .request(
            axum::http::Method::DELETE,
            &format!("/api/v1/rbac/grants/{}", uuid::Uuid::new_v4()),
            Some(json!({"reason": ""})),
            Some(OPS),
        )
        .await;
    response.assert_error(StatusCode::BAD_REQUEST, "invalid_request");
    assert!(response.text.contains("reason"), "{}", response.text);
    let response = app.get_auth("/api/v1/rbac/customers/nope/roles", OPS).await;
    response.assert_error(StatusCode::BAD_REQUEST, "invalid_request");
    assert!(response.text.contains("customer_id"), "{}", response.text);
    // An unknown customer: 404.
    let mut b = body.clone();
    b["customer_id"] = json!(uuid::Uuid::new_v4().to_string());
    app.post_auth("/api/v1/rbac/grants", b, OPS)
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    assert_eq!(app.event_count().await, before);
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn the_role_catalogue_is_configurable(pool: PgPool) {
    let app = TestApp::with(
        pool,
        &[
            SERVICES,
            &[("QUEUE_ROLE_CATALOGUE", "antlers-user,night-shift")],
        ]
        .concat(),
    )
    .await;
    let tokens = app.register(&mut Passkey::new(), "ada@example.com").await;
    let customer_id = customer_id_of(&app, &tokens).await;
    let ok = app
        .post_auth(
            "/api/v1/rbac/grants",
            json!({"customer_id": customer_id, "role": "night-shift", "reason": "r"}),
            OPS,
        )
        .await;
    assert_eq!(ok.status, StatusCode::CREATED, "{}", ok.text);
    app.post_auth(
        "/api/v1/rbac/grants",
        json!({"customer_id": customer_id, "role": "auditor", "reason": "r"}),
        OPS,
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, "invalid_request");
}

async fn suspend(app: &TestApp, customer_id: &str, token: &str) -> crate::helpers::Response {
    app.post_auth(
        &format!("/api/v1/admin/customers/{customer_id}/suspend"),
        json!({"reason": "fraud review"}),
        token,
    )
    .await
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn suspension_revokes_every_session_and_reinstatement_allows_login(pool: PgPool) {
    let app = service_app(pool).await;
    let mut passkey = Passkey::new();
    let first = app.register(&mut passkey, "ada@example.com").await;
    let second = app.login(&mut passkey, "ada@example.com").await;
    let customer_id = customer_id_of(&app, &first).await;

    let done = suspend(&app, &customer_id, OPS).await;
    assert_eq!(done.status, StatusCode::NO_CONTENT, "{}", done.text);
    // Both sessions were revoked in the same append as the suspension.
    let (suspended_xid, revoked): (i64, Vec<i64>) = {
        let xid: i64 = sqlx::query_scalar(
            "SELECT commit_xid FROM events WHERE event_type = 'CustomerSuspended'",
        )
        .fetch_one(&app.state.pool)
        .await
        .unwrap();
        let revoked: Vec<i64> = sqlx::query_scalar(
            "SELECT commit_xid FROM events WHERE event_type = 'SessionRevoked' \
             AND payload->'SessionRevoked'->>'reason' = 'suspended'",
        )
        .fetch_all(&app.state.pool)
        .await
        .unwrap();
        (xid, revoked)
    };
    assert_eq!(revoked, vec![suspended_xid, suspended_xid]);

    // Existing tokens stop working; refresh fails; login is refused.
    for tokens in [&first, &second] {
        app.get_auth("/api/v1/auth/me", &bearer(tokens))
            .await
            .assert_error(StatusCode::UNAUTHORIZED, "session_revoked");
        refresh(&app, tokens)
            .await
            .assert_error(StatusCode::FORBIDDEN, "customer_suspended");
    }
    let begin = app.login_begin(Some("ada@example.com")).await;
    let credential = passkey.get(&begin["options"]);
    app.login_complete(&begin["challenge_id"], credential)
        .await
        .assert_error(StatusCode::FORBIDDEN, "customer_suspended");
    // Suspending twice: 409.
    suspend(&app, &customer_id, OPS)
        .await
        .assert_error(StatusCode::CONFLICT, "conflict");

    // History at now shows the suspension and the revoked sessions.
    let history = app
        .get_auth(
            &format!("/api/v1/admin/customers/{customer_id}/history"),
            OPS,
        )
        .await;
    assert_eq!(history.status, StatusCode::OK, "{}", history.text);
    assert_eq!(history.json["customer_id"], customer_id.as_str());
    assert_eq!(
        history.json["state"]["status"], "suspended",
        "{}",
        history.text
    );
    assert!(history.json["events"].as_array().unwrap().len() >= 4);
    // Before registration the customer did not exist.
    let before = app
        .get_auth(
            &format!("/api/v1/admin/customers/{customer_id}/history?at=2000-01-01T00:00:00Z"),
            OPS,
        )
        .await;
    assert_eq!(before.status, StatusCode::OK, "{}", before.text);
    assert!(before.json["state"].is_null(), "{}", before.text);

    let done = app
        .post_auth(
            &format!("/api/v1/admin/customers/{customer_id}/reinstate"),
            json!({"reason": "cleared"}),
            OPS,
        )
        .await;
    assert_eq!(done.status, StatusCode::NO_CONTENT, "{}", done.text);
    let tokens = app.login(&mut passkey, "ada@example.com").await;
    let me = app.get_auth("/api/v1/auth/me", &bearer(&tokens)).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.text);
    // Reinstating an active customer: 409 (no body: the default reason).
    let again = app
        .request(
            axum::http::Method::POST,
            &format!("/api/v1/admin/customers/{customer_id}/reinstate"),
            None,
            Some(OPS),
        )
        .await;
    again.assert_error(StatusCode::CONFLICT, "conflict");
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn admin_scopes_and_bad_input(pool: PgPool) {
    let app = service_app(pool).await;
    let tokens = app.register(&mut Passkey::new(), "ada@example.com").await;
    let customer_id = customer_id_of(&app, &tokens).await;
    let before = app.event_count().await;
    for token in [AUDITOR, READER, bearer(&tokens).as_str()] {
        suspend(&app, &customer_id, token)
            .await
            .assert_error(StatusCode::FORBIDDEN, "forbidden");
        app.get_auth(
            &format!("/api/v1/admin/customers/{customer_id}/history"),
            token,
        )
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    }
    app.post(
        &format!("/api/v1/admin/customers/{customer_id}/suspend"),
        json!({"reason": "x"}),
    )
    .await
    .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    let r = suspend(&app, "not-a-uuid", OPS).await;
    r.assert_error(StatusCode::BAD_REQUEST, "invalid_request");
    assert!(r.text.contains("customer_id"), "{}", r.text);
    let r = app
        .post_auth(
            &format!("/api/v1/admin/customers/{customer_id}/suspend"),
            json!({"reason": " "}),
            OPS,
        )
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "invalid_request");
    assert!(r.text.contains("reason"), "{}", r.text);
    let r = app
        .get_auth(
            &format!("/api/v1/admin/customers/{customer_id}/history?at=yesterday"),
            OPS,
        )
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "invalid_request");
    assert!(r.text.contains("at"), "{}", r.text);
    suspend(&app, &uuid::Uuid::new_v4().to_string(), OPS)
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    assert_eq!(app.event_count().await, before);
}

async fn audit_actions(app: &TestApp, action: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE aggregate_type = 'Audit' \
         AND payload->'AuditRecorded'->>'action' = $1",
    )
    .bind(action)
    .fetch_one(&app.state.pool)
    .await
    .unwrap()
}

async fn customers_in_log(app: &TestApp) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE aggregate_type = 'Customer' AND sequence = 1",
    )
    .fetch_one(&app.state.pool)
    .await
    .unwrap()
}

/// Begins a registration and answers it with a new passkey; returns the
/// complete request's body.
async fn prepared_registration(app: &TestApp, email: &str) -> serde_json::Value {
    let begin = app.register_begin(email).await;
    let credential = Passkey::new().create(&begin["options"]);
    json!({"challenge_id": begin["challenge_id"], "credential": credential, "name": "key"})
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn the_founders_gate_is_exact_under_concurrent_registrations(pool: PgPool) {
    let app = TestApp::with(
        pool,
        &[
            SERVICES,
            &[
                ("FLAG_FOUNDERS_GATE", "1"),
                ("FOUNDERS_COUNT_VERIFIED_ONLY", "0"),
                ("FOUNDERS_COHORT_THRESHOLD", "20"),
            ],
        ]
        .concat(),
    )
    .await;
    let mut bodies = Vec::new();
    for i in 0..50 {
        bodies.push(prepared_registration(&app, &format!("founder{i}@example.com")).await);
    }
    let responses = futures::future::join_all(
        bodies
            .into_iter()
            .map(|body| app.post("/api/v1/auth/webauthn/register/complete", body)),
    )
    .await;
    let admitted = responses
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .count();
    let refused: Vec<_> = responses
        .iter()
        .filter(|r| r.status != StatusCode::CREATED)
        .collect();
    for r in &refused {
        r.assert_error(StatusCode::FORBIDDEN, "founders_cohort_full");
    }
    assert_eq!((admitted, refused.len()), (20, 30));
    assert_eq!(customers_in_log(&app).await, 20);
    assert_eq!(audit_actions(&app, "founders.gate.rejected").await, 30);
    assert_eq!(audit_actions(&app, "founders.gate.check_failed").await, 0);

    app.catch_up().await;
    let count = app.get_auth("/api/v1/internal/customers/count", OPS).await;
    assert_eq!(count.json, json!({"count": 20}), "{}", count.text);
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn the_founders_gate_counts_customers_from_before_it_ran(pool: PgPool) {
    let app = TestApp::with(
        pool.clone(),
        &[
            ("FLAG_FOUNDERS_GATE", "0"),
            ("FOUNDERS_COHORT_THRESHOLD", "2"),
        ],
    )
    .await;
    app.register(&mut Passkey::new(), "early@example.com").await;
    let gated = TestApp::with(
        pool,
        &[
            ("FLAG_FOUNDERS_GATE", "1"),
            ("FOUNDERS_COUNT_VERIFIED_ONLY", "0"),
            ("FOUNDERS_COHORT_THRESHOLD", "2"),
        ],
    )
    .await;
    gated
        .register(&mut Passkey::new(), "second@example.com")
        .await;
    let body = prepared_registration(&gated, "third@example.com").await;
    gated
        .post("/api/v1/auth/webauthn/register/complete", body)
        .await
        .assert_error(StatusCode::FORBIDDEN, "founders_cohort_full");
    assert_eq!(customers_in_log(&gated).await, 2);
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn the_founders_gate_fails_open_when_the_count_cannot_be_read(pool: PgPool) {
    let app = TestApp::with(
        pool,
        &[
            ("FLAG_FOUNDERS_GATE", "1"),
            ("FOUNDERS_COUNT_VERIFIED_ONLY", "0"),
            ("FOUNDERS_COHORT_THRESHOLD", "1"),
        ],
    )
    .await;
    // An operator's mistake (only the owner can rename a table).
    sqlx::query("ALTER TABLE founders_gate RENAME TO founders_gate_gone")
        .execute(&app.owner)
        .await
        .unwrap();
    app.register(&mut Passkey::new(), "a@example.com").await;
    app.register(&mut Passkey::new(), "b@example.com").await;
    assert_eq!(customers_in_log(&app).await, 2);
    assert_eq!(audit_actions(&app, "founders.gate.check_failed").await, 2);
    assert_eq!(audit_actions(&app, "founders.gate.rejected").await, 0);
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn the_audit_writer_is_rate_limited_per_service(pool: PgPool) {
    let app = TestApp::with(
        pool,
        &[
            SERVICES,
            &[
                ("QUEUE_RATE_LIMIT_PER_SERVICE", "2"),
                ("QUEUE_SERVICE_TOKEN_BILLING", "billing-token-000000001"),
                ("QUEUE_SERVICE_SCOPES_BILLING", "audit:write"),
            ],
        ]
        .concat(),
    )
    .await;
    for i in 0..2 {
        let r = app
            .post_auth(
                "/api/v1/audit/events",
                audit_body(&format!("r-{i}")),
                AUDITOR,
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    }
    let limited = app
        .post_auth("/api/v1/audit/events", audit_body("r-2"), AUDITOR)
        .await;
    limited.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert!(limited.headers.contains_key("retry-after"));
    // Another service has its own budget.
    let other = app
        .post_auth(
            "/api/v1/audit/events",
            audit_body("r-2"),
            "billing-token-000000001",
        )
        .await;
    assert_eq!(other.status, StatusCode::CREATED, "{}", other.text);
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn queue_security_events_are_in_the_audit_log(pool: PgPool) {
    let app = service_app(pool).await;
    let tokens = app.register(&mut Passkey::new(), "ada@example.com").await;
    let customer_id = customer_id_of(&app, &tokens).await;
    let granted = app
        .post_auth(
            "/api/v1/rbac/grants",
            json!({"customer_id": customer_id, "role": "auditor", "reason": "quarterly audit"}),
            OPS,
        )
        .await;
    assert_eq!(granted.status, StatusCode::CREATED, "{}", granted.text);
    let done = suspend(&app, &customer_id, OPS).await;
    assert_eq!(done.status, StatusCode::NO_CONTENT, "{}", done.text);
    app.catch_up().await;
    let page = app
        .get_auth(
            &format!("/api/v1/audit/events?customer_id={customer_id}&limit=1000"),
            READER,
        )
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    let events = page.json["events"].as_array().unwrap();
    let types: Vec<&str> = events
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    for expected in ["CustomerRegistered", "RoleGranted", "CustomerSuspended"] {
        assert!(types.contains(&expected), "{expected} in {types:?}");
    }
    let suspended = events
        .iter()
        .find(|e| e["event_type"] == "CustomerSuspended")
        .unwrap();
    assert_eq!(suspended["actor"], "ops", "{suspended}");
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn no_login_racing_a_suspension_keeps_a_live_session(pool: PgPool) {
    use queue_domain::session::SessionStatus;
    let app = service_app(pool).await;
    let mut passkey = Passkey::new();
    let tokens = app.register(&mut passkey, "ada@example.com").await;
    let customer_id = customer_id_of(&app, &tokens).await;
    let mut assertions = Vec::new();
    for _ in 0..8 {
        let begin = app.login_begin(Some("ada@example.com")).await;
        let credential = passkey.get(&begin["options"]);
        assertions.push((begin["challenge_id"].clone(), credential));
    }
    let logins = futures::future::join_all(
        assertions
            .iter()
            .map(|(challenge, credential)| app.login_complete(challenge, credential.clone())),
    );
    let (logins, suspended) = tokio::join!(logins, suspend(&app, &customer_id, OPS));
    assert_eq!(
        suspended.status,
        StatusCode::NO_CONTENT,
        "{}",
        suspended.text
    );
    for login in &logins {
        // Each login either committed before the suspension (and its session
        // was revoked by it) or saw it; a WebAuthn refusal can come from the
        // sign counter when two assertions race.
        assert!(
            [
                StatusCode::OK,
                StatusCode::FORBIDDEN,
                StatusCode::UNAUTHORIZED
            ]
            .contains(&login.status),
            "{}",
            login.text
        );
    }
    let now = app.state.now();
    let id: queue_domain::types::CustomerId = customer_id.parse().unwrap();
    let sessions = app.state.store().sessions_of(id).await.unwrap();
    assert!(!sessions.is_empty());
    for session in sessions {
        let state = session.aggregate.state().unwrap();
        assert!(
            !matches!(state.status(now), SessionStatus::Active),
            "a session outlived the suspension"
        );
    }
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn the_service_routes_are_in_the_openapi_document(pool: PgPool) {
    let app = service_app(pool).await;
    let doc = app.get("/openapi.json").await;
    assert_eq!(doc.status, StatusCode::OK);
    let paths = &doc.json["paths"];
    for (path, method) in [
        ("/api/v1/audit/events", "post"),
        ("/api/v1/audit/events", "get"),
        ("/api/v1/internal/customers/count", "get"),
        ("/api/v1/rbac/grants", "post"),
        ("/api/v1/rbac/grants/{grant_id}", "delete"),
        ("/api/v1/rbac/customers/{customer_id}/roles", "get"),
        ("/api/v1/admin/customers/{customer_id}/suspend", "post"),
        ("/api/v1/admin/customers/{customer_id}/reinstate", "post"),
        ("/api/v1/admin/customers/{customer_id}/history", "get"),
    ] {
        assert!(paths[path][method].is_object(), "{method} {path} missing");
    }
}
