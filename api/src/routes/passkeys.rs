//! WebAuthn ceremonies: registration (new customer, extra passkey) and login
//! (by email, discoverable). webauthn-rs-core verifies, through
//! queue-passkey for the Ed25519 signatures it cannot check; the aggregates
//! decide (counter regression, suspension); every change is one atomic
//! append.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use queue_domain::session::FactorChange;
use queue_domain::types::{CustomerId, DisplayName, Email};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;
use uuid::Uuid;
use webauthn_rs_core::proto::{
    AllowCredentials, AttestationConveyancePreference, COSEAlgorithm, UserVerificationPolicy,
};

use crate::auth::challenges::{self, Kind};
use crate::auth::tokens::{self, TokenResponse};
use crate::flows;
use crate::flows::register::Registered;
use crate::http::error::ApiError;
use crate::http::extract::{Authenticated, ClientAddress, Json};
use crate::http::metrics;
use crate::state::AppState;

/// The algorithms offered at registration, in order of preference: ES256,
/// EdDSA (Ed25519), ES384, RS256 (ADR 0206).
pub fn credential_algorithms() -> Vec<COSEAlgorithm> {
    queue_passkey::accepted_algorithms()
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct RegisterBeginRequest {
    /// New customer only.
    pub email: Option<String>,
    /// New customer only.
    pub display_name: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BeginResponse {
    pub challenge_id: String,
    /// `{"publicKey": PublicKeyCredentialCreationOptions | PublicKeyCredentialRequestOptions}`
    #[schema(value_type = Object)]
    pub options: Value,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct RegisterCompleteRequest {
    pub challenge_id: String,
    /// RegistrationResponseJSON.
    #[schema(value_type = Object)]
    pub credential: Value,
    pub name: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CredentialCreated {
    pub credential_id: String,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct LoginBeginRequest {
    /// Omit for a discoverable (usernameless) login.
    pub email: Option<String>,
    /// The slug of the email's tenant (issue 22): emails are unique per
    /// tenant; omit for the default tenant. Unused without `email` (a
    /// discoverable passkey names its customer).
    #[serde(default)]
    pub tenant: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct LoginCompleteRequest {
    pub challenge_id: String,
    /// AuthenticationResponseJSON.
    #[schema(value_type = Object)]
    pub credential: Value,
}

/// Binary WebAuthn fields are base64url without padding; accept padded and
/// standard base64 too.
fn normalize_base64(value: &mut Value) {
    const BINARY: &[&str] = &[
        "rawId",
        "clientDataJSON",
        "attestationObject",
        "authenticatorData",
        "signature",
        "userHandle",
    ];
    if let Value::Object(map) = value {
        for (key, field) in map.iter_mut() {
            match field {
                Value::String(s) if BINARY.contains(&key.as_str()) => {
                    let cleaned: String = s
                        .trim_end_matches('=')
                        .chars()
                        .map(|c| match c {
                            '+' => '-',
                            '/' => '_',
                            other => other,
                        })
                        .collect();
                    *s = cleaned;
                }
                Value::Object(_) if key == "response" => normalize_base64(field),
                _ => {}
            }
        }
    }
}

/// Parses the `credential` of a complete request into webauthn-rs's type
/// (public for the fuzz targets in fuzz/, which call it as the handlers do).
pub fn parse_credential<T: serde::de::DeserializeOwned>(mut value: Value) -> Result<T, ApiError> {
    if !value.is_object() {
        return Err(ApiError::invalid("credential must be an object"));
    }
    normalize_base64(&mut value);
    serde_json::from_value(value).map_err(|e| {
        ApiError::invalid(format!(
            "credential: {}",
            crate::http::error::redact_values(&e.to_string())
        ))
    })
}

#[utoipa::path(post, path = "/api/v1/auth/webauthn/register/begin", tag = "passkeys",
    request_body = RegisterBeginRequest,
    responses((status = 200, body = BeginResponse), (status = 400, body = crate::http::error::ErrorEnvelope), (status = 401, body = crate::http::error::ErrorEnvelope), (status = 403, body = crate::http::error::ErrorEnvelope), (status = 429, body = crate::http::error::ErrorEnvelope), (status = 503, body = crate::http::error::ErrorEnvelope)))]
pub async fn register_begin(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    auth: Option<Authenticated>,
    Json(request): Json<RegisterBeginRequest>,
) -> Result<Json<BeginResponse>, ApiError> {
    state
        .inner
        .register_address_limiter
        .check(&format!("register:{address}"))
        .await?;
    let now = state.now();
    let store = state.store();
    let (customer_id, user_name, display, exclude, context) = match auth {
        Some(auth) => {
            // Step-up before the passkey prompt, so the page can reauth first.
            crate::routes::reauth::require(&auth, FactorChange::AddPasskey, now)?;
            let customer = store.customer(auth.customer_id).await?;
            let customer_state = customer.aggregate.state().ok_or(ApiError::Unauthorized)?;
            if customer_state.is_suspended() {
                return Err(ApiError::CustomerSuspended);
            }
            let mut conn = store.pool().acquire().await?;
            let existing = store
                .usable_credentials_of(&mut conn, auth.customer_id)
                .await?
                .into_iter()
                .filter_map(|c| {
                    c.aggregate
                        .state()
                        .map(|s| s.raw_credential_id.as_bytes().to_vec())
                })
                .collect::<Vec<_>>();
            let display = customer_state
                .display_name
                .as_ref()
                .map_or_else(|| customer_state.email.to_string(), ToString::to_string);
            (
                auth.customer_id,
                customer_state.email.to_string(),
                display,
                existing,
                json!({"mode": "add"}),
            )
        }
        None => {
            let email = Email::parse(request.email.as_deref().ok_or_else(|| {
                ApiError::invalid("email is required (or a Bearer token to add a passkey)")
            })?)?;
            let display_name = DisplayName::parse(
                request
                    .display_name
                    .as_deref()
                    .ok_or_else(|| ApiError::invalid("display_name is required"))?,
            )?;
            state
                .inner
                .register_email_limiter
                .check(&format!("register:{email}"))
                .await?;
            let customer_id = CustomerId::from(Uuid::now_v7());
            (
                customer_id,
                email.to_string(),
                display_name.to_string(),
                Vec::new(),
                json!({"mode": "new", "email": email, "display_name": display_name}),
            )
        }
    };
    let webauthn = &state.inner.webauthn;
    let builder = webauthn
        .new_challenge_register_builder(customer_id.as_uuid().as_bytes(), &user_name, &display)
        .map_err(|e| ApiError::internal(format!("register builder: {e}")))?
        .attestation(AttestationConveyancePreference::None)
        .user_verification_policy(UserVerificationPolicy::Required)
        .credential_algorithms(credential_algorithms())
        .require_resident_key(true)
        .exclude_credentials((!exclude.is_empty()).then_some(exclude));
    let (options, registration) = webauthn
        .generate_challenge_register(builder)
        .map_err(|e| ApiError::internal(format!("register challenge: {e}")))?;
    let challenge_id = challenges::store(
        store.pool(),
        Kind::Register,
        Some(customer_id),
        context,
        serde_json::to_value(&registration)
            .map_err(ApiError::internal_json("registration state"))?,
        now,
        state.config().challenge_ttl_secs,
    )
    .await?;
    Ok(Json(BeginResponse {
        challenge_id: challenge_id.to_string(),
        options: serde_json::to_value(&options).map_err(ApiError::internal_json("options"))?,
    }))
}

#[utoipa::path(post, path = "/api/v1/auth/webauthn/register/complete", tag = "passkeys",
    request_body = RegisterCompleteRequest,
    responses((status = 201, body = TokenResponse, description = "new customer: tokens and credential_id; extra passkey: {credential_id}"),
        (status = 400, body = crate::http::error::ErrorEnvelope), (status = 401, body = crate::http::error::ErrorEnvelope), (status = 403, body = crate::http::error::ErrorEnvelope), (status = 409, body = crate::http::error::ErrorEnvelope), (status = 410, body = crate::http::error::ErrorEnvelope), (status = 429, body = crate::http::error::ErrorEnvelope), (status = 503, body = crate::http::error::ErrorEnvelope)))]
pub async fn register_complete(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    auth: Option<Authenticated>,
    Json(request): Json<RegisterCompleteRequest>,
) -> Result<Response, ApiError> {
    let registered = flows::register::complete(
        &state,
        &address,
        auth,
        &request.challenge_id,
        request.credential,
        request.name.as_deref(),
    )
    .await?;
    Ok(match registered {
        Registered::Customer(tokens) => (StatusCode::CREATED, Json(*tokens)).into_response(),
        Registered::Passkey(credential_id) => (
            StatusCode::CREATED,
            Json(CredentialCreated {
                credential_id: credential_id.to_string(),
            }),
        )
            .into_response(),
    })
}

#[utoipa::path(post, path = "/api/v1/auth/webauthn/login/begin", tag = "passkeys",
    request_body = LoginBeginRequest,
    responses((status = 200, body = BeginResponse), (status = 400, body = crate::http::error::ErrorEnvelope), (status = 429, body = crate::http::error::ErrorEnvelope), (status = 503, body = crate::http::error::ErrorEnvelope)))]
