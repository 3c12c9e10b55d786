//! Signing in with a passkey, and reauthenticating a session (step-up, ADR
//! 0211): one assertion check for both. The order matters and is the same
//! for both: take the single-use challenge, match the passkey to the
//! customer the challenge was made for, verify the assertion (webauthn-rs
//! through queue-passkey, which also refuses `crossOrigin`), require user
//! verification, let the credential aggregate decide the sign counter (a
//! regression is refused and audited), refuse a suspended customer, then
//! append everything in one batch.
//!
//! Failures are charged to (account, client address) only, never on
//! success, and answer the same `webauthn_failed` whatever went wrong; the
//! reason is logged (ADR 0205).

use chrono::{DateTime, Utc};
use queue_domain::credential::{CredentialCommand, CredentialError, CredentialEvent};
use queue_domain::session::SessionCommand;
use queue_domain::types::{CredentialId, CustomerId, RawCredentialId};
use queue_domain::{Credential, Customer};
use queue_eventstore::{Batch, Loaded};
use queue_passkey::Assertion;
use serde_json::{json, Value};
use webauthn_rs_core::proto::{AuthenticationState, PublicKeyCredential};

use crate::auth::challenges::{self, Challenge, Kind};
use crate::auth::tokens::{self, TokenResponse};
use crate::flows::queue_audit::{self, QueueAudit};
use crate::http::error::ApiError;
use crate::http::extract::Authenticated;
use crate::http::metrics;
use crate::routes::passkeys::parse_credential;
use crate::state::AppState;

/// How often a login whose append lost a race with another use of the same
/// passkey decides again. Each retry follows another login's commit, so
/// this bounds a burst of simultaneous logins with one passkey.
const MAX_LOGIN_ATTEMPTS: u32 = 10;

