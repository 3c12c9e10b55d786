//! WebAuthn ceremonies: registration (new customer, extra passkey) and login
//! (by email, discoverable). webauthn-rs-core verifies, through
//! queue-passkey for the Ed25519 signatures it cannot check; the aggregates
//! decide (counter regression, suspension); every change is one atomic
//! append.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use queue_domain::audit::AuditCommand;
use queue_domain::credential::{CredentialCommand, CredentialError};
use queue_domain::customer::CustomerCommand;
use queue_domain::session::{FactorChange, SessionCommand};
use queue_domain::types::{
    Actor, AuditAction, AuditEventId, AuditTarget, CredentialId, CredentialName, CustomerId,
    DisplayName, Email, IdempotencyKey, RawCredentialId, ServiceName,
};
use queue_domain::{Audit, Credential, Customer};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;
use uuid::Uuid;
use webauthn_rs_core::proto::{
    AllowCredentials, AttestationConveyancePreference, AttestationMetadata, AuthenticationState,
    COSEAlgorithm, PublicKeyCredential, RegisterPublicKeyCredential, RegistrationState,
    UserVerificationPolicy,
};

use crate::auth::challenges::{self, Kind};
use crate::http::error::ApiError;
use crate::http::extract::{Authenticated, ClientAddress, Json};
use crate::http::metrics;
use crate::state::AppState;
use crate::auth::tokens::{self, TokenResponse};
use queue_eventstore::{Batch, Loaded};

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

fn internal(what: &str) -> impl FnOnce(serde_json::Error) -> ApiError + '_ {
    move |e| ApiError::internal(format!("{what}: {e}"))
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
        serde_json::to_value(&registration).map_err(internal("registration state"))?,
        now,
        state.config().challenge_ttl_secs,
    )
    .await?;
    Ok(Json(BeginResponse {
        challenge_id: challenge_id.to_string(),
        options: serde_json::to_value(&options).map_err(internal("options"))?,
    }))
}

#[utoipa::path(post, path = "/api/v1/auth/webauthn/register/complete", tag = "passkeys",
    request_body = RegisterCompleteRequest,
    responses((status = 201, body = TokenResponse, description = "new customer: tokens and credential_id; extra passkey: {credential_id}"),
        (status = 400, body = crate::http::error::ErrorEnvelope), (status = 401, body = crate::http::error::ErrorEnvelope), (status = 403, body = crate::http::error::ErrorEnvelope), (status = 409, body = crate::http::error::ErrorEnvelope), (status = 410, body = crate::http::error::ErrorEnvelope), (status = 429, body = crate::http::error::ErrorEnvelope), (status = 503, body = crate::http::error::ErrorEnvelope)))]
