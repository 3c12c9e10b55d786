//! Parsed value types shared by the aggregates.
//!
//! Every value that enters the domain from outside (HTTP, CLI, legacy rows) is
//! parsed into one of these first, so a command can only carry valid data and a
//! `CustomerId` can never stand in for a `SessionId`.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Why a raw value could not be parsed; `field` names the input for the
/// caller's `invalid_request` message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("{field} must not be empty")]
    Empty { field: &'static str },
    #[error("{field} is too long (at most {max})")]
    TooLong { field: &'static str, max: usize },
    #[error("{field} is invalid: {reason}")]
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
}

impl ParseError {
    /// The name of the field that failed to parse.
    pub fn field(&self) -> &'static str {
        match self {
            Self::Empty { field } | Self::TooLong { field, .. } | Self::Invalid { field, .. } => {
                field
            }
        }
    }
}

fn invalid(field: &'static str, reason: &'static str) -> ParseError {
    ParseError::Invalid { field, reason }
}

/// Largest integer the ledger accepts in a payload (its numbers must stay
/// below 2^53 in absolute value to survive JSON canonicalisation).
pub const MAX_LEDGER_INTEGER: i64 = (1 << 53) - 1;

/// Checks that a JSON value can go into an event payload unchanged: no floats
/// and no integers of 2^53 or more in absolute value, at any depth.
pub fn check_ledger_json(value: &serde_json::Value) -> Result<(), &'static str> {
    // An explicit stack: values built in code are not depth-limited like parsed ones.
    let mut pending = vec![value];
    while let Some(value) = pending.pop() {
        match value {
            serde_json::Value::Number(number) => {
                let safe = match (number.as_i64(), number.as_u64()) {
                    (Some(n), _) => n.unsigned_abs() <= MAX_LEDGER_INTEGER.unsigned_abs(),
                    (None, Some(n)) => n <= MAX_LEDGER_INTEGER.unsigned_abs(),
                    (None, None) => return Err("numbers must be integers, not floats"),
                };
                if !safe {
                    return Err("integers must be below 2^53 in absolute value");
                }
            }
            serde_json::Value::Array(items) => pending.extend(items),
            serde_json::Value::Object(map) => pending.extend(map.values()),
            serde_json::Value::Null | serde_json::Value::Bool(_) | serde_json::Value::String(_) => {
            }
        }
    }
    Ok(())
}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            pub const fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            pub const fn as_uuid(&self) -> &Uuid {
                &self.0
            }
        }

        impl From<Uuid> for $name {
            fn from(uuid: Uuid) -> Self {
                Self(uuid)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Self {
                id.0
            }
        }

        impl FromStr for $name {
            type Err = ParseError;

            fn from_str(raw: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(raw)
                    .map(Self)
                    .map_err(|_| invalid($field, "not a UUID"))
            }
        }

        impl fmt::Display for $name {
            // Hyphenated lowercase: this is also the aggregate id string.
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }
    };
}

uuid_id!(
    /// A customer; the id of a `Customer` stream.
    CustomerId,
    "customer_id"
);
uuid_id!(
    /// One passkey; the id of a `Credential` stream (see [`CredentialId::for_raw_id`]).
    CredentialId,
    "credential_id"
);
uuid_id!(
    /// A login session; the id of a `Session` stream.
    SessionId,
    "session_id"
);
uuid_id!(
    /// One role grant on a customer.
    GrantId,
    "grant_id"
);
uuid_id!(
    /// Groups the sessions that descend from one login.
    SessionFamilyId,
    "family_id"
);
uuid_id!(
    /// One external audit event; the id of an `Audit` stream
    /// (see [`AuditEventId::for_idempotency_key`]).
    AuditEventId,
    "event_id"
);

impl CredentialId {
    /// UUIDv5 namespace for passkey ids: UUIDv5(URL, "urn:queue:ns:credential-id").
    pub const NAMESPACE: Uuid = Uuid::from_u128(0x8bfa8916_9c44_5830_93c2_dd796ccef3ee);