/// `login/complete`: a verified assertion of a passkey of the customer the
/// challenge was begun for (or, discoverable, whose user handle it
/// carries) starts a session.
pub async fn login(
    state: &AppState,
    address: &str,
    challenge_id: &str,
    credential: Value,
) -> Result<TokenResponse, ApiError> {
    state
        .inner
        .address_limiter
        .check(&format!("login:{address}"))
        .await?;
    let now = state.now();
    let store = state.store();
    let response: PublicKeyCredential = parse_credential(credential)?;
    let raw_id = RawCredentialId::from_bytes(response.raw_id.clone());
    let credential_id = raw_id.as_ref().map_or_else(
        |_| CredentialId::for_raw_id(&[]),
        RawCredentialId::credential_id,
    );
    // The challenge is taken (single use) whatever the passkey; the passkey's
    // stream is read at the same time.
    let (challenge, credential) = tokio::join!(
        challenges::take(store.pool(), Kind::Login, challenge_id, now),
        store.credential(credential_id),
    );
    let challenge = challenge?;
    let mut credential = credential?;
    let authentication: AuthenticationState = serde_json::from_value(challenge.state.clone())
        .map_err(ApiError::internal_json("authentication state"))?;
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
    let Some(owner) = known.map(|s| s.customer_id) else {
        return Err(failed("unknown or revoked passkey").await);
    };
    if !owner_matches(&challenge, &response, owner) {
        return Err(failed("passkey does not belong to the customer of the challenge").await);
    }
    let assertion = match verify_assertion(state, &response, &authentication, &credential) {
        Ok(assertion) => assertion,
        Err(why) => return Err(failed(why).await),
    };

    let customer = store.customer(owner).await?;
    let customer_state = customer
        .aggregate
        .state()
        .ok_or_else(|| ApiError::internal("passkey of an unknown customer"))?;
    if customer_state.is_suspended() {
        return Err(ApiError::CustomerSuspended);
    }
    // Two logins with the same passkey may load the same version of its
    // stream; the one that appends second is told by the store. It reads
    // the passkey again and lets the aggregate decide once more (the other
    // login's counter makes this assertion's a regression, or not), so a
    // race answers as a login, never 409 (the challenge is already spent).
    let mut attempt = 0;
    let session = loop {
        attempt += 1;
        let used = match record_use(
            state,
            &mut credential,
            credential_id,
            &assertion,
            challenge_id,
            owner,
        )
        .await?
        {
            Ok(events) => events,
            Err(why) => return Err(failed(why).await),
        };
        let mut batch = Batch::new();
        batch.add(&mut credential, &used)?;
        let session = tokens::create_session(
            state,
            &mut batch,
            owner,
            tokens::webauthn_method(credential_id),
            now,
        )
        .await?;
        match append_login(state, owner, batch).await {
            Ok(()) => break session,
            Err(ApiError::Conflict) if attempt < MAX_LOGIN_ATTEMPTS => {
                credential = store.credential(credential_id).await?;
                if credential.aggregate.state().is_none_or(|s| s.is_revoked()) {
                    return Err(failed("passkey revoked during the login").await);
                }
            }
            Err(other) => return Err(other),
        }
    };
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

/// `reauth/complete`: a verified assertion of one of the session's
/// customer's passkeys, for a challenge begun by this session, refreshes
/// the session's `auth_time` (`SessionReauthenticated`). Returns it.
pub async fn reauthenticate(
    state: &AppState,
    address: &str,
    auth: &mut Authenticated,
    challenge_id: &str,
    credential: Value,
) -> Result<DateTime<Utc>, ApiError> {
    let now = state.now();
    let store = state.store();
    let account = auth.customer_id.to_string();
    state
        .inner
        .account_limits
        .refuse_if_exhausted("login", &account, address, false)
        .await?;
    let response: PublicKeyCredential = parse_credential(credential)?;
    let challenge = challenges::take(store.pool(), Kind::Reauth, challenge_id, now).await?;
    let failed = |why: &'static str| {
        let account = account.clone();
        async move {
            tracing::info!(why, "reauth refused");
            failed_verification(state, "login", &account, address).await
        }
    };
    let session_matches = challenge.customer_id == Some(auth.customer_id)
        && challenge.context.get("session_id").and_then(Value::as_str)
            == Some(auth.session_id.to_string().as_str());
    if !session_matches {
        return Err(failed("challenge of another session").await);
    }
    let authentication: AuthenticationState = serde_json::from_value(challenge.state)
        .map_err(ApiError::internal_json("authentication state"))?;
    let Ok(raw_id) = RawCredentialId::from_bytes(response.raw_id.clone()) else {
        return Err(failed("bad credential id").await);
    };
    let credential_id: CredentialId = raw_id.credential_id();
    let mut credential = store.credential(credential_id).await?;
    let usable = credential
        .aggregate
        .state()
        .is_some_and(|s| !s.is_revoked() && s.customer_id == auth.customer_id);
    if !usable {
        return Err(failed("not a usable passkey of this customer").await);
    }
    let assertion = match verify_assertion(state, &response, &authentication, &credential) {
        Ok(assertion) => assertion,
        Err(why) => return Err(failed(why).await),
    };
    let customer = store.customer(auth.customer_id).await?;
    if customer.aggregate.state().is_none_or(|c| c.is_suspended()) {
        return Err(ApiError::CustomerSuspended);
    }
    // As in a login: another login with this passkey, or a refresh of this
    // session, may append first; read both streams again and let the
    // aggregates decide once more, so a race answers 200 or 401, never 409.
    let mut attempt = 0;
    loop {
        attempt += 1;
        let used = match record_use(
            state,
            &mut credential,
            credential_id,
            &assertion,
            challenge_id,
            auth.customer_id,
        )
        .await?
        {
            Ok(events) => events,
            Err(why) => return Err(failed(why).await),
        };
        let reauthenticated = auth
            .session
            .execute(SessionCommand::Reauthenticate {
                credential_id,
                at: now,
            })
            .await?;
        let mut batch = Batch::new();
        batch.add(&mut credential, &used)?;
        batch.add(&mut auth.session, &reauthenticated)?;
        match store.append(batch).await.map_err(ApiError::from) {
            Ok(()) => return Ok(now),
            Err(ApiError::Conflict) if attempt < MAX_LOGIN_ATTEMPTS => {
                credential = store.credential(credential_id).await?;
                if credential.aggregate.state().is_none_or(|s| s.is_revoked()) {
                    return Err(failed("passkey revoked during the reauthentication").await);
                }
                auth.session = store.session(auth.session_id).await?;
            }
            Err(other) => return Err(other),
        }
    }
}

/// Whether the asserting passkey's owner is the customer the challenge was
/// made for: by email, the challenge names the customer; discoverable, the
/// assertion's user handle does.
fn owner_matches(challenge: &Challenge, response: &PublicKeyCredential, owner: CustomerId) -> bool {
    let discoverable =
        challenge.context.get("mode").and_then(Value::as_str) == Some("discoverable");
    if discoverable {
        response
            .response
            .user_handle
            .as_ref()
            .is_some_and(|handle| handle.as_slice() == owner.as_uuid().as_bytes())
    } else {
        challenge.customer_id == Some(owner)
    }
}

