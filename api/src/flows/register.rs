//! Registering a passkey: a new customer with their first passkey (behind
//! the founders gate when it is on), or another passkey for the signed-in
//! customer (a factor change: step-up is decided on the session's stream in
//! the same append, ADR 0211). The challenge is spent only after every field
//! parsed; `email_taken` is throttled per email as well as per address.

use queue_domain::credential::CredentialCommand;
use queue_domain::customer::CustomerCommand;
use queue_domain::session::SessionCommand;
use queue_domain::types::{CredentialId, CredentialName, DisplayName, Email, RawCredentialId};
use queue_domain::{Credential, Customer};
use queue_eventstore::{Batch, Loaded};
use serde_json::{json, Value};
use webauthn_rs_core::proto::{
    AttestationMetadata, RegisterPublicKeyCredential, RegistrationState,
};

use crate::auth::challenges::{self, Kind};
use crate::auth::tokens::{self, TokenResponse};
use crate::flows::founders;
use crate::http::error::ApiError;
use crate::http::extract::Authenticated;
use crate::routes::passkeys::parse_credential;
use crate::state::AppState;

/// What a registration made.
pub enum Registered {
    /// A new customer, signed in.
    Customer(Box<TokenResponse>),
    /// Another passkey of the signed-in customer.
    Passkey(CredentialId),
}

/// `register/complete`.
pub async fn complete(
    state: &AppState,
    address: &str,
    mut auth: Option<Authenticated>,
    challenge_id: &str,
    credential: Value,
    name: Option<&str>,
) -> Result<Registered, ApiError> {
    state
        .inner
        .register_address_limiter
        .check(&format!("register:{address}"))
        .await?;
    let now = state.now();
    let store = state.store();
    // Parse everything before the challenge is spent.
    let response: RegisterPublicKeyCredential = parse_credential(credential)?;
    let name = name.map(CredentialName::parse).transpose()?;
    let challenge = challenges::take(store.pool(), Kind::Register, challenge_id, now).await?;
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
    let registration: RegistrationState = serde_json::from_value(challenge.state)
        .map_err(ApiError::internal_json("registration state"))?;
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
            .map_err(ApiError::internal_json("challenge email"))?;
        let display_name: DisplayName =
            serde_json::from_value(challenge.context["display_name"].clone())
                .map_err(ApiError::internal_json("challenge display name"))?;
        let events = customer
            .execute(CustomerCommand::Register {
                customer_id,
                // The public registration is the default tenant's; other
                // tenants' customers come from their IdP (ADR 0218).
                tenant_id: queue_domain::types::TenantId::DEFAULT,
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
            passkey: json!({ "cred": serde_json::to_value(&passkey).map_err(ApiError::internal_json("passkey"))? }),
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
        return Ok(Registered::Passkey(credential_id));
    }
    let session = tokens::create_session(
        state,
        &mut batch,
        customer_id,
        tokens::webauthn_method(credential_id),
        now,
    )
    .await?;
    if state.config().flag_founders_gate {
        founders::append_registration(state, batch, customer_id, challenge_id, now).await?;
    } else {
        store.append(batch).await?;
    }
    let customer_state = customer
        .aggregate
        .state()
        .ok_or_else(|| ApiError::internal("registered customer has no state"))?;
    let mut tokens = tokens::token_response(
        state,
        customer_state,
        session.session_id,
        Some(&session.method),
        Some(now),
        session.refresh_token,
        now,
    )?;
    tokens.credential_id = Some(credential_id.to_string());
    Ok(Registered::Customer(Box::new(tokens)))
}
