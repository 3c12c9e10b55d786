//! Tenant isolation in depth (issue 22, ADR 0219): a service token limited
//! to tenant `acme` meets every service and admin route with another
//! tenant's ids and gets 404 (or 403 where nothing is named), with nothing
//! appended; and row-level security binds a query that forgets its tenant
//! filter to the transaction's tenants, on every read table, before and
//! after a rebuild.

use std::collections::{BTreeMap, BTreeSet};

use axum::http::{Method, StatusCode};
use queue_domain::types::{TenantId, TenantSlug};
use queue_eventstore::roles::Role;
use queue_projections::{rebuild, rebuild::NoProgress, RebuildOptions};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{connect_as, Passkey, TestApp};
use crate::saml_acs::{ask, page_refresh, post_acs, setup, start_login, Setup};
use crate::service::{ACME, AUDITOR, OPS};
use crate::tenants::{create_tenant, jwt_claims, IDP_METADATA};

/// Every read table (the projections' tables).
const READ_TABLES: &[&str] = &[
    "queue_customers",
    "queue_customer_roles",
    "queue_backup_codes",
    "queue_email_verifications",
    "queue_webauthn_credentials",
    "queue_sessions",
    "queue_session_refresh_tokens",
    "customer_audit_events",
];

fn tenant(slug: &str) -> Uuid {
    *TenantId::for_slug(&TenantSlug::parse(slug).unwrap()).as_uuid()
}

/// Ids of one tenant's things, as a route names them.
struct Ids {
    customer: String,
    grant: String,
    tenant: String,
    /// An access token of `customer`.
    access: String,
}

struct World {
    app: TestApp,
    /// acme: a customer provisioned by a SAML login (session, SAML grant).
    acme: Ids,
    /// globex (a second tenant with a SAML connection) for the tenant
    /// routes; the default tenant's passkey customer (credential, session,
    /// grant, backup codes, an external audit entry) for the rest.
    other: Ids,
}

async fn world(pool: PgPool) -> World {
    let Setup { app, idp, base } = setup(pool).await;
    // acme: a JIT-provisioned customer with a session and the `eng` grant.
    let relay = start_login(&app, &format!("{base}/account")).await;
    let (_, responses) = idp.issue(&[ask(&base, "acme", &relay, "ann@example.com")]);
    let acs = post_acs(&app, &responses[0], &relay).await;
    assert_eq!(acs.status, StatusCode::SEE_OTHER, "{}", acs.text);
    let acme_access = page_refresh(&app, &acs).await;
    let acme_customer: String = sqlx::query_scalar(
        "SELECT aggregate_id FROM events WHERE event_type = 'CustomerProvisioned' \
         AND payload->'CustomerProvisioned'->>'email' = 'ann@example.com'",
    )
    .fetch_one(&app.owner)
    .await
    .unwrap();

    // The default tenant: a passkey customer with everything a customer has.
    let tokens = app.register(&mut Passkey::new(), "bob@example.com").await;
    let access = tokens["access_token"].as_str().unwrap();
    let other_access = access.to_owned();
    let other_customer = jwt_claims(access)["sub"].as_str().unwrap().to_owned();
    let codes = app
        .post_auth("/api/v1/auth/backup-codes", json!({}), access)
        .await;
    assert!(codes.status.is_success(), "{}", codes.text);
    let verify = app
        .post_auth("/api/v1/auth/email/verification", json!({}), access)
        .await;
    assert!(verify.status.is_success(), "{}", verify.text);
    let granted = app
        .post_auth(
            "/api/v1/rbac/grants",
            json!({"customer_id": other_customer, "role": "auditor", "reason": "quarterly review"}),
            OPS,
        )
        .await;
    assert_eq!(granted.status, StatusCode::CREATED, "{}", granted.text);
    let recorded = app
        .post_auth(
            "/api/v1/audit/events",
            json!({"actor": "agent:7", "action": "ticket.viewed", "target": "ticket:9",
                   "customer_id": other_customer, "idempotency_key": "k-1"}),
            AUDITOR,
        )
        .await;
    assert_eq!(recorded.status, StatusCode::CREATED, "{}", recorded.text);

    // A second tenant with a connection, for the tenant routes.
    let globex = create_tenant(&app, "globex").await;
    let put = app
        .request(
            Method::PUT,
            &format!("/api/v1/tenants/{globex}/saml"),
            Some(saml_settings()),
            Some(OPS),
        )
        .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.text);
    app.catch_up().await;

    let acme_roles = app
        .get_auth(
            &format!("/api/v1/rbac/customers/{acme_customer}/roles"),
            OPS,
        )
        .await;
    let acme_grant = acme_roles.json["roles"][0]["grant_id"]
        .as_str()
        .unwrap()
        .to_owned();
    World {
        app,
        acme: Ids {
            customer: acme_customer,
            grant: acme_grant,
            tenant: tenant("acme").to_string(),
            access: acme_access,
        },
        other: Ids {
            customer: other_customer,
            grant: granted.json["grant_id"].as_str().unwrap().to_owned(),
            tenant: globex,
            access: other_access,
        },
    }
}