pub async fn register_complete(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    mut auth: Option<Authenticated>,
    Json(request): Json<RegisterCompleteRequest>,
) -> Result<Response, ApiError> {
    state
        .inner
        .register_address_limiter
        .check(&format!("register:{address}"))
        .await?;
    let now = state.now();
    let store = state.store();
    // Parse everything before the challenge is spent.
    let response: RegisterPublicKeyCredential = parse_credential(request.credential)?;
    let name = request
        .name
        .as_deref()
        .map(CredentialName::parse)
        .transpose()?;
    let challenge =
        challenges::take(store.pool(), Kind::Register, &request.challenge_id, now).await?;
    let customer_id = challenge
        .customer_id
        .ok_or_else(|| ApiError::internal("register challenge without customer"))?;
    let adding = challenge.context.get("mode").and_then(Value::as_str) == Some("add");
    if let Some(email) = challenge.context.get("email").and_then(Value::as_str) {
        // `email_taken` is answered here only: throttled per email too.
        state
            .inner
            .register_email_limiter
            .check(&format!("register:{email}"))
            .await?;
    }
    if adding {
        match &auth {
            None => return Err(ApiError::Unauthorized),
            Some(auth) if auth.customer_id != customer_id => return Err(ApiError::Forbidden),
            Some(_) => {}
        }
    }
    let registration: RegistrationState =
        serde_json::from_value(challenge.state).map_err(internal("registration state"))?;
    let passkey = queue_passkey::register(&state.inner.webauthn, &response, &registration)
        .map_err(|e| {
            tracing::info!(error = %e, "passkey registration refused");
            ApiError::WebauthnFailed
        })?;
    let raw_id = RawCredentialId::from_bytes(passkey.cred_id.clone())
        .map_err(|_| ApiError::WebauthnFailed)?;
    let credential_id = raw_id.credential_id();
    let aaguid = match &passkey.attestation.metadata {
        AttestationMetadata::Packed { aaguid } | AttestationMetadata::Tpm { aaguid, .. } => {
            Some(*aaguid)
        }
        _ => None,
    };
    let transports: Vec<String> = response
        .response
        .transports
        .iter()
        .flatten()
        .filter_map(|t| serde_json::to_value(t).ok())
        .filter_map(|v| v.as_str().map(str::to_lowercase))
        .collect();

    let mut credential: Loaded<Credential> = store.credential(credential_id).await?;
    if !credential.is_new() {
        return Err(ApiError::Conflict);
    }
    let mut batch = Batch::new();
    let mut customer: Loaded<Customer> = store.customer(customer_id).await?;
    if adding {
        let customer_state = customer.aggregate.state().ok_or(ApiError::Unauthorized)?;
        if customer_state.is_suspended() {
            return Err(ApiError::CustomerSuspended);
        }
    } else {
        if !customer.is_new() {
            return Err(ApiError::Conflict);
        }
        let email: Email = serde_json::from_value(challenge.context["email"].clone())
            .map_err(internal("challenge email"))?;
        let display_name: DisplayName =
            serde_json::from_value(challenge.context["display_name"].clone())
                .map_err(internal("challenge display name"))?;
        let events = customer
            .execute(CustomerCommand::Register {
                customer_id,
                email,
                display_name,
                at: now,
            })
            .await?;
        batch.add(&mut customer, &events)?;
    }
    let events = credential
        .execute(CredentialCommand::Register {
            customer_id,
            raw_credential_id: raw_id,
            passkey: json!({ "cred": serde_json::to_value(&passkey).map_err(internal("passkey"))? }),
            name,
            aaguid,
            backup_eligible: passkey.backup_eligible,
            backup_state: passkey.backup_state,
            sign_count: passkey.counter,
            transports,
            at: now,
        })
        .await?;
    batch.add(&mut credential, &events)?;

    if adding {
        // Step-up, decided on the session's stream in the same append: a
        // backup-code session adds one passkey only, however it races.
        let session = &mut auth.as_mut().ok_or(ApiError::Unauthorized)?.session;
        let events = session
            .execute(SessionCommand::RecordPasskeyAdded {
                credential_id,
                at: now,
            })
            .await?;
        batch.add(session, &events)?;
        store.append(batch).await?;
        return Ok((
            StatusCode::CREATED,
            Json(CredentialCreated {
                credential_id: credential_id.to_string(),
            }),
        )
            .into_response());
    }
    let session = tokens::create_session(
        &state,
        &mut batch,
        customer_id,
        tokens::webauthn_method(credential_id),
        now,
    )
    .await?;
    if state.config().flag_founders_gate {
        crate::flows::founders::append_registration(
            &state,
            batch,
            customer_id,
            &request.challenge_id,
            now,
        )
        .await?;
    } else {
        store.append(batch).await?;
    }
    let customer_state = customer
        .aggregate
        .state()
        .ok_or_else(|| ApiError::internal("registered customer has no state"))?;
    let mut tokens = tokens::token_response(
        &state,
        customer_state,
        session.session_id,
        Some(&session.method),
        Some(now),
        session.refresh_token,
        now,
    )?;
    tokens.credential_id = Some(credential_id.to_string());
    Ok((StatusCode::CREATED, Json(tokens)).into_response())
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
    let now = state.now();
    let store = state.store();
    let email = request.email.as_deref().map(Email::parse).transpose()?;
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
            let customer_id = store.customer_by_email(email).await?;
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
    let challenge_id = challenges::store(
        store.pool(),
        Kind::Login,
        customer_id,
        context,
        serde_json::to_value(&authentication).map_err(internal("authentication state"))?,
        now,
        state.config().challenge_ttl_secs,
    )
    .await?;
    Ok(Json(BeginResponse {
        challenge_id: challenge_id.to_string(),
        options: serde_json::to_value(&options).map_err(internal("options"))?,
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
    let result = login(&state, &address, request).await;
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

async fn login(
    state: &AppState,
    address: &str,
    request: LoginCompleteRequest,
) -> Result<TokenResponse, ApiError> {
    state
        .inner
        .address_limiter
        .check(&format!("login:{address}"))
        .await?;
    let now = state.now();
    let store = state.store();
    let response: PublicKeyCredential = parse_credential(request.credential)?;
    let raw_id = RawCredentialId::from_bytes(response.raw_id.clone());
    let credential_id = raw_id.as_ref().map_or_else(
        |_| CredentialId::for_raw_id(&[]),
        RawCredentialId::credential_id,
    );
    // The challenge is taken (single use) whatever the passkey; the passkey's
    // stream is read at the same time.
    let (challenge, credential) = tokio::join!(
        challenges::take(store.pool(), Kind::Login, &request.challenge_id, now),
        store.credential(credential_id),
    );
    let challenge = challenge?;
    let mut credential = credential?;
    let authentication: AuthenticationState =
        serde_json::from_value(challenge.state).map_err(internal("authentication state"))?;
    if raw_id.is_err() {
        return Err(ApiError::WebauthnFailed);
    }
    let known = credential.aggregate.state().filter(|s| !s.is_revoked());
    // The account a failure is charged to: the one the login was begun
    // for, else the passkey's owner.
    let account = challenge
        .customer_id
        .or_else(|| known.map(|s| s.customer_id))
        .map(|id| id.to_string());
    if let Some(account) = &account {
        // This address's failures on this account only: the ceiling never
        // stands in the way of a valid passkey.
        state
            .inner
            .account_limits
            .refuse_if_exhausted("login", account, address, false)
            .await?;
    }
    let failed = |why: &'static str| {
        let account = account.clone();
        async move {
            tracing::info!(why, "login refused");
            match account {
                Some(account) => failed_verification(state, "login", &account, address).await,
                None => ApiError::WebauthnFailed,
            }
        }
    };
    let Some(credential_state) = known else {
        return Err(failed("unknown or revoked passkey").await);
    };
    let owner = credential_state.customer_id;
    let discoverable =
        challenge.context.get("mode").and_then(Value::as_str) == Some("discoverable");
    let owner_matches = if discoverable {
        response
            .response
            .user_handle
            .as_ref()
            .is_some_and(|handle| handle.as_slice() == owner.as_uuid().as_bytes())
    } else {
        challenge.customer_id == Some(owner)
    };
    if !owner_matches {
        return Err(failed("passkey does not belong to the customer of the challenge").await);
    }
    if is_cross_origin(&response) {
        return Err(failed("crossOrigin assertion").await);
    }

    let mut passkey: webauthn_rs_core::proto::Credential = serde_json::from_value(
        credential_state
            .passkey
            .get("cred")
            .cloned()
            .unwrap_or(Value::Null),
    )
    .map_err(internal("stored passkey"))?;
    // The aggregate owns the counter check (so a regression is refused and
    // audited there); webauthn-rs verifies everything else.
    passkey.counter = 0;
    passkey.backup_state = credential_state.backup_state;
    passkey.backup_eligible = credential_state.backup_eligible;
    let verified = match queue_passkey::authenticate(
        &state.inner.webauthn,
        &response,
        &authentication,
        &passkey,
    ) {
        Ok(verified) => verified,
        Err(e) => {
            tracing::info!(error = %e, "passkey assertion refused");
            return Err(failed("assertion refused").await);
        }
    };
    if !verified.user_verified {
        return Err(failed("user not verified").await);
    }

    let customer = store.customer(owner).await?;
    let customer_state = customer
        .aggregate
        .state()
        .ok_or_else(|| ApiError::internal("passkey of an unknown customer"))?;
    if customer_state.is_suspended() {
        return Err(ApiError::CustomerSuspended);
    }

    let used = credential
        .execute(CredentialCommand::RecordUse {
            sign_count: verified.counter,
            backup_state: verified.backup_state,
            at: now,
        })
        .await;
    let events = match used {
        Ok(events) => events,
        Err(CredentialError::CounterRegression { stored, presented }) => {
            audit_counter_regression(
                state,
                &request.challenge_id,
                owner,
                credential_id,
                stored,
                presented,
            )
            .await?;
            return Err(failed("sign counter regression").await);
        }
        Err(other) => {
            tracing::info!(error = %other, "passkey use refused");
            return Err(failed("passkey use refused").await);
        }
    };
    let mut batch = Batch::new();
    batch.add(&mut credential, &events)?;
    let session = tokens::create_session(
        state,
        &mut batch,
        owner,
        tokens::webauthn_method(credential_id),
        now,
    )
    .await?;
    crate::routes::admin::append_login(state, owner, batch).await?;
    tokens::token_response(
        state,
        customer_state,
        session.session_id,
        Some(&session.method),
        Some(now),
        session.refresh_token,
        now,
    )
}

/// Charges a failed verification to (account, address) and the account's
/// ceiling; the answer is the failure, or 429 once a bucket is empty.
pub(crate) async fn failed_verification(
    state: &AppState,
    scope: &str,
    account: &str,
    address: &str,
) -> ApiError {
    let failure = match scope {
        "login" => ApiError::WebauthnFailed,
        _ => ApiError::InvalidCode,
    };
    match state
        .inner
        .account_limits
        .record_failure(scope, account, address)
        .await
    {
        Ok(()) => failure,
        Err(limited) => limited,
    }
}

/// `clientDataJSON.crossOrigin == true`: the assertion was made in a frame
/// of another origin. webauthn-rs-core checks it only at registration.
fn is_cross_origin(response: &PublicKeyCredential) -> bool {
    serde_json::from_slice::<Value>(response.response.client_data_json.as_slice())
        .ok()
        .and_then(|data| data.get("crossOrigin").and_then(Value::as_bool))
        == Some(true)
}

/// A sign counter that did not increase: possible cloned authenticator.
/// Recorded in the ledger as an audit event by Queue itself.
async fn audit_counter_regression(
    state: &AppState,
    challenge_id: &str,
    customer_id: CustomerId,
    credential_id: queue_domain::types::CredentialId,
    stored: u32,
    presented: u32,
) -> Result<(), ApiError> {
    tracing::warn!(%customer_id, %credential_id, stored, presented, "sign counter regression: possible cloned passkey");
    metrics::login("counter_regression");
    let now = state.now();
    let key = IdempotencyKey::parse(&format!("counter-regression:{challenge_id}"))?;
    let service = ServiceName::parse("queue")?;
    let id = AuditEventId::for_idempotency_key(service.as_str(), key.as_str());
    let mut audit: Loaded<Audit> = state.store().load(&id.to_string()).await?;
    let events = audit
        .execute(AuditCommand::Record {
            service,
            actor: Actor::parse("queue")?,
            action: AuditAction::parse("credential.counter_regression")?,
            target: AuditTarget::parse(&format!("credential:{credential_id}"))?,
            customer_id: Some(customer_id),
            ticket_id: None,
            occurred_at: now,
            metadata: json!({
                "credential_id": credential_id.to_string(),
                "stored_sign_count": stored,
                "presented_sign_count": presented,
            }),
            idempotency_key: key,
            at: now,
        })
        .await
        .map_err(|e| ApiError::internal(format!("audit: {e}")))?;
    let mut batch = Batch::new();
    batch.add(&mut audit, &events)?;
    state.store().append(batch).await?;
    Ok(())
}