    /// The stream id of a WebAuthn raw credential id. Deterministic, so one
    /// authenticator credential can only ever have one stream (registration
    /// and backfill cannot create duplicates).
    pub fn for_raw_id(raw_credential_id: &[u8]) -> Self {
        Self(Uuid::new_v5(&Self::NAMESPACE, raw_credential_id))
    }
}

impl AuditEventId {
    /// UUIDv5 namespace for audit events: UUIDv5(URL, "urn:queue:ns:audit-event-id").
    pub const NAMESPACE: Uuid = Uuid::from_u128(0x9659cc14_1c8b_5931_8695_68da37267811);

    /// The stream id of a service's idempotency key, so a retried POST lands
    /// on the same stream. The service name is length-prefixed so that
    /// ("ab", "c") and ("a", "bc") differ.
    pub fn for_idempotency_key(service: &str, key: &str) -> Self {
        let name = format!("{}:{service}:{key}", service.len());
        Self(Uuid::new_v5(&Self::NAMESPACE, name.as_bytes()))
    }
}

impl CustomerId {
    /// UUIDv5 namespace for backfilled customers: UUIDv5(URL, "urn:queue:ns:customer-legacy-id").
    pub const LEGACY_NAMESPACE: Uuid = Uuid::from_u128(0xc3d7b07d_ac08_5111_aad5_c35b4c644cc4);

    /// The id of a customer backfilled from a legacy row; deterministic so a
    /// re-run of the backfill addresses the same stream.
    pub fn for_legacy_id(legacy_id: LegacyId) -> Self {
        Self(Uuid::new_v5(
            &Self::LEGACY_NAMESPACE,
            legacy_id.to_string().as_bytes(),
        ))
    }
}

impl SessionId {
    /// UUIDv5 namespace for backfilled sessions: UUIDv5(URL, "urn:queue:ns:session-legacy-id").
    pub const LEGACY_NAMESPACE: Uuid = Uuid::from_u128(0x00307b31_9a30_5a71_9fe8_2fda74818bfa);

    /// The id of a session backfilled from a legacy row (deterministic).
    pub fn for_legacy_id(legacy_id: LegacyId) -> Self {
        Self(Uuid::new_v5(
            &Self::LEGACY_NAMESPACE,
            legacy_id.to_string().as_bytes(),
        ))
    }
}

impl GrantId {
    /// UUIDv5 namespace for backfilled grants: UUIDv5(URL, "urn:queue:ns:grant-legacy-id").
    pub const LEGACY_NAMESPACE: Uuid = Uuid::from_u128(0xee870291_c646_509b_b81b_7a2fd33b7da4);

    /// The id of an RBAC grant backfilled from a legacy row (deterministic).
    pub fn for_legacy_id(legacy_id: LegacyId) -> Self {
        Self(Uuid::new_v5(
            &Self::LEGACY_NAMESPACE,
            legacy_id.to_string().as_bytes(),
        ))
    }
}

/// A row id from the legacy database. Kept below 2^53 so it stays an exact
/// JSON integer in the ledger.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct LegacyId(i64);

impl LegacyId {
    pub const fn get(self) -> i64 {
        self.0
    }
}

impl TryFrom<i64> for LegacyId {
    type Error = ParseError;

    fn try_from(id: i64) -> Result<Self, Self::Error> {
        if (1..=MAX_LEDGER_INTEGER).contains(&id) {
            Ok(Self(id))
        } else {
            Err(invalid("legacy_id", "must be between 1 and 2^53 - 1"))
        }
    }
}

impl From<LegacyId> for i64 {
    fn from(id: LegacyId) -> Self {
        id.0
    }
}

impl FromStr for LegacyId {
    type Err = ParseError;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let id: i64 = raw
            .parse()
            .map_err(|_| invalid("legacy_id", "not an integer"))?;
        Self::try_from(id)
    }
}

impl fmt::Display for LegacyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