fn saml_settings() -> Value {
    json!({"idp_metadata": IDP_METADATA, "email_attribute": "mail", "jit_provisioning": true})
}

/// Every route that names a customer, grant or tenant, with `ids` filled
/// in; in the order that lets each succeed when the ids are the caller's
/// own (suspend before reinstate, the grant's revoke last but one).
fn named_routes(ids: &Ids) -> Vec<(Method, String, Option<Value>)> {
    let Ids {
        customer,
        grant,
        tenant,
        ..
    } = ids;
    vec![
        (
            Method::POST,
            "/api/v1/audit/events".into(),
            Some(
                json!({"actor": "agent:7", "action": "ticket.viewed", "target": "ticket:9",
                        "customer_id": customer, "idempotency_key": format!("x-{customer}")}),
            ),
        ),
        (
            Method::GET,
            format!("/api/v1/audit/events?customer_id={customer}"),
            None,
        ),
        (
            Method::POST,
            "/api/v1/rbac/grants".into(),
            Some(json!({"customer_id": customer, "role": "auditor", "reason": "review"})),
        ),
        (
            Method::GET,
            format!("/api/v1/rbac/customers/{customer}/roles"),
            None,
        ),
        (
            Method::POST,
            format!("/api/v1/admin/customers/{customer}/suspend"),
            Some(json!({"reason": "fraud check"})),
        ),
        (
            Method::POST,
            format!("/api/v1/admin/customers/{customer}/reinstate"),
            Some(json!({"reason": "cleared"})),
        ),
        (
            Method::GET,
            format!("/api/v1/admin/customers/{customer}/history"),
            None,
        ),
        (
            Method::DELETE,
            format!("/api/v1/rbac/grants/{grant}"),
            Some(json!({"reason": "no longer needed"})),
        ),
        (Method::GET, format!("/api/v1/tenants/{tenant}"), None),
        (
            Method::POST,
            format!("/api/v1/tenants/{tenant}/sessions/revoke"),
            Some(json!({"reason": "IdP key rotation", "saml_only": true})),
        ),
        (
            Method::PATCH,
            format!("/api/v1/tenants/{tenant}"),
            Some(json!({"name": "Renamed Inc."})),
        ),
        (
            Method::PUT,
            format!("/api/v1/tenants/{tenant}/saml"),
            Some(saml_settings()),
        ),
        (
            Method::DELETE,
            format!("/api/v1/tenants/{tenant}/saml"),
            Some(json!({"reason": "moving IdP"})),
        ),
    ]
}