/// Verifies the assertion against the stored passkey and requires user
/// verification; the refusal's reason is for the log only.
fn verify_assertion(
    state: &AppState,
    response: &PublicKeyCredential,
    authentication: &AuthenticationState,
    credential: &Loaded<Credential>,
) -> Result<Assertion, &'static str> {
    let stored = credential
        .aggregate
        .state()
        .ok_or("unknown or revoked passkey")?;
    let mut passkey: webauthn_rs_core::proto::Credential =
        serde_json::from_value(stored.passkey.get("cred").cloned().unwrap_or(Value::Null))
            .map_err(|e| {
                tracing::error!(error = %e, "stored passkey does not decode");
                "stored passkey does not decode"
            })?;
    // The aggregate owns the counter check (so a regression is refused and
    // audited there); webauthn-rs verifies everything else.
    passkey.counter = 0;
    passkey.backup_state = stored.backup_state;
    passkey.backup_eligible = stored.backup_eligible;
    let assertion =
        queue_passkey::authenticate(&state.inner.webauthn, response, authentication, &passkey)
            .map_err(|e| {
                tracing::info!(error = %e, "passkey assertion refused");
                "assertion refused"
            })?;
    if !assertion.user_verified {
        return Err("user not verified");
    }
    Ok(assertion)
}

/// Records the passkey's use (sign counter, backup state). A counter that
/// did not increase is refused (the inner `Err`, with the reason for the
/// log) and recorded as Queue's own audit event.
async fn record_use(
    state: &AppState,
    credential: &mut Loaded<Credential>,
    credential_id: CredentialId,
    assertion: &Assertion,
    challenge_id: &str,
    customer_id: CustomerId,
) -> Result<Result<Vec<CredentialEvent>, &'static str>, ApiError> {
    let used = credential
        .execute(CredentialCommand::RecordUse {
            sign_count: assertion.counter,
            backup_state: assertion.backup_state,
            at: state.now(),
        })
        .await;
    match used {
        Ok(events) => Ok(Ok(events)),
        Err(CredentialError::CounterRegression { stored, presented }) => {
            tracing::warn!(%customer_id, %credential_id, stored, presented, "sign counter regression: possible cloned passkey");
            metrics::login("counter_regression");
            queue_audit::record(
                state,
                QueueAudit {
                    key: &format!("counter-regression:{challenge_id}"),
                    action: "credential.counter_regression",
                    target: &format!("credential:{credential_id}"),
                    customer_id: Some(customer_id),
                    tenant_id: None,
                    metadata: json!({
                        "credential_id": credential_id.to_string(),
                        "stored_sign_count": stored,
                        "presented_sign_count": presented,
                    }),
                },
                state.now(),
            )
            .await?;
            Ok(Err("sign counter regression"))
        }
        Err(other) => {
            tracing::info!(error = %other, "passkey use refused");
            Ok(Err("passkey use refused"))
        }
    }
}

/// Checks a guessable secret (a backup code, an email token) of `account`
/// under the per-account limits: a used-up (account, address) bucket or
/// account ceiling refuses before the check; only a wrong secret
/// (`invalid_code`) charges them (issue 17).
pub async fn check_guessable<T>(
    state: &AppState,
    scope: &str,
    account: &str,
    address: &str,
    check: impl std::future::Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    state
        .inner
        .account_limits
        .refuse_if_exhausted(scope, account, address, true)
        .await?;
    match check.await {
        Err(ApiError::InvalidCode) => {
            Err(failed_verification(state, scope, account, address).await)
        }
        other => other,
    }
}

/// Charges a failed verification to (account, address) and the account's
/// ceiling; the answer is the failure, or 429 once a bucket is empty.
pub async fn failed_verification(
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

/// Appends a passkey login's batch (credential use and new session) unless
/// the customer is suspended, re-checked under the customer's shared lock
/// in the same transaction: a login racing a suspension either commits
/// first (and its session is revoked by it) or sees the suspension (403).
pub async fn append_login(
    state: &AppState,
    customer_id: CustomerId,
    batch: Batch,
) -> Result<(), ApiError> {
    let store = state.store();
    let mut tx = state.pool.begin().await?;
    crate::db::lock(
        &mut tx,
        crate::db::Lock::CustomerShared,
        &customer_id.to_string(),
    )
    .await?;
    let suspended = store
        .load_many_in::<Customer>(&mut tx, &[customer_id.to_string()])
        .await?
        .pop()
        .and_then(|c| c.aggregate.state().map(|s| s.is_suspended()))
        .unwrap_or(false);
    if suspended {
        return Err(ApiError::CustomerSuspended);
    }
    store.append_in(&mut tx, batch).await?;
    tx.commit().await?;
    Ok(())
}
