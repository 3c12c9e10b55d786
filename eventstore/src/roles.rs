//! The database roles `queue serve` runs as (ADR 0212, migration 0315), and
//! the one function that sets up a LOGIN role in one of them (dev set-up and
//! tests; production runs the SQL in the README).
//!
//! Roles are global to a PostgreSQL cluster, and tests migrate many
//! databases of one cluster at once: every step here is "create when
//! missing", and a concurrent creation by another session is not an error.

use sqlx::PgPool;

use crate::error::{StoreError, StoreResult};

/// A group role of migration 0315.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The API and the mail sender: append and read events.
    Service,
    /// The sealer: the only writer of ledger, checkpoints and sealer_state.
    Sealer,
    /// The projection and outbox runners: the read tables.
    Projector,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Service, Role::Sealer, Role::Projector];

    /// The NOLOGIN group role's name.
    pub fn group(self) -> &'static str {
        match self {
            Role::Service => "queue_service",
            Role::Sealer => "queue_sealer",
            Role::Projector => "queue_projector",
        }
    }
}

/// Attempts before a concurrent change of the role catalogue is reported.
const ATTEMPTS: usize = 5;

/// Creates the LOGIN role `login` with `password` when it is missing, and
/// makes it a member of `role`'s group (creating the group when missing,
/// so this works before or after `queue migrate`). Idempotent and safe to
/// run from many sessions at once. The pool's role needs CREATEROLE (or
/// superuser). An existing role keeps its password.
///
/// `login` must be a plain lower-case identifier and `password` may hold
/// only letters, digits, `-`, `_` and `.` (they are spelled into SQL).
pub async fn ensure_login_role(
    pool: &PgPool,
    login: &str,
    password: &str,
    role: Role,
) -> StoreResult<()> {
    let plain_name = !login.is_empty()
        && login.len() <= 63
        && login.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && login
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !plain_name {
        return Err(StoreError::Config(
            "a login role name must be a lower-case identifier".into(),
        ));
    }
    if password.is_empty()
        || !password
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(StoreError::Config(
            "a login role password may hold only letters, digits, '-', '_' and '.'".into(),
        ));
    }
    let group = role.group();
    let sql = format!(
        "DO $$ BEGIN \
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{group}') THEN \
             BEGIN CREATE ROLE {group} NOLOGIN; \
             EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END; \
           END IF; \
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{login}') THEN \
             BEGIN CREATE ROLE {login} LOGIN INHERIT PASSWORD '{password}'; \
             EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END; \
           END IF; \
           IF NOT EXISTS (SELECT 1 FROM pg_auth_members m \
                 JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles u ON u.oid = m.member \
                 WHERE g.rolname = '{group}' AND u.rolname = '{login}') THEN \
             BEGIN GRANT {group} TO {login}; \
             EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END; \
           END IF; \
         END $$"
    );
    let mut last = None;
    for _ in 0..ATTEMPTS {
        match sqlx::raw_sql(&sql).execute(pool).await {
            Ok(_) => return Ok(()),
            // Two sessions changing the same catalogue row at once: the
            // loser sees "tuple concurrently updated" (XX000). Run again:
            // the other session's change is committed or rolled back by now.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("XX000") => {
                last = Some(sqlx::Error::Database(e));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(last.map_or_else(
        || StoreError::Config("the role catalogue kept changing".into()),
        StoreError::from,
    ))
}

/// The password of the development LOGIN roles. They exist for `scripts/dev`
/// and the test suites only (loopback, trust or this password).
pub const DEV_PASSWORD: &str = "queue-dev";

/// The development LOGIN role of `role` (`queue migrate --dev-logins`).
pub fn dev_login(role: Role) -> &'static str {
    match role {
        Role::Service => "queue_dev_service",
        Role::Sealer => "queue_dev_sealer",
        Role::Projector => "queue_dev_projector",
    }
}

/// Creates the three development LOGIN roles ([`dev_login`], password
/// [`DEV_PASSWORD`]) with their memberships: the one role set-up of
/// `scripts/dev` and the tests. Idempotent and race-safe.
pub async fn ensure_dev_logins(pool: &PgPool) -> StoreResult<()> {
    for role in Role::ALL {
        ensure_login_role(pool, dev_login(role), DEV_PASSWORD, role).await?;
    }
    Ok(())
}
