//! Typed reads of the read tables, for the API: one place to import from.
//! The reads themselves live with their projection (`customers::read`,
//! `credentials::read`, `sessions::read`, `audit::read`).
//!
//! The tables are projections: they trail the event log by the runner's lag
//! (usually well under 100 ms). Anything that must be exact at the moment of
//! a decision (a sign counter, a refresh token, a suspension) is decided by
//! the aggregate, loaded from the event store; these reads are for listing,
//! lookup and display. Times that depend on "now" (expiry, active roles) are
//! parameters: the tables themselves never depend on a clock.

pub use crate::audit::read::*;
pub use crate::credentials::read::*;
pub use crate::credentials::CredentialRow;
pub use crate::customers::read::*;
pub use crate::customers::{BackupCodeRow, CustomerRow, EmailVerificationRow, RoleRow};
pub use crate::sessions::read::*;
pub use crate::sessions::SessionRow;
pub use crate::tenants::{bind_to_tenants, TENANTS_SETTING};