macro_rules! string_newtype {
    ($(#[$doc:meta])* $name:ident, $parse:path) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Parses (and normalises) a raw value.
            pub fn parse(raw: &str) -> Result<Self, ParseError> {
                $parse(raw).map(Self)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = ParseError;

            fn try_from(raw: String) -> Result<Self, Self::Error> {
                Self::parse(&raw)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = ParseError;

            fn try_from(raw: &str) -> Result<Self, Self::Error> {
                Self::parse(raw)
            }
        }

        impl FromStr for $name {
            type Err = ParseError;

            fn from_str(raw: &str) -> Result<Self, Self::Err> {
                Self::parse(raw)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> Self {
                value.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

/// Checks length in characters (not bytes): empty and too-long are distinct errors.
fn check_length(field: &'static str, value: &str, max: usize) -> Result<(), ParseError> {
    if value.is_empty() {
        return Err(ParseError::Empty { field });
    }
    if value.chars().count() > max {
        return Err(ParseError::TooLong { field, max });
    }
    Ok(())
}

/// Trimmed free text of bounded length without control characters.
fn free_text(field: &'static str, raw: &str, max: usize) -> Result<String, ParseError> {
    let text = raw.trim();
    check_length(field, text, max)?;
    if text.chars().any(char::is_control) {
        return Err(invalid(field, "must not contain control characters"));
    }
    Ok(text.to_owned())
}

/// An opaque token of bounded length: printable, no whitespace, not trimmed.
fn token(field: &'static str, raw: &str, max: usize) -> Result<String, ParseError> {
    check_length(field, raw, max)?;
    if raw.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(invalid(
            field,
            "must not contain whitespace or control characters",
        ));
    }
    Ok(raw.to_owned())
}

/// A lowercase name: `[a-z0-9._:-]` and `_`, used for roles and audit actions.
fn lowercase_name(
    field: &'static str,
    raw: &str,
    max: usize,
    must_start_with_letter: bool,
) -> Result<String, ParseError> {
    check_length(field, raw, max)?;
    if !raw
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ".:_-".contains(c))
    {
        return Err(invalid(
            field,
            "may only contain a-z, 0-9 and the characters . _ : -",
        ));
    }
    if must_start_with_letter && !raw.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(invalid(field, "must start with a letter"));
    }
    Ok(raw.to_owned())
}

const EMAIL_MAX_LEN: usize = 254;
const EMAIL_LOCAL_MAX_LEN: usize = 64;
const DOMAIN_LABEL_MAX_LEN: usize = 63;
/// Characters that only appear in quoted or bracketed address forms, which we
/// do not accept (they are also what header injection needs).
const EMAIL_FORBIDDEN: &str = "\"(),:;<>[\\]";

fn parse_email(raw: &str) -> Result<String, ParseError> {
    const FIELD: &str = "email";
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(ParseError::Empty { field: FIELD });
    }
    if trimmed.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            FIELD,
            "must not contain whitespace or control characters",
        ));
    }
    if trimmed.chars().any(|c| EMAIL_FORBIDDEN.contains(c)) {
        return Err(invalid(FIELD, "contains a character not allowed here"));
    }
    // Emails are unique case-insensitively, so the stored form is lowercase.
    let email = trimmed.to_lowercase();
    if email.len() > EMAIL_MAX_LEN {
        return Err(ParseError::TooLong {
            field: FIELD,
            max: EMAIL_MAX_LEN,
        });
    }
    let Some((local, domain)) = email.split_once('@') else {
        return Err(invalid(FIELD, "must contain an @"));
    };
    if domain.contains('@') {
        return Err(invalid(FIELD, "must contain exactly one @"));
    }
    if local.is_empty() {
        return Err(invalid(FIELD, "the part before the @ is empty"));
    }
    if local.len() > EMAIL_LOCAL_MAX_LEN {
        return Err(invalid(FIELD, "the part before the @ is too long"));
    }
    // A routable domain: at least two labels (so no bare `localhost`), none empty.
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2 {
        return Err(invalid(FIELD, "the domain must contain a dot"));
    }
    for label in labels {
        if label.is_empty() {
            return Err(invalid(FIELD, "the domain has an empty label"));
        }
        if label.len() > DOMAIN_LABEL_MAX_LEN {
            return Err(invalid(FIELD, "a domain label is too long"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(invalid(FIELD, "a domain label starts or ends with -"));
        }
    }
    Ok(email)
}

string_newtype!(
    /// A normalised email address: trimmed, lowercased, one `@`, a dotted
    /// domain, at most 254 bytes, no whitespace, control or quoting characters.
    Email,
    parse_email
);

fn parse_display_name(raw: &str) -> Result<String, ParseError> {
    free_text("display_name", raw, 128)
}

string_newtype!(
    /// A customer's display name: trimmed, 1 to 128 characters, no control characters.
    DisplayName,
    parse_display_name
);

fn parse_role(raw: &str) -> Result<String, ParseError> {
    lowercase_name("role", raw, 64, true)
}

string_newtype!(
    /// A role name: 1 to 64 characters of `[a-z0-9._:-]` or `_`, starting with a letter.
    Role,
    parse_role
);

impl Role {
    /// The role every customer has without a grant.
    pub const DEFAULT: &'static str = "antlers-user";

    /// [`Role::DEFAULT`] as a `Role`.
    pub fn default_role() -> Self {
        Self(Self::DEFAULT.to_owned())
    }
}

fn parse_ticket_id(raw: &str) -> Result<String, ParseError> {
    token("ticket_id", raw, 128)
}

string_newtype!(
    /// A support ticket reference that scopes a grant: 1 to 128 printable
    /// characters, no whitespace.
    TicketId,
    parse_ticket_id
);

const REASON_MAX_LEN: usize = 1024;

fn parse_reason(raw: &str) -> Result<String, ParseError> {
    const FIELD: &str = "reason";
    let text = raw.trim();
    check_length(FIELD, text, REASON_MAX_LEN)?;
    // Reasons are written by people: line breaks and tabs are fine.
    if text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(invalid(FIELD, "must not contain control characters"));
    }
    Ok(text.to_owned())
}

string_newtype!(
    /// Why an operator did something: trimmed, 1 to 1024 characters.
    Reason,
    parse_reason
);

fn parse_actor(raw: &str) -> Result<String, ParseError> {
    free_text("actor", raw, 128)
}

string_newtype!(
    /// Who did something (an operator, a service): trimmed, 1 to 128 characters.
    Actor,
    parse_actor
);

fn parse_credential_name(raw: &str) -> Result<String, ParseError> {
    free_text("name", raw, 64)
}

string_newtype!(
    /// A customer's label for a passkey: trimmed, 1 to 64 characters.
    CredentialName,
    parse_credential_name
);

fn parse_audit_action(raw: &str) -> Result<String, ParseError> {
    lowercase_name("action", raw, 128, false)
}

string_newtype!(
    /// What an audit event records, e.g. `founders.gate.rejected`:
    /// 1 to 128 characters of `[a-z0-9._:-]` or `_`.
    AuditAction,
    parse_audit_action
);

fn parse_audit_target(raw: &str) -> Result<String, ParseError> {
    free_text("target", raw, 256)
}

string_newtype!(
    /// What an audit event is about: trimmed, 1 to 256 characters.
    AuditTarget,
    parse_audit_target
);

fn parse_service_name(raw: &str) -> Result<String, ParseError> {
    token("service", raw, 64)
}

string_newtype!(
    /// The name of a calling service (from its service token): 1 to 64
    /// printable characters, no whitespace.
    ServiceName,
    parse_service_name
);

fn parse_idempotency_key(raw: &str) -> Result<String, ParseError> {
    token("idempotency_key", raw, 255)
}

string_newtype!(
    /// A caller-chosen key that makes an audit POST idempotent: 1 to 255
    /// printable characters, no whitespace.
    IdempotencyKey,
    parse_idempotency_key
);

/// The SHA-256 of a secret (refresh token, backup code, email token). Only
/// hashes enter events; serialised as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SecretHash([u8; 32]);

impl SecretHash {
    /// Hashes a secret.
    pub fn of(secret: &[u8]) -> Self {
        Self(Sha256::digest(secret).into())
    }

    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for SecretHash {
    // A short prefix is enough to tell hashes apart in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretHash({}…)", hex::encode(&self.0[..4]))
    }
}

impl fmt::Display for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl FromStr for SecretHash {
    type Err = ParseError;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        const FIELD: &str = "secret_hash";
        if raw.len() != 64 {
            return Err(invalid(FIELD, "must be 64 hex digits"));
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(raw, &mut bytes).map_err(|_| invalid(FIELD, "must be hex"))?;
        Ok(Self(bytes))
    }
}

impl TryFrom<String> for SecretHash {
    type Error = ParseError;

    fn try_from(raw: String) -> Result<Self, Self::Error> {
        raw.parse()
    }
}

impl From<SecretHash> for String {
    fn from(hash: SecretHash) -> Self {
        hash.to_hex()
    }
}

/// A WebAuthn raw credential id (1 to 1023 bytes, as the spec allows);
/// serialised as base64url without padding.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RawCredentialId(Vec<u8>);

impl RawCredentialId {
    pub const MAX_LEN: usize = 1023;

    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, ParseError> {
        const FIELD: &str = "raw_credential_id";
        if bytes.is_empty() {
            return Err(ParseError::Empty { field: FIELD });
        }
        if bytes.len() > Self::MAX_LEN {
            return Err(ParseError::TooLong {
                field: FIELD,
                max: Self::MAX_LEN,
            });
        }
        Ok(Self(bytes))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The id of the passkey stream for this raw id.
    pub fn credential_id(&self) -> CredentialId {
        CredentialId::for_raw_id(&self.0)
    }
}

impl fmt::Debug for RawCredentialId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RawCredentialId({self})")
    }
}