pub async fn login_begin(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    Json(request): Json<LoginBeginRequest>,
) -> Result<Json<BeginResponse>, ApiError> {
    state
        .inner
        .address_limiter
        .check(&format!("login:{address}"))
        .await?;
    let store = state.store();
    let email = request.email.as_deref().map(Email::parse).transpose()?;
    let tenant = crate::routes::tenants::tenant_by_slug(request.tenant.as_deref())?;
    let webauthn = &state.inner.webauthn;
    let builder = webauthn
        .new_challenge_authenticate_builder(Vec::new(), Some(UserVerificationPolicy::Required))
        .map_err(|e| ApiError::internal(format!("login builder: {e}")))?;
    let (mut options, authentication) = webauthn
        .generate_challenge_authenticate(builder)
        .map_err(|e| ApiError::internal(format!("login challenge: {e}")))?;

    let (customer_id, context) = match &email {
        None => (None, json!({"mode": "discoverable"})),
        Some(email) => {
            // No per-account charge here: nothing is verified yet (issue 17).
            // The same queries for an unknown email as for a known one: the
            // credentials of an id no customer has are looked up.
            let customer_id = store.customer_by_email_in(tenant, email).await?;
            let lookup = customer_id.unwrap_or_else(|| CustomerId::from(Uuid::nil()));
            let mut conn = store.pool().acquire().await?;
            let mut ids: Vec<Vec<u8>> = store
                .usable_credentials_of(&mut conn, lookup)
                .await?
                .into_iter()
                .filter_map(|c| {
                    c.aggregate
                        .state()
                        .map(|s| s.raw_credential_id.as_bytes().to_vec())
                })
                .collect();
            drop(conn);
            // Same shape for an unknown email: believable, stable fake ids,
            // computed for every email so both take the same work.
            let mut fake = state
                .inner
                .fake_credentials
                .generate(email.as_str().as_bytes())
                .map_err(|e| ApiError::internal(format!("fake credentials: {e}")))?;
            if fake.is_empty() {
                // The distribution may yield none; a real customer always has one.
                let id = tokens::derive_key(&state.inner.fake_key, email.as_str().as_bytes());
                fake = vec![id[..16].to_vec()];
            }
            if ids.is_empty() {
                ids = fake;
            }
            options.public_key.allow_credentials = ids
                .into_iter()
                .map(|id| AllowCredentials {
                    type_: "public-key".to_owned(),
                    id,
                    transports: None,
                })
                .collect();
            (customer_id, json!({"mode": "email"}))
        }
    };
    begin_assertion(
        &state,
        Kind::Login,
        customer_id,
        context,
        &authentication,
        &options,
    )
    .await
}

