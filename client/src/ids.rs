//! Ids parsed at the edge: a [`CustomerId`] cannot stand in for a
//! [`GrantId`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::ClientError;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            pub fn as_uuid(&self) -> &Uuid {
                &self.0
            }
        }

        impl From<Uuid> for $name {
            fn from(id: Uuid) -> Self {
                Self(id)
            }
        }

        impl FromStr for $name {
            type Err = ClientError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s.trim())
                    .map(Self)
                    .map_err(|_| ClientError::Config(concat!($what, " is not a UUID").into()))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

uuid_id!(
    /// A customer's id (a token's `sub`).
    CustomerId,
    "a customer id"
);
uuid_id!(
    /// An RBAC grant's id, as [`crate::ServiceClient::grant_role`] returns it.
    GrantId,
    "a grant id"
);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ids_parse_and_print_as_uuids() {
        let raw = "0190a5b0-7c1e-7a00-8000-000000000001";
        let id: CustomerId = raw.parse().unwrap();
        assert_eq!(id.to_string(), raw);
        assert!(matches!(
            "nope".parse::<GrantId>(),
            Err(ClientError::Config(m)) if m == "a grant id is not a UUID"
        ));
    }
}
