//! The one error type of queue-client.

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A URL or token given to a constructor is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// Queue could not be reached (connect, timeout, body).
    #[error("transport: {0}")]
    Transport(String),
    /// Queue answered with an error envelope (`code`, `message`).
    #[error("{status} {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// Still 503/429 (or unreachable) after every retry.
    #[error("gave up after {attempts} attempts (last: {last})")]
    GaveUp { attempts: u32, last: String },
    /// A token's `kid` is in no JWKS we have, and Queue could not be asked
    /// (or was asked too recently).
    #[error("unknown signing key {kid:?}")]
    UnknownKey { kid: String },
    /// A token that does not verify (signature, expiry, issuer, audience, shape).
    #[error("invalid token: {0}")]
    InvalidToken(String),
}