/// Stores an assertion ceremony's state as a single-use challenge and
/// answers `{challenge_id, options}` (login and reauth begin).
pub(crate) async fn begin_assertion(
    state: &AppState,
    kind: Kind,
    customer_id: Option<CustomerId>,
    context: Value,
    authentication: &webauthn_rs_core::proto::AuthenticationState,
    options: &webauthn_rs_core::proto::RequestChallengeResponse,
) -> Result<Json<BeginResponse>, ApiError> {
    let challenge_id = challenges::store(
        state.store().pool(),
        kind,
        customer_id,
        context,
        serde_json::to_value(authentication)
            .map_err(ApiError::internal_json("authentication state"))?,
        state.now(),
        state.config().challenge_ttl_secs,
    )
    .await?;
    Ok(Json(BeginResponse {
        challenge_id: challenge_id.to_string(),
        options: serde_json::to_value(options).map_err(ApiError::internal_json("options"))?,
    }))
}

#[utoipa::path(post, path = "/api/v1/auth/webauthn/login/complete", tag = "passkeys",
    request_body = LoginCompleteRequest,
    responses((status = 200, body = TokenResponse), (status = 400, body = crate::http::error::ErrorEnvelope), (status = 401, body = crate::http::error::ErrorEnvelope), (status = 403, body = crate::http::error::ErrorEnvelope),
        (status = 410, body = crate::http::error::ErrorEnvelope), (status = 429, body = crate::http::error::ErrorEnvelope), (status = 503, body = crate::http::error::ErrorEnvelope)))]
pub async fn login_complete(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    Json(request): Json<LoginCompleteRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    let result =
        flows::login::login(&state, &address, &request.challenge_id, request.credential).await;
    metrics::login(match &result {
        Ok(_) => "success",
        Err(ApiError::WebauthnFailed) => "webauthn_failed",
        Err(ApiError::CustomerSuspended) => "customer_suspended",
        Err(ApiError::ChallengeExpired) => "challenge_expired",
        Err(ApiError::RateLimited { .. }) => "rate_limited",
        Err(ApiError::Unavailable { .. }) => "unavailable",
        Err(_) => "error",
    });
    result.map(Json)
}