impl fmt::Display for RawCredentialId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&URL_SAFE_NO_PAD.encode(&self.0))
    }
}

impl FromStr for RawCredentialId {
    type Err = ParseError;

    /// Accepts base64url with or without padding.
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let bytes = URL_SAFE_NO_PAD
            .decode(raw.trim_end_matches('='))
            .map_err(|_| invalid("raw_credential_id", "must be base64url"))?;
        Self::from_bytes(bytes)
    }
}

impl TryFrom<String> for RawCredentialId {
    type Error = ParseError;

    fn try_from(raw: String) -> Result<Self, Self::Error> {
        raw.parse()
    }
}

impl From<RawCredentialId> for String {
    fn from(id: RawCredentialId) -> Self {
        id.to_string()
    }
}

// --- tenants (issue 22) ---

uuid_id!(
    /// A tenant; the id of a `Tenant` stream.
    TenantId,
    "tenant_id"
);

impl TenantId {
    /// UUIDv5 namespace for tenant ids: UUIDv5(URL, "urn:queue:ns:tenant-slug").
    pub const NAMESPACE: Uuid = Uuid::from_u128(0xef2c9e1d_99d1_5138_aaa9_798637bc5fa1);

    /// The tenant every customer registered or imported before tenants
    /// existed belongs to: [`TenantId::for_slug`]`("default")`.
    pub const DEFAULT: Self = Self(Uuid::from_u128(0xe02b51ee_91ce_59b2_8ff6_b3ef33a10a99));