/// The OpenAPI path of a concrete request path (ids → `{…}`).
fn template(path: &str) -> String {
    let path = path.split('?').next().unwrap_or(path);
    path.split('/')
        .enumerate()
        .map(|(i, part)| {
            if Uuid::parse_str(part).is_err() {
                return part.to_owned();
            }
            let name = match path.split('/').nth(i - 1) {
                Some("customers") => "{customer_id}",
                Some("grants") => "{grant_id}",
                _ => "{tenant_id}",
            };
            name.to_owned()
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Every service-tagged operation of the OpenAPI document.
fn service_operations() -> BTreeSet<(String, String)> {
    let doc = queue_api::openapi();
    let mut out = BTreeSet::new();
    for (path, item) in &doc.paths.paths {
        let ops = [
            ("GET", &item.get),
            ("POST", &item.post),
            ("PUT", &item.put),
            ("PATCH", &item.patch),
            ("DELETE", &item.delete),
        ];
        for (method, op) in ops {
            let Some(op) = op else { continue };
            if op
                .tags
                .as_ref()
                .is_some_and(|t| t.iter().any(|t| t == "service"))
            {
                out.insert((method.to_owned(), path.clone()));
            }
        }
    }
    out
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn a_tenant_limited_token_finds_nothing_of_another_tenant(pool: PgPool) {
    let World { app, acme, other } = world(pool).await;

    // The matrix covers every service route: those naming an id here, the
    // two that name none below.
    let mut covered: BTreeSet<(String, String)> = named_routes(&other)
        .iter()
        .map(|(m, p, _)| (m.to_string(), template(p)))
        .collect();
    covered.insert(("POST".into(), "/api/v1/tenants".into()));
    covered.insert(("GET".into(), "/api/v1/internal/customers/count".into()));
    assert_eq!(covered, service_operations());

    // Another tenant's customer, grant or tenant: 404 not_found, as for an
    // id that does not exist, and nothing appended.
    for (method, path, body) in named_routes(&other) {
        let before = app.event_count().await;
        let got = app.request(method.clone(), &path, body, Some(ACME)).await;
        assert_eq!(
            (got.status, got.json["error"]["code"].clone()),
            (StatusCode::NOT_FOUND, json!("not_found")),
            "{method} {path}: {}",
            got.text
        );
        assert_eq!(app.event_count().await, before, "{method} {path}");
    }
    // Creating another tenant is not a tenant admin's: 403, nothing appended.
    let before = app.event_count().await;
    app.post_auth(
        "/api/v1/tenants",
        json!({"slug": "initech", "name": "Initech"}),
        ACME,
    )
    .await
    .assert_error(StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(app.event_count().await, before);
    // Counting and listing see only the token's tenant.
    let count = |token| {
        let app = &app;
        async move {
            app.get_auth("/api/v1/internal/customers/count", token)
                .await
                .json["count"]
                .clone()
        }
    };
    assert_eq!(count(ACME).await, json!(1));
    assert_eq!(count(OPS).await, json!(2));
    let page = app.get_auth("/api/v1/audit/events?limit=1000", ACME).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    let entries = page.json["events"].as_array().unwrap();
    assert!(!entries.is_empty());
    for entry in entries {
        assert_eq!(entry["customer_id"], json!(acme.customer), "{entry}");
    }
    let all = app
        .get_auth("/api/v1/audit/events?limit=1000", AUDITOR)
        .await;
    assert!(all.json["events"].as_array().unwrap().len() > entries.len());
    // A read row whose tenant is edited into acme's (the projector role can
    // write read rows) passes row-level security, but the page is served
    // from the log, whose tenant is another: not shown.
    let forged =
        sqlx::query("UPDATE customer_audit_events SET tenant_id = $1 WHERE customer_id = $2")
            .bind(tenant("acme"))
            .bind(Uuid::parse_str(&other.customer).unwrap())
            .execute(&app.owner)
            .await
            .unwrap()
            .rows_affected();
    assert!(forged > 0);
    let page = app.get_auth("/api/v1/audit/events?limit=1000", ACME).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    for entry in page.json["events"].as_array().unwrap() {
        assert_eq!(entry["customer_id"], json!(acme.customer), "{entry}");
    }

    // The same routes with the token's own ids work: the 404s above are the
    // limit, not the routes.
    for (method, path, body) in named_routes(&acme) {
        let got = app.request(method.clone(), &path, body, Some(ACME)).await;
        assert!(
            got.status.is_success(),
            "{method} {path}: {} {}",
            got.status,
            got.text
        );
    }
    // And an unlimited token still reaches the other tenant's.
    let roles = app
        .get_auth(
            &format!("/api/v1/rbac/customers/{}/roles", other.customer),
            OPS,
        )
        .await;
    assert_eq!(roles.status, StatusCode::OK, "{}", roles.text);
}

/// Tenant → rows, per read table, as the owner (not subject to RLS) sees.
async fn rows_by_tenant(owner: &PgPool, table: &str) -> BTreeMap<Option<Uuid>, i64> {
    sqlx::query_as::<_, (Option<Uuid>, i64)>(&format!(
        "SELECT tenant_id, count(*) FROM {table} GROUP BY tenant_id"
    ))
    .fetch_all(owner)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

/// What the service role sees of `table` with no WHERE at all, in a
/// transaction bound to `tenants` (`None`: not bound).
async fn seen_by_service(
    service: &PgPool,
    table: &str,
    tenants: Option<&[Uuid]>,
) -> Vec<Option<Uuid>> {
    let mut tx = service.begin().await.unwrap();
    if let Some(tenants) = tenants {
        queue_projections::read::bind_to_tenants(&mut tx, tenants)
            .await
            .unwrap();
    }
    let seen = sqlx::query_scalar(&format!("SELECT tenant_id FROM {table}"))
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    seen
}

async fn assert_bound(owner: &PgPool, service: &PgPool, when: &str) {
    let acme = tenant("acme");
    let default = *TenantId::DEFAULT.as_uuid();
    for table in READ_TABLES {
        let by_tenant = rows_by_tenant(owner, table).await;
        let total: i64 = by_tenant.values().sum();
        assert!(
            total > 0,
            "{when}: {table} is empty: the check would be vacuous"
        );
        assert_eq!(
            seen_by_service(service, table, None).await.len() as i64,
            total,
            "{when}: {table} unbound"
        );
        for bound in [acme, default] {
            let seen = seen_by_service(service, table, Some(&[bound])).await;
            assert!(
                seen.iter().all(|t| *t == Some(bound)),
                "{when}: {table} bound to {bound} showed {seen:?}"
            );
            assert_eq!(
                seen.len() as i64,
                by_tenant.get(&Some(bound)).copied().unwrap_or(0),
                "{when}: {table} bound to {bound}"
            );
        }
        // Bound to both: both; bound to none: nothing (never everything).
        let both = seen_by_service(service, table, Some(&[acme, default])).await;
        assert_eq!(
            both.len() as i64,
            by_tenant.get(&Some(acme)).copied().unwrap_or(0)
                + by_tenant.get(&Some(default)).copied().unwrap_or(0),
            "{when}: {table} bound to both"
        );
        assert!(seen_by_service(service, table, Some(&[])).await.is_empty());
    }
    // Both tenants have rows where a customer of each has them.
    for table in [
        "queue_customers",
        "queue_customer_roles",
        "queue_sessions",
        "queue_session_refresh_tokens",
        "customer_audit_events",
    ] {
        let by_tenant = rows_by_tenant(owner, table).await;
        assert!(
            by_tenant.contains_key(&Some(acme)) && by_tenant.contains_key(&Some(default)),
            "{when}: {table}: {by_tenant:?}"
        );
    }
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn row_level_security_binds_a_query_without_a_tenant_filter(pool: PgPool) {
    let World { app, acme, other } = world(pool).await;
    // A customer's own lists read in a transaction bound to its token's
    // tenant (`tid`): each still finds its rows (bound to the wrong tenant
    // they would come back empty).
    for (ids, passkeys) in [(&acme, 0), (&other, 1)] {
        let sessions = app.get_auth("/api/v1/auth/sessions", &ids.access).await;
        assert_eq!(sessions.status, StatusCode::OK, "{}", sessions.text);
        assert_eq!(
            sessions.json["sessions"].as_array().unwrap().len(),
            1,
            "{}",
            sessions.text
        );
        let credentials = app.get_auth("/api/v1/auth/credentials", &ids.access).await;
        assert_eq!(credentials.status, StatusCode::OK, "{}", credentials.text);
        assert_eq!(
            credentials.json["credentials"].as_array().unwrap().len(),
            passkeys,
            "{}",
            credentials.text
        );
    }
    let service = connect_as(&app.owner, Role::Service).await;
    assert_bound(&app.owner, &service, "live").await;

    // The folded tenants are the log's: a rebuild from the log agrees
    // (validated inside), and the swapped-in tables keep their policies.
    let report = rebuild(&app.owner, &RebuildOptions::default(), &NoProgress)
        .await
        .unwrap();
    assert!(report.ok, "{report:?}");
    assert_bound(&app.owner, &service, "rebuilt").await;
    let policies: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_policies WHERE tablename = ANY($1)")
            .bind(READ_TABLES)
            .fetch_one(&app.owner)
            .await
            .unwrap();
    assert_eq!(policies, 2 * READ_TABLES.len() as i64);
    service.close().await;
}

/// Limited to `acme` and `globex` (audit scopes).
const PAIR: &str = "pair-token-0000000000001";
/// Limited to `globex` (audit scopes).
const GLOBEX: &str = "globex-token-00000000001";

/// The targets of the audit entries `token` reads, oldest first.
async fn audit_targets(app: &TestApp, token: &str) -> Vec<String> {
    let page = app
        .get_auth("/api/v1/audit/events?action=ticket.viewed", token)
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    page.json["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["target"].as_str().unwrap().to_owned())
        .collect()
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn an_audit_entry_about_no_customer_belongs_to_the_tenant_it_names(pool: PgPool) {
    let mut services = crate::service::SERVICES.to_vec();
    services.extend([
        ("QUEUE_SERVICE_TOKEN_PAIR", PAIR),
        ("QUEUE_SERVICE_SCOPES_PAIR", "audit:write,audit:read"),
        ("QUEUE_SERVICE_TENANTS_PAIR", "acme,globex"),
        ("QUEUE_SERVICE_TOKEN_GLOBEX", GLOBEX),
        ("QUEUE_SERVICE_SCOPES_GLOBEX", "audit:write,audit:read"),
        ("QUEUE_SERVICE_TENANTS_GLOBEX", "globex"),
    ]);
    let app = TestApp::with(pool, &services).await;
    create_tenant(&app, "acme").await;
    create_tenant(&app, "globex").await;
    let entry = |target: &str, extra: Value| {
        let mut body = json!({"actor": "agent:7", "action": "ticket.viewed",
                              "target": target, "idempotency_key": target});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };

    // A token of one tenant records in it without saying so.
    let got = app
        .post_auth("/api/v1/audit/events", entry("ticket:a", json!({})), ACME)
        .await;
    assert_eq!(got.status, StatusCode::CREATED, "{}", got.text);
    // A token of several names which one; only its own (404 otherwise, as
    // for a tenant that does not exist), and not beside a customer.
    let refusals = [
        (PAIR, json!({}), StatusCode::BAD_REQUEST, "invalid_request"),
        (
            PAIR,
            json!({"tenant": "initech"}),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            ACME,
            json!({"tenant": "globex"}),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            AUDITOR,
            json!({"tenant": "initech"}),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            AUDITOR,
            json!({"tenant": "Not A Slug!"}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            AUDITOR,
            json!({"tenant": "acme", "customer_id": Uuid::new_v4()}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
    ];
    for (i, (token, extra, status, code)) in refusals.into_iter().enumerate() {
        let before = app.event_count().await;
        app.post_auth(
            "/api/v1/audit/events",
            entry(&format!("ticket:refused-{i}"), extra.clone()),
            token,
        )
        .await
        .assert_error(status, code);
        assert_eq!(app.event_count().await, before, "{extra}");
    }
    let got = app
        .post_auth(
            "/api/v1/audit/events",
            entry("ticket:g", json!({"tenant": "globex"})),
            PAIR,
        )
        .await;
    assert_eq!(got.status, StatusCode::CREATED, "{}", got.text);
    // An unlimited token's entry names a tenant if it says one, else none.
    for (target, extra) in [
        ("ticket:u-acme", json!({"tenant": "acme"})),
        ("ticket:u", json!({})),
    ] {
        let got = app
            .post_auth("/api/v1/audit/events", entry(target, extra), AUDITOR)
            .await;
        assert_eq!(got.status, StatusCode::CREATED, "{}", got.text);
    }
    app.catch_up().await;

    // Each token reads its tenants' entries back; one without a tenant only
    // an unlimited token reads.
    assert_eq!(
        audit_targets(&app, ACME).await,
        ["ticket:a", "ticket:u-acme"]
    );
    assert_eq!(audit_targets(&app, GLOBEX).await, ["ticket:g"]);
    assert_eq!(
        audit_targets(&app, PAIR).await,
        ["ticket:a", "ticket:g", "ticket:u-acme"]
    );
    assert_eq!(
        audit_targets(&app, AUDITOR).await,
        ["ticket:a", "ticket:g", "ticket:u-acme", "ticket:u"]
    );
    // The log says it: the tenant is in the event, absent when none.
    let logged: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT payload->'AuditRecorded'->>'target', payload->'AuditRecorded'->>'tenant_id' \
         FROM events WHERE aggregate_type = 'Audit' ORDER BY commit_xid, insert_id",
    )
    .fetch_all(&app.owner)
    .await
    .unwrap();
    let acme = tenant("acme").to_string();
    let globex = tenant("globex").to_string();
    assert_eq!(
        logged,
        [
            ("ticket:a".to_owned(), Some(acme.clone())),
            ("ticket:g".to_owned(), Some(globex)),
            ("ticket:u-acme".to_owned(), Some(acme)),
            ("ticket:u".to_owned(), None),
        ]
    );
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn a_tenant_limited_token_reads_the_saml_refusals_at_its_tenant(pool: PgPool) {
    let Setup { app, idp, base } = setup(pool).await;
    // A response to a request Queue never made: refused and audited.
    let (_, responses) = idp.issue(&[ask(&base, "acme", "_never-asked", "ann@example.com")]);
    let refused = post_acs(&app, &responses[0], "").await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{}", refused.text);
    app.catch_up().await;
    for token in [ACME, AUDITOR] {
        let page = app
            .get_auth("/api/v1/audit/events?action=saml.login_refused", token)
            .await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text);
        let events = page.json["events"].as_array().unwrap();
        assert_eq!(events.len(), 1, "{token}: {}", page.text);
        assert_eq!(events[0]["metadata"]["tenant_slug"], "acme");
    }
}
