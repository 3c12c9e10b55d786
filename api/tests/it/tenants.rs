//! Tenants (issue 22, ADR 0218): the admin routes, the SAML connection
//! settings, the tenant in `/auth/me` and the JWT, email unique per tenant.

use axum::http::{Method, StatusCode};
use base64::Engine;
use queue_domain::customer::CustomerCommand;
use queue_domain::types::{CustomerId, DisplayName, Email, TenantId, TenantSlug};
use queue_domain::Customer;
use queue_eventstore::{Batch, Loaded, StoreError};
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::helpers::{bearer, Passkey, TestApp};
use crate::service::{service_app, OPS, READER};

pub const IDP_METADATA: &str = include_str!("fixtures/idp-metadata.xml");
const DEFAULT_TENANT: &str = "e02b51ee-91ce-59b2-8ff6-b3ef33a10a99";

pub async fn create_tenant(app: &TestApp, slug: &str) -> String {
    let created = app
        .post_auth(
            "/api/v1/tenants",
            json!({"slug": slug, "name": "Acme Inc."}),
            OPS,
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    created.json["tenant_id"].as_str().unwrap().to_owned()
}

async fn put_saml(app: &TestApp, tenant_id: &str, body: Value) -> crate::helpers::Response {
    app.request(
        Method::PUT,
        &format!("/api/v1/tenants/{tenant_id}/saml"),
        Some(body),
        Some(OPS),
    )
    .await
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn an_admin_creates_and_reads_a_tenant(pool: PgPool) {
    let app = service_app(pool).await;
    let tenant_id = create_tenant(&app, "acme").await;
    // The id is the slug's (UUIDv5), so it is stable across environments.
    assert_eq!(
        tenant_id,
        TenantId::for_slug(&TenantSlug::parse("acme").unwrap()).to_string()
    );
    let got = app
        .get_auth(&format!("/api/v1/tenants/{tenant_id}"), OPS)
        .await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert_eq!(got.json["slug"], "acme");
    assert_eq!(got.json["name"], "Acme Inc.");
    assert_eq!(got.json["tenant_id"], json!(tenant_id));
    assert!(got.json.get("saml").is_none());

    // The same slug again: 409 tenant_exists, and nothing appended.
    let before = app.event_count().await;
    app.post_auth(
        "/api/v1/tenants",
        json!({"slug": "acme", "name": "Other"}),
        OPS,
    )
    .await
    .assert_error(StatusCode::CONFLICT, "tenant_exists");
    assert_eq!(app.event_count().await, before);

    // Bad slugs and names: 400, nothing appended.
    for body in [
        json!({"slug": "Acme", "name": "x"}),
        json!({"slug": "a", "name": "x"}),
        json!({"slug": "acme-", "name": "x"}),
        json!({"slug": "1acme", "name": "x"}),
        json!({"slug": "ok-slug", "name": ""}),
        json!({"slug": "ok-slug"}),
    ] {
        app.post_auth("/api/v1/tenants", body, OPS)
            .await
            .assert_error(StatusCode::BAD_REQUEST, "invalid_request");
    }
    assert_eq!(app.event_count().await, before);

    // Unknown or malformed ids: 404 / 400.
    app.get_auth("/api/v1/tenants/0b0e5c9e-8f4e-4a4b-9d55-2f7f0a1e0c01", OPS)
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    app.get_auth("/api/v1/tenants/nope", OPS)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_request");

    // Without the admin scope: 403; a customer's token: 403; none: 401.
    app.post_auth(
        "/api/v1/tenants",
        json!({"slug": "beta", "name": "B"}),
        READER,
    )
    .await
    .assert_error(StatusCode::FORBIDDEN, "forbidden");
    app.get_auth(&format!("/api/v1/tenants/{tenant_id}"), READER)
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    let tokens = app.register(&mut Passkey::new(), "ada@example.com").await;
    app.get_auth(&format!("/api/v1/tenants/{tenant_id}"), &bearer(&tokens))
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    app.post("/api/v1/tenants", json!({"slug": "beta", "name": "B"}))
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn an_admin_configures_a_tenants_saml_connection(pool: PgPool) {
    let app = service_app(pool).await;
    let tenant_id = create_tenant(&app, "acme").await;
    let config = json!({
        "idp_metadata": IDP_METADATA,
        "email_attribute": "mail",
        "display_name_attribute": "displayName",
        "groups_attribute": "groups",
        "group_roles": {"support": ["support-agent"], "leads": ["support-agent", "support-admin"]},
        "allow_idp_initiated": false,
        "jit_provisioning": true
    });
    let put = put_saml(&app, &tenant_id, config.clone()).await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.text);
    let saml = &put.json["saml"];
    assert_eq!(saml["enabled"], true);
    assert_eq!(saml["idp_entity_id"], "https://idp.example.test/metadata");
    assert_eq!(
        saml["sp_entity_id"],
        format!(
            "{}/saml/acme/metadata",
            app.state.config().rp_origins[0]
                .as_str()
                .trim_end_matches('/')
        )
    );
    assert!(saml["acs_url"]
        .as_str()
        .unwrap()
        .ends_with("/saml/acme/acs"));
    assert_eq!(
        saml["group_roles"],
        json!({"leads": ["support-admin", "support-agent"], "support": ["support-agent"]})
    );
    assert_eq!(saml["jit_provisioning"], true);
    assert_eq!(saml["allow_idp_initiated"], false);
    let got = app
        .get_auth(&format!("/api/v1/tenants/{tenant_id}"), OPS)
        .await;
    assert_eq!(got.json["saml"], put.json["saml"]);

    // Refused, each with nothing appended.
    let before = app.event_count().await;
    let mut bad_metadata = config.clone();
    bad_metadata["idp_metadata"] = json!("<md:EntityDescriptor/>");
    put_saml(&app, &tenant_id, bad_metadata)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "saml_idp_metadata_invalid");
    let mut unknown_role = config.clone();
    unknown_role["group_roles"] = json!({"support": ["root"]});
    put_saml(&app, &tenant_id, unknown_role)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_request");
    let mut jit_without_email = config.clone();
    jit_without_email["email_attribute"] = Value::Null;
    put_saml(&app, &tenant_id, jit_without_email)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_request");
    let mut unknown_field = config.clone();
    unknown_field["allow_unsigned"] = json!(true);
    put_saml(&app, &tenant_id, unknown_field)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_request");
    assert_eq!(app.event_count().await, before);
    put_saml(&app, "0b0e5c9e-8f4e-4a4b-9d55-2f7f0a1e0c01", config.clone())
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    app.request(
        Method::PUT,
        &format!("/api/v1/tenants/{tenant_id}/saml"),
        Some(config),
        Some(READER),
    )
    .await
    .assert_error(StatusCode::FORBIDDEN, "forbidden");
}

pub fn jwt_claims(access_token: &str) -> Value {
    let payload = access_token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn a_customer_sees_its_tenant_in_me_and_the_jwt(pool: PgPool) {
    let app = service_app(pool).await;
    let tokens = app.register(&mut Passkey::new(), "ada@example.com").await;
    let claims = jwt_claims(tokens["access_token"].as_str().unwrap());
    assert_eq!(claims["tid"], DEFAULT_TENANT);
    let me = app.get_auth("/api/v1/auth/me", &bearer(&tokens)).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.text);
    assert_eq!(
        me.json["tenant"],
        json!({"tenant_id": DEFAULT_TENANT, "slug": "default", "name": null})
    );
    // Once the default tenant's stream exists, its name shows.
    let created = app
        .post_auth(
            "/api/v1/tenants",
            json!({"slug": "default", "name": "Antlers"}),
            OPS,
        )
        .await;
    assert_eq!(created.json["tenant_id"], DEFAULT_TENANT);
    let me = app.get_auth("/api/v1/auth/me", &bearer(&tokens)).await;
    assert_eq!(me.json["tenant"]["name"], "Antlers");
}

async fn register_in(app: &TestApp, tenant: TenantId, email: &str) -> Result<(), StoreError> {
    let store = app.state.store();
    let customer_id = CustomerId::from(uuid::Uuid::new_v4());
    let mut customer: Loaded<Customer> = store.customer(customer_id).await?;
    let events = customer
        .execute(CustomerCommand::Register {
            customer_id,
            tenant_id: tenant,
            email: Email::parse(email).unwrap(),
            display_name: DisplayName::parse("Ada").unwrap(),
            at: app.state.now(),
        })
        .await
        .unwrap();
    let mut batch = Batch::new();
    batch.add(&mut customer, &events)?;
    store.append(batch).await
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn an_email_is_unique_per_tenant(pool: PgPool) {
    let app = service_app(pool).await;
    app.register(&mut Passkey::new(), "ada@example.com").await;
    let acme = TenantId::for_slug(&TenantSlug::parse("acme").unwrap());
    // Another tenant may have its own ada@example.com...
    register_in(&app, acme, "Ada@Example.com").await.unwrap();
    // ...once: the per-tenant unique index refuses the second.
    let again = register_in(&app, acme, "ada@example.com").await;
    assert!(
        matches!(&again, Err(StoreError::UniqueViolation { constraint }) if constraint == "events_customer_email"),
        "{again:?}"
    );
    // And the default tenant's stays unique too.
    let default = register_in(&app, TenantId::DEFAULT, "ADA@example.com").await;
    assert!(
        matches!(&default, Err(StoreError::UniqueViolation { .. })),
        "{default:?}"
    );
    // The lookups see each tenant's own customer.
    let email = Email::parse("ada@example.com").unwrap();
    let in_default = app.state.store().customer_by_email(&email).await.unwrap();
    let in_acme = app
        .state
        .store()
        .customer_by_email_in(acme, &email)
        .await
        .unwrap();
    assert!(in_default.is_some() && in_acme.is_some());
    assert_ne!(in_default, in_acme);
    let acme_customer = app.state.store().customer(in_acme.unwrap()).await.unwrap();
    assert_eq!(acme_customer.aggregate.state().unwrap().tenant_id, acme);
    // The read model carries the tenant.
    app.catch_up().await;
    let tenants: Vec<(String, uuid::Uuid)> =
        sqlx::query_as("SELECT email, tenant_id FROM queue_customers ORDER BY tenant_id")
            .fetch_all(app.state.store().pool())
            .await
            .unwrap();
    assert_eq!(tenants.len(), 2);
    assert!(tenants.iter().any(|(_, t)| t.to_string() == DEFAULT_TENANT));
    assert!(tenants.iter().any(|(_, t)| *t == *acme.as_uuid()));
}

async fn saml_tenant(app: &TestApp) -> String {
    let tenant_id = create_tenant(app, "acme").await;
    let put = put_saml(
        app,
        &tenant_id,
        json!({"idp_metadata": IDP_METADATA, "email_attribute": "mail",
               "groups_attribute": "groups", "group_roles": {"support": ["support-agent"]},
               "jit_provisioning": true}),
    )
    .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.text);
    tenant_id
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn the_sp_metadata_names_the_tenants_entity_id_and_acs(pool: PgPool) {
    let app = service_app(pool).await;
    // No tenant, or a tenant without a connection: 404 alike.
    app.get("/saml/acme/metadata")
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    app.get("/saml/NOT-A-SLUG/metadata")
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    create_tenant(&app, "beta").await;
    app.get("/saml/beta/metadata")
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");

    saml_tenant(&app).await;
    let base = app.state.config().rp_origins[0]
        .as_str()
        .trim_end_matches('/')
        .to_owned();
    let got = app.get("/saml/acme/metadata").await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert_eq!(
        got.headers[axum::http::header::CONTENT_TYPE],
        "application/samlmetadata+xml"
    );
    assert!(got
        .text
        .contains(&format!("entityID=\"{base}/saml/acme/metadata\"")));
    assert!(got
        .text
        .contains(&format!("Location=\"{base}/saml/acme/acs\"")));
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn sp_initiated_login_redirects_to_the_idp_and_stores_the_request(pool: PgPool) {
    let app = service_app(pool).await;
    saml_tenant(&app).await;
    let base = app.state.config().rp_origins[0]
        .as_str()
        .trim_end_matches('/')
        .to_owned();
    let return_to = format!("{base}/account?tab=sessions");
    let got = app
        .get(&format!(
            "/saml/acme/login?return_to={}",
            url::form_urlencoded::byte_serialize(return_to.as_bytes()).collect::<String>()
        ))
        .await;
    assert_eq!(got.status, StatusCode::SEE_OTHER, "{}", got.text);
    let location =
        url::Url::parse(got.headers[axum::http::header::LOCATION].to_str().unwrap()).unwrap();
    assert_eq!(location.host_str(), Some("idp.example.test"));
    assert_eq!(location.path(), "/sso");
    let params: std::collections::HashMap<String, String> =
        location.query_pairs().into_owned().collect();
    assert!(!params["SAMLRequest"].is_empty());
    // The RelayState is the opaque request id, never the URL.
    let relay = &params["RelayState"];
    assert!(!relay.contains("account"));
    let stored: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT request_id, return_to FROM saml_requests")
            .fetch_all(app.state.store().pool())
            .await
            .unwrap();
    assert_eq!(stored, vec![(relay.clone(), Some(return_to))]);

    // return_to on another origin (or not a URL): 400, nothing stored.
    for bad in [
        "https://evil.example/account",
        "javascript:alert(1)",
        "//evil.example/",
        "/account",
    ] {
        app.get(&format!(
            "/saml/acme/login?return_to={}",
            url::form_urlencoded::byte_serialize(bad.as_bytes()).collect::<String>()
        ))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_request");
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM saml_requests")
        .fetch_one(app.state.store().pool())
        .await
        .unwrap();
    assert_eq!(count, 1);
    // Without return_to: the hosted account page.
    let got = app.get("/saml/acme/login").await;
    assert_eq!(got.status, StatusCode::SEE_OTHER, "{}", got.text);
    // Unanswered requests expire after 5 minutes and the sweeper deletes them.
    app.clock().advance(301);
    let swept = queue_api::auth::challenges::sweep(app.state.store().pool(), app.state.now())
        .await
        .unwrap();
    assert_eq!(swept, 2);
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM saml_requests")
        .fetch_one(app.state.store().pool())
        .await
        .unwrap();
    assert_eq!(count, 0);
    app.get("/saml/nobody/login")
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn a_disabled_connection_serves_nothing_until_configured_again(pool: PgPool) {
    let app = service_app(pool).await;
    let tenant_id = saml_tenant(&app).await;
    let path = format!("/api/v1/tenants/{tenant_id}/saml");
    let disabled = app
        .request(
            Method::DELETE,
            &path,
            Some(json!({"reason": "IdP migration"})),
            Some(OPS),
        )
        .await;
    assert_eq!(disabled.status, StatusCode::OK, "{}", disabled.text);
    assert_eq!(disabled.json["saml"]["enabled"], false);
    app.get("/saml/acme/metadata")
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    app.get("/saml/acme/login")
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    // Disabling twice: 409, nothing appended.
    let before = app.event_count().await;
    app.request(
        Method::DELETE,
        &path,
        Some(json!({"reason": "again"})),
        Some(OPS),
    )
    .await
    .assert_error(StatusCode::CONFLICT, "conflict");
    app.request(
        Method::DELETE,
        &path,
        Some(json!({"reason": "x"})),
        Some(READER),
    )
    .await
    .assert_error(StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(app.event_count().await, before);
    // A new PUT enables it again.
    saml_tenant_again(&app, &tenant_id).await;
    assert_eq!(app.get("/saml/acme/metadata").await.status, StatusCode::OK);
}

async fn saml_tenant_again(app: &TestApp, tenant_id: &str) {
    let put = put_saml(
        app,
        tenant_id,
        json!({"idp_metadata": IDP_METADATA, "email_attribute": "mail"}),
    )
    .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.text);
    assert_eq!(put.json["saml"]["enabled"], true);
}

/// The SAML routes are limited per client address before any work (each
/// login stores a request; each response costs a signature check): past
/// `QUEUE_RATE_LIMIT_PER_ADDRESS` a minute they answer 429 `rate_limited`
/// with Retry-After, and nothing more is stored.
#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn the_saml_routes_are_rate_limited_per_address(pool: PgPool) {
    let mut settings = crate::service::SERVICES.to_vec();
    settings.push(("QUEUE_RATE_LIMIT_PER_ADDRESS", "3"));
    let app = TestApp::with(pool, &settings).await;
    saml_tenant(&app).await;
    let form = |body: &str| {
        axum::http::Request::builder()
            .method(Method::POST)
            .uri("/saml/acme/acs")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(axum::body::Body::from(body.to_owned()))
            .unwrap()
    };
    // Three garbage responses are refused by the validator ...
    for _ in 0..3 {
        let refused = app.send(form("SAMLResponse=bm90IHhtbA%3D%3D")).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{}", refused.text);
    }
    // ... the fourth request from the address, of either route, never
    // reaches it.
    let limited = app.send(form("SAMLResponse=bm90IHhtbA%3D%3D")).await;
    limited.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert!(limited.headers.contains_key("retry-after"));
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM saml_requests")
        .fetch_one(&app.owner)
        .await
        .unwrap();
    let login = app.get("/saml/acme/login").await;
    login.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM saml_requests")
        .fetch_one(&app.owner)
        .await
        .unwrap();
    assert_eq!(stored, after, "a limited login stores no request");
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn serve_creates_the_default_tenants_stream_once(pool: PgPool) {
    let app = service_app(pool).await;
    let tokens = app.register(&mut Passkey::new(), "ada@example.com").await;
    // `queue serve` calls this at every start; only the first appends.
    assert!(
        queue_api::routes::tenants::ensure_default_tenant(&app.state)
            .await
            .unwrap()
    );
    let before = app.event_count().await;
    assert!(
        !queue_api::routes::tenants::ensure_default_tenant(&app.state)
            .await
            .unwrap()
    );
    assert_eq!(app.event_count().await, before);
    let created: (String, Value) = sqlx::query_as(
        "SELECT aggregate_id, payload FROM events WHERE event_type = 'TenantCreated'",
    )
    .fetch_one(&app.owner)
    .await
    .unwrap();
    assert_eq!(created.0, DEFAULT_TENANT);
    assert_eq!(created.1["TenantCreated"]["actor"], "queue");

    let got = app
        .get_auth(&format!("/api/v1/tenants/{DEFAULT_TENANT}"), OPS)
        .await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert_eq!(got.json["slug"], "default");
    assert_eq!(got.json["name"], "Default");
    // A customer from before the stream existed is the default tenant's.
    let me = app.get_auth("/api/v1/auth/me", &bearer(&tokens)).await;
    assert_eq!(me.json["tenant"]["tenant_id"], DEFAULT_TENANT);
    assert_eq!(me.json["tenant"]["name"], "Default");
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn an_admin_renames_a_tenant(pool: PgPool) {
    let app = service_app(pool).await;
    let tenant_id = create_tenant(&app, "acme").await;
    let path = format!("/api/v1/tenants/{tenant_id}");
    let renamed = app
        .request(
            Method::PATCH,
            &path,
            Some(json!({"name": "Acme Europe"})),
            Some(OPS),
        )
        .await;
    assert_eq!(renamed.status, StatusCode::OK, "{}", renamed.text);
    assert_eq!(renamed.json["name"], "Acme Europe");
    assert_eq!(renamed.json["slug"], "acme");
    assert_eq!(app.get_auth(&path, OPS).await.json["name"], "Acme Europe");
    let renames: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE event_type = 'TenantRenamed' \
         AND payload->'TenantRenamed'->>'actor' = 'ops'",
    )
    .fetch_one(&app.owner)
    .await
    .unwrap();
    assert_eq!(renames, 1);
    // The same name again appends nothing; an empty name, an unknown field
    // or an unknown tenant: refused, nothing appended.
    let before = app.event_count().await;
    let again = app
        .request(
            Method::PATCH,
            &path,
            Some(json!({"name": "Acme Europe"})),
            Some(OPS),
        )
        .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    for body in [json!({"name": ""}), json!({"name": "x", "slug": "other"})] {
        app.request(Method::PATCH, &path, Some(body), Some(OPS))
            .await
            .assert_error(StatusCode::BAD_REQUEST, "invalid_request");
    }
    let unknown = TenantId::for_slug(&TenantSlug::parse("nobody").unwrap());
    app.request(
        Method::PATCH,
        &format!("/api/v1/tenants/{unknown}"),
        Some(json!({"name": "x"})),
        Some(OPS),
    )
    .await
    .assert_error(StatusCode::NOT_FOUND, "not_found");
    // Without the admin scope 403, without a token 401, a path id that is
    // not a UUID 400.
    app.request(
        Method::PATCH,
        &path,
        Some(json!({"name": "x"})),
        Some(READER),
    )
    .await
    .assert_error(StatusCode::FORBIDDEN, "forbidden");
    app.request(Method::PATCH, &path, Some(json!({"name": "x"})), None)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    app.request(
        Method::PATCH,
        "/api/v1/tenants/acme",
        Some(json!({"name": "x"})),
        Some(OPS),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, "invalid_request");
    assert_eq!(app.event_count().await, before);
}

/// The `tenant` of a login by email or a code redeem is a slug: anything
/// else is 400 before any lookup.
#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn a_malformed_tenant_in_a_login_or_redeem_is_invalid(pool: PgPool) {
    let app = service_app(pool).await;
    for (path, body) in [
        (
            "/api/v1/auth/webauthn/login/begin",
            json!({"email": "ann@example.com", "tenant": "Not A Slug"}),
        ),
        (
            "/api/v1/auth/backup-codes/redeem",
            json!({"email": "ann@example.com", "code": "abcd-efgh", "tenant": "-x"}),
        ),
    ] {
        app.post(path, body)
            .await
            .assert_error(StatusCode::BAD_REQUEST, "invalid_request");
    }
    // An unknown (well-formed) tenant is just no customer: the redeem's
    // usual invalid_code.
    app.post(
        "/api/v1/auth/backup-codes/redeem",
        json!({"email": "ann@example.com", "code": "abcd-efgh", "tenant": "nobody"}),
    )
    .await
    .assert_error(StatusCode::UNAUTHORIZED, "invalid_code");
}