    /// The stream id of the tenant with this slug. Deterministic, so two
    /// creations of one slug meet on one stream and the second is refused
    /// (`AlreadyCreated`) with no cross-stream check; slugs never change.
    pub fn for_slug(slug: &TenantSlug) -> Self {
        Self(Uuid::new_v5(&Self::NAMESPACE, slug.as_str().as_bytes()))
    }

    pub fn is_default(&self) -> bool {
        *self == Self::DEFAULT
    }

    /// For `#[serde(default = "TenantId::default_tenant")]` on events that
    /// gain a `tenant_id` (see docs/decisions/0217-tenants-and-the-default-tenant.md).
    pub fn default_tenant() -> Self {
        Self::DEFAULT
    }
}

fn parse_tenant_slug(raw: &str) -> Result<String, ParseError> {
    const FIELD: &str = "slug";
    let slug = raw.trim();
    if slug.is_empty() {
        return Err(ParseError::Empty { field: FIELD });
    }
    if slug.len() > 63 {
        return Err(ParseError::TooLong {
            field: FIELD,
            max: 63,
        });
    }
    if slug.len() < 2 {
        return Err(invalid(FIELD, "must be at least 2 characters"));
    }
    if !slug
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(invalid(FIELD, "may only contain a-z, 0-9 and -"));
    }
    if !slug.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(invalid(FIELD, "must start with a letter"));
    }
    if slug.ends_with('-') || slug.contains("--") {
        return Err(invalid(FIELD, "must not end with - or contain --"));
    }
    Ok(slug.to_owned())
}

