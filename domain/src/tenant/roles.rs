//! A SAML login's group → role reconciliation, as pure data: which roles to
//! grant and which SAML-made grants to revoke. The API turns them into
//! `GrantRole`/`RevokeRole` commands (grant ids drawn by it) in the same
//! batch as the login.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::SamlConnection;
use crate::customer::CustomerState;
use crate::types::{Actor, GrantId, ParseError, Reason, Role, SamlGroup, TenantSlug};

/// The actor of every grant and revocation a SAML login of tenant `slug`
/// makes: `saml:<slug>`. Only grants by this actor are ever revoked by a
/// login; grants people made are left alone.
pub fn saml_actor(slug: &TenantSlug) -> Result<Actor, ParseError> {
    Actor::parse(&format!("saml:{slug}"))
}

/// What a login changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SamlRoleChanges {
    /// Roles the customer's groups give and no active SAML grant holds, with
    /// the group that gives it (the grant's reason).
    pub grant: Vec<(Role, Reason)>,
    /// Active SAML grants whose role no group of the customer gives any more.
    pub revoke: Vec<(GrantId, Reason)>,
}

impl SamlRoleChanges {
    pub fn is_empty(&self) -> bool {
        self.grant.is_empty() && self.revoke.is_empty()
    }
}

impl SamlConnection {
    /// Each role the IdP groups give, with the first group (in sorted
    /// order) that gives it. Groups are compared exactly; unmapped groups
    /// give nothing.
    pub fn roles_for_groups(&self, groups: &[String]) -> BTreeMap<Role, SamlGroup> {
        let mut roles = BTreeMap::new();
        for (group, mapped) in &self.group_roles {
            if groups.iter().any(|sent| sent == group.as_str()) {
                for role in mapped {
                    roles.entry(role.clone()).or_insert_with(|| group.clone());
                }
            }
        }
        roles
    }

    /// The changes that make the customer's SAML grants match `groups`
    /// (the groups attribute of a verified login) at `at`.
    pub fn reconcile_roles(
        &self,
        customer: &CustomerState,
        actor: &Actor,
        groups: &[String],
        at: DateTime<Utc>,
    ) -> Result<SamlRoleChanges, ParseError> {
        let desired = self.roles_for_groups(groups);
        let mut held: BTreeMap<&Role, GrantId> = BTreeMap::new();
        let mut changes = SamlRoleChanges::default();
        let saml_grants = customer
            .grants
            .iter()
            .filter(|grant| grant.is_active(at) && grant.actor == *actor);
        for grant in saml_grants {
            if desired.contains_key(&grant.role) && !held.contains_key(&grant.role) {
                held.insert(&grant.role, grant.grant_id);
            } else {
                let reason = Reason::parse(&format!(
                    "no SAML group of the customer gives {} any more",
                    grant.role
                ))?;
                changes.revoke.push((grant.grant_id, reason));
            }
        }
        for (role, group) in &desired {
            if !held.contains_key(role) {
                let reason = Reason::parse(&format!("SAML group {group}"))?;
                changes.grant.push((role.clone(), reason));
            }
        }
        Ok(changes)
    }
}
