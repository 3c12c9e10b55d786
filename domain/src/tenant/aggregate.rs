use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};

use super::command::MAX_GROUP_MAPPINGS;
use super::{SamlConnection, TenantCommand, TenantError, TenantEvent};
use crate::types::{TenantId, TenantName, TenantSlug};

/// The tenant aggregate. Empty until created; read it through
/// [`Tenant::state`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    state: Option<TenantState>,
}

/// A created tenant, as replayed from its events (read-only for callers).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantState {
    pub tenant_id: TenantId,
    pub slug: TenantSlug,
    pub name: TenantName,
    pub created_at: DateTime<Utc>,
    /// The last configured connection, kept when disabled so the history
    /// and a re-enable by `ConfigureSaml` are explicit.
    pub saml: Option<SamlConnection>,
    pub saml_enabled: bool,
}

impl Tenant {
    /// `None` until created.
    pub fn state(&self) -> Option<&TenantState> {
        self.state.as_ref()
    }

    /// The connection SAML logins may use: configured and not disabled.
    pub fn enabled_saml(&self) -> Option<&SamlConnection> {
        self.state
            .as_ref()
            .filter(|state| state.saml_enabled)
            .and_then(|state| state.saml.as_ref())
    }

    pub(crate) fn decide(&self, command: TenantCommand) -> Result<Vec<TenantEvent>, TenantError> {
        if let TenantCommand::Create {
            tenant_id,
            slug,
            name,
            actor,
            at,
        } = command
        {
            if self.state.is_some() {
                return Err(TenantError::AlreadyCreated);
            }
            if tenant_id != TenantId::for_slug(&slug) {
                return Err(TenantError::IdNotOfSlug);
            }
            return Ok(vec![TenantEvent::TenantCreated {
                tenant_id,
                slug,
                name,
                actor,
                at,
            }]);
        }
        let state = self.state.as_ref().ok_or(TenantError::NotFound)?;
        match command {
            TenantCommand::Create { .. } => Err(TenantError::AlreadyCreated),
            TenantCommand::Rename { name, actor, at } => {
                if name == state.name {
                    return Ok(vec![]);
                }
                Ok(vec![TenantEvent::TenantRenamed { name, actor, at }])
            }
            TenantCommand::ConfigureSaml {
                connection,
                actor,
                at,
            } => {
                check_connection(&connection)?;
                Ok(vec![TenantEvent::SamlConnectionConfigured {
                    connection,
                    actor,
                    at,
                }])
            }
            TenantCommand::DisableSaml { reason, actor, at } => {
                if !state.saml_enabled {
                    return Err(TenantError::SamlNotEnabled);
                }
                Ok(vec![TenantEvent::SamlConnectionDisabled {
                    reason,
                    actor,
                    at,
                }])
            }
        }
    }
}

fn check_connection(connection: &SamlConnection) -> Result<(), TenantError> {
    if connection.jit_provisioning && connection.email_attribute.is_none() {
        return Err(TenantError::InvalidSamlConnection(
            "just-in-time provisioning needs the email attribute",
        ));
    }
    if !connection.group_roles.is_empty() && connection.groups_attribute.is_none() {
        return Err(TenantError::InvalidSamlConnection(
            "a group to role map needs the groups attribute",
        ));
    }
    if connection
        .group_roles
        .values()
        .any(|roles| roles.is_empty())
    {
        return Err(TenantError::InvalidSamlConnection(
            "every mapped group needs at least one role",
        ));
    }
    let mappings: usize = connection
        .group_roles
        .values()
        .map(|roles| roles.len())
        .sum();
    if mappings > MAX_GROUP_MAPPINGS {
        return Err(TenantError::InvalidSamlConnection(
            "at most 256 group to role mappings",
        ));
    }
    Ok(())
}

impl Aggregate for Tenant {
    const TYPE: &'static str = "Tenant";
    type Command = TenantCommand;
    type Event = TenantEvent;
    type Error = TenantError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            TenantEvent::TenantCreated {
                tenant_id,
                slug,
                name,
                at,
                ..
            } => {
                if self.state.is_none() {
                    self.state = Some(TenantState {
                        tenant_id,
                        slug,
                        name,
                        created_at: at,
                        saml: None,
                        saml_enabled: false,
                    });
                }
            }
            TenantEvent::TenantRenamed { name, .. } => {
                if let Some(state) = self.state.as_mut() {
                    state.name = name;
                }
            }
            TenantEvent::SamlConnectionConfigured { connection, .. } => {
                if let Some(state) = self.state.as_mut() {
                    state.saml = Some(connection);
                    state.saml_enabled = true;
                }
            }
            TenantEvent::SamlConnectionDisabled { .. } => {
                if let Some(state) = self.state.as_mut() {
                    state.saml_enabled = false;
                }
            }
        }
    }
}