string_newtype!(
    /// A tenant's URL name (`/saml/{slug}/...`): 2 to 63 characters of
    /// `[a-z0-9-]`, starting with a letter, no trailing `-` and no `--`.
    /// Unique among tenants and never changed: the tenant's id is
    /// [`TenantId::for_slug`]; `default` is [`TenantId::DEFAULT`]'s.
    TenantSlug,
    parse_tenant_slug
);

impl TenantSlug {
    /// The slug of [`TenantId::DEFAULT`].
    pub const DEFAULT: &'static str = "default";

    pub fn is_default(&self) -> bool {
        self.0 == Self::DEFAULT
    }
}

fn parse_tenant_name(raw: &str) -> Result<String, ParseError> {
    free_text("name", raw, 128)
}

string_newtype!(
    /// A tenant's display name: trimmed, 1 to 128 characters, no control characters.
    TenantName,
    parse_tenant_name
);

/// The largest IdP metadata document a SAML connection keeps.
pub const IDP_METADATA_MAX_BYTES: usize = 512 * 1024;

fn parse_idp_metadata_xml(raw: &str) -> Result<String, ParseError> {
    const FIELD: &str = "idp_metadata";
    let xml = raw.trim();
    if xml.is_empty() {
        return Err(ParseError::Empty { field: FIELD });
    }
    if xml.len() > IDP_METADATA_MAX_BYTES {
        return Err(ParseError::TooLong {
            field: FIELD,
            max: IDP_METADATA_MAX_BYTES,
        });
    }
    if xml
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(invalid(FIELD, "must not contain control characters"));
    }
    if !xml.starts_with('<') {
        return Err(invalid(FIELD, "must be an XML document"));
    }
    Ok(xml.to_owned())
}

string_newtype!(
    /// An IdP's SAML metadata XML as the tenant admin supplied it (at most
    /// 512 KiB). Only its size and characters are checked here; the API
    /// parses it with `queue-saml` before it becomes a command.
    IdpMetadataXml,
    parse_idp_metadata_xml
);

fn parse_saml_attribute_name(raw: &str) -> Result<String, ParseError> {
    token("attribute", raw, 256)
}

string_newtype!(
    /// The `Name` of a SAML attribute (e.g. `urn:oid:0.9.2342.19200300.100.1.3`
    /// or `groups`): 1 to 256 printable characters, no whitespace.
    SamlAttributeName,
    parse_saml_attribute_name
);

fn parse_saml_group(raw: &str) -> Result<String, ParseError> {
    free_text("group", raw, 256)
}

string_newtype!(
    /// A group name as the IdP sends it in the groups attribute: trimmed, 1
    /// to 256 characters, compared exactly (case-sensitive).
    SamlGroup,
    parse_saml_group
);

#[cfg(test)]
#[path = "types_tests.rs"]
mod tests;
