//! The service API: calls authenticated with a service token.

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::header::RETRY_AFTER;
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};

use crate::error::ClientError;

/// How 503 (`unavailable`, `shutting_down`), 429 (`rate_limited`,
/// `overloaded`) and unreachable Queue are retried.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts in all (the first included).
    pub max_attempts: u32,
    /// The wait when Queue gives no `Retry-After` (doubles per attempt).
    pub base_delay: Duration,
    /// No single wait is longer than this, whatever `Retry-After` says.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(30),
        }
    }
}

/// A service's client. The token is never logged (`Debug` hides it).
#[derive(Clone)]
pub struct ServiceClient {
    http: reqwest::Client,
    base: String,
    token: String,
    retry: RetryPolicy,
}

impl std::fmt::Debug for ServiceClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceClient")
            .field("base", &self.base)
            .field("token", &"<redacted>")
            .field("retry", &self.retry)
            .finish()
    }
}

/// `POST /api/v1/audit/events`. The idempotency key is made once, here, and
/// sent with every retry, so a write that Queue applied but could not
/// answer is not applied twice.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AuditWrite {
    pub actor: String,
    pub action: String,
    pub target: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ticket_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub occurred_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
    pub idempotency_key: String,
    /// The slug of the tenant an entry without `customer_id` belongs to
    /// (a token limited to several tenants must name one; see
    /// [`AuditWrite::in_tenant`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

impl AuditWrite {
    /// With a new random idempotency key.
    pub fn new(
        actor: impl Into<String>,
        action: impl Into<String>,
        target: impl Into<String>,
    ) -> Self {
        Self {
            actor: actor.into(),
            action: action.into(),
            target: target.into(),
            customer_id: None,
            ticket_id: None,
            occurred_at: None,
            metadata: None,
            idempotency_key: uuid::Uuid::new_v4().to_string(),
            tenant: None,
        }
    }

    /// An entry about no customer, in the tenant `slug`: the tenant's
    /// limited tokens read it back. Naming a customer as well is refused
    /// (400): a customer's entry is its tenant's.
    pub fn in_tenant(mut self, slug: impl Into<String>) -> Self {
        self.tenant = Some(slug.into());
        self
    }

    /// The same write under a key of the caller's (e.g. derived from its own
    /// record, so a restarted caller repeats it safely).
    pub fn with_idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = key.into();
        self
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditWritten {
    pub event_id: String,
    pub ledger_status: String,
    pub hash: String,
    /// Queue already had this idempotency key (200): the original event.
    pub replayed: bool,
    /// Requests it took.
    pub attempts: u32,
}

#[derive(Deserialize)]
struct Written {
    event_id: String,
    ledger_status: String,
    hash: String,
}

#[derive(Deserialize, Default)]
struct Envelope {
    #[serde(default)]
    error: ErrorBody,
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

impl ServiceClient {
    /// `base`: where Queue is, e.g. `https://queue.example.com`.
    pub fn new(base: &str, token: &str) -> Result<Self, ClientError> {
        reqwest::Url::parse(base).map_err(|_| ClientError::Config("base is not a URL".into()))?;
        if token.len() < 16 {
            return Err(ClientError::Config(
                "a service token has at least 16 characters".into(),
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| ClientError::Config(e.to_string()))?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            retry: RetryPolicy::default(),
        })
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Writes an audit event; retried (same idempotency key) while Queue
    /// answers 503 or 429 or cannot be reached.
    pub async fn write_audit(&self, event: &AuditWrite) -> Result<AuditWritten, ClientError> {
        let url = format!("{}/api/v1/audit/events", self.base);
        let (response, attempts) = self
            .send("audit write", Retry::Yes(&self.retry), || {
                self.http.post(&url).json(event)
            })
            .await?;
        let replayed = response.status() == StatusCode::OK;
        let written: Written = body(response).await?;
        Ok(AuditWritten {
            event_id: written.event_id,
            ledger_status: written.ledger_status,
            hash: written.hash,
            replayed,
            attempts,
        })
    }

    /// Sends the request `build` makes (again for each attempt) with the
    /// service token. A 2xx is returned with the number of attempts; any
    /// other answer is [`ClientError::Api`], except that with
    /// [`Retry::Yes`] a 503, a 429 or an unreachable Queue is tried again,
    /// waiting as `Retry-After` says, until the policy's attempts are spent
    /// ([`ClientError::GaveUp`]). Only idempotent or idempotency-keyed calls
    /// pass [`Retry::Yes`]: a call that Queue may have applied before the
    /// connection broke must not be applied twice.
    pub(crate) async fn send(
        &self,
        what: &'static str,
        retry: Retry<'_>,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<(reqwest::Response, u32), ClientError> {
        let policy = match retry {
            Retry::Yes(policy) => Some(policy),
            Retry::No => None,
        };
        let max_attempts = policy.map_or(1, |p| p.max_attempts.max(1));
        let mut attempt = 0;
        loop {
            attempt += 1;
            let sent = build().bearer_auth(&self.token).send().await;
            let (wait, last) = match sent {
                Ok(response) => {
                    let status = response.status();
                    if status.is_success() {
                        return Ok((response, attempt));
                    }
                    let retry_after = retry_after(response.headers());
                    let body: Envelope = response.json().await.unwrap_or_default();
                    let retryable = status == StatusCode::SERVICE_UNAVAILABLE
                        || status == StatusCode::TOO_MANY_REQUESTS;
                    if !retryable || policy.is_none() {
                        return Err(ClientError::Api {
                            status: status.as_u16(),
                            code: body.error.code,
                            message: body.error.message,
                        });
                    }
                    (
                        retry_after,
                        format!("{} {}", status.as_u16(), body.error.code),
                    )
                }
                Err(e) if policy.is_none() => return Err(ClientError::Transport(e.to_string())),
                Err(e) => (None, e.to_string()),
            };
            let Some(policy) = policy.filter(|_| attempt < max_attempts) else {
                return Err(ClientError::GaveUp {
                    attempts: attempt,
                    last,
                });
            };
            let backoff = policy
                .base_delay
                .saturating_mul(1u32 << (attempt - 1).min(16));
            let wait = wait.unwrap_or(backoff).min(policy.max_delay);
            tracing::debug!(what, attempt, wait_ms = wait.as_millis() as u64, %last, "retrying");
            tokio::time::sleep(wait).await;
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub(crate) fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }
}

/// Whether a call may be sent again (see [`ServiceClient::send`]).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Retry<'a> {
    Yes(&'a RetryPolicy),
    No,
}

/// A 2xx answer's JSON body.
pub(crate) async fn body<T: serde::de::DeserializeOwned>(
    response: reqwest::Response,
) -> Result<T, ClientError> {
    response
        .json()
        .await
        .map_err(|e| ClientError::Transport(e.to_string()))
}

/// `Retry-After` in seconds (Queue sends seconds; an HTTP date is ignored).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn retry_after_takes_seconds() {
        let mut headers = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(3)));
        headers.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn the_token_is_not_in_debug() {
        let client = ServiceClient::new("http://127.0.0.1:1", "a-very-secret-token-1").unwrap();
        assert!(!format!("{client:?}").contains("very-secret"));
    }
}
