use std::collections::{BTreeMap, BTreeSet};

use cqrs_es::test::TestFramework;
use cqrs_es::Aggregate;

use super::*;
use crate::test_support::{actor, reason, t};
use crate::types::{
    IdpMetadataXml, Role, SamlAttributeName, SamlGroup, TenantId, TenantName, TenantSlug,
};

type TenantTest = TestFramework<Tenant>;

fn acme_id() -> TenantId {
    TenantId::for_slug(&TenantSlug::parse("acme").unwrap())
}

fn name(text: &str) -> TenantName {
    TenantName::parse(text).unwrap()
}

fn created() -> TenantEvent {
    TenantEvent::TenantCreated {
        tenant_id: acme_id(),
        slug: TenantSlug::parse("acme").unwrap(),
        name: name("Acme Inc."),
        actor: actor("ops"),
        at: t(0),
    }
}

fn attribute(text: &str) -> SamlAttributeName {
    SamlAttributeName::parse(text).unwrap()
}

fn connection() -> SamlConnection {
    let mut group_roles = BTreeMap::new();
    group_roles.insert(
        SamlGroup::parse("Engineering").unwrap(),
        BTreeSet::from([Role::parse("deployer").unwrap()]),
    );
    group_roles.insert(
        SamlGroup::parse("Support").unwrap(),
        BTreeSet::from([
            Role::parse("support").unwrap(),
            Role::parse("viewer").unwrap(),
        ]),
    );
    SamlConnection {
        idp_metadata: IdpMetadataXml::parse("<md:EntityDescriptor entityID=\"x\"/>").unwrap(),
        email_attribute: Some(attribute("urn:oid:0.9.2342.19200300.100.1.3")),
        display_name_attribute: Some(attribute("displayName")),
        groups_attribute: Some(attribute("groups")),
        group_roles,
        allow_idp_initiated: false,
        jit_provisioning: true,
    }
}

fn configured() -> TenantEvent {
    TenantEvent::SamlConnectionConfigured {
        connection: connection(),
        actor: actor("ops"),
        at: t(10),
    }
}

#[test]
fn create_a_tenant() {
    TenantTest::with(())
        .given_no_previous_events()
        .when(TenantCommand::Create {
            tenant_id: acme_id(),
            slug: TenantSlug::parse("acme").unwrap(),
            name: name("Acme Inc."),
            actor: actor("ops"),
            at: t(0),
        })
        .then_expect_events(vec![created()]);

    let mut tenant = Tenant::default();
    tenant.apply(created());
    let state = tenant.state().unwrap();
    assert_eq!(state.slug.as_str(), "acme");
    assert_eq!(state.created_at, t(0));
    assert!(tenant.enabled_saml().is_none());
}

#[test]
fn a_tenant_is_created_once() {
    TenantTest::with(())
        .given(vec![created()])
        .when(TenantCommand::Create {
            tenant_id: acme_id(),
            slug: TenantSlug::parse("other").unwrap(),
            name: name("Other"),
            actor: actor("ops"),
            at: t(5),
        })
        .then_expect_error(TenantError::AlreadyCreated);
}

#[test]
fn the_tenant_id_is_the_id_of_its_slug() {
    let create = |tenant_id: TenantId, slug: &str| TenantCommand::Create {
        tenant_id,
        slug: TenantSlug::parse(slug).unwrap(),
        name: name("Default"),
        actor: actor("ops"),
        at: t(0),
    };
    TenantTest::with(())
        .given_no_previous_events()
        .when(create(acme_id(), "default"))
        .then_expect_error(TenantError::IdNotOfSlug);
    TenantTest::with(())
        .given_no_previous_events()
        .when(create(TenantId::DEFAULT, "acme"))
        .then_expect_error(TenantError::IdNotOfSlug);
    TenantTest::with(())
        .given_no_previous_events()
        .when(create(TenantId::DEFAULT, "default"))
        .then_expect_events(vec![TenantEvent::TenantCreated {
            tenant_id: TenantId::DEFAULT,
            slug: TenantSlug::parse("default").unwrap(),
            name: name("Default"),
            actor: actor("ops"),
            at: t(0),
        }]);
}

#[test]
fn commands_on_a_tenant_that_does_not_exist_are_refused() {
    for command in [
        TenantCommand::Rename {
            name: name("New"),
            actor: actor("ops"),
            at: t(1),
        },
        TenantCommand::ConfigureSaml {
            connection: connection(),
            actor: actor("ops"),
            at: t(1),
        },
        TenantCommand::DisableSaml {
            reason: reason("offboarding"),
            actor: actor("ops"),
            at: t(1),
        },
    ] {
        TenantTest::with(())
            .given_no_previous_events()
            .when(command)
            .then_expect_error(TenantError::NotFound);
    }
}

#[test]
fn rename_a_tenant_and_renaming_to_the_same_name_appends_nothing() {
    TenantTest::with(())
        .given(vec![created()])
        .when(TenantCommand::Rename {
            name: name("Acme Corporation"),
            actor: actor("ops"),
            at: t(5),
        })
        .then_expect_events(vec![TenantEvent::TenantRenamed {
            name: name("Acme Corporation"),
            actor: actor("ops"),
            at: t(5),
        }]);
    TenantTest::with(())
        .given(vec![created()])
        .when(TenantCommand::Rename {
            name: name("Acme Inc."),
            actor: actor("ops"),
            at: t(5),
        })
        .then_expect_events(vec![]);

    let mut tenant = Tenant::default();
    tenant.apply(created());
    tenant.apply(TenantEvent::TenantRenamed {
        name: name("Acme Corporation"),
        actor: actor("ops"),
        at: t(5),
    });
    assert_eq!(tenant.state().unwrap().name.as_str(), "Acme Corporation");
}

#[test]
fn configure_disable_and_reconfigure_saml() {
    TenantTest::with(())
        .given(vec![created()])
        .when(TenantCommand::ConfigureSaml {
            connection: connection(),
            actor: actor("ops"),
            at: t(10),
        })
        .then_expect_events(vec![configured()]);
    let disabled = TenantEvent::SamlConnectionDisabled {
        reason: reason("IdP migration"),
        actor: actor("ops"),
        at: t(20),
    };
    TenantTest::with(())
        .given(vec![created(), configured()])
        .when(TenantCommand::DisableSaml {
            reason: reason("IdP migration"),
            actor: actor("ops"),
            at: t(20),
        })
        .then_expect_events(vec![disabled.clone()]);
    TenantTest::with(())
        .given(vec![created(), configured(), disabled.clone()])
        .when(TenantCommand::DisableSaml {
            reason: reason("again"),
            actor: actor("ops"),
            at: t(30),
        })
        .then_expect_error(TenantError::SamlNotEnabled);
    TenantTest::with(())
        .given(vec![created()])
        .when(TenantCommand::DisableSaml {
            reason: reason("never configured"),
            actor: actor("ops"),
            at: t(30),
        })
        .then_expect_error(TenantError::SamlNotEnabled);

    let mut tenant = Tenant::default();
    tenant.apply(created());
    tenant.apply(configured());
    assert_eq!(tenant.enabled_saml(), Some(&connection()));
    tenant.apply(disabled);
    assert!(tenant.enabled_saml().is_none());
    // The last connection stays on record; configuring again enables it.
    assert_eq!(tenant.state().unwrap().saml, Some(connection()));
    tenant.apply(configured());
    assert_eq!(tenant.enabled_saml(), Some(&connection()));
}

#[test]
fn an_inconsistent_saml_connection_is_refused() {
    let mut no_email = connection();
    no_email.email_attribute = None;
    let mut no_groups = connection();
    no_groups.groups_attribute = None;
    let mut empty_roles = connection();
    empty_roles
        .group_roles
        .insert(SamlGroup::parse("Nobody").unwrap(), BTreeSet::new());
    let mut too_many = connection();
    too_many.group_roles = (0..=MAX_GROUP_MAPPINGS)
        .map(|i| {
            (
                SamlGroup::parse(&format!("group-{i}")).unwrap(),
                BTreeSet::from([Role::parse("viewer").unwrap()]),
            )
        })
        .collect();
    for (connection, reason) in [
        (
            no_email,
            "just-in-time provisioning needs the email attribute",
        ),
        (no_groups, "a group to role map needs the groups attribute"),
        (empty_roles, "every mapped group needs at least one role"),
        (too_many, "at most 256 group to role mappings"),
    ] {
        TenantTest::with(())
            .given(vec![created()])
            .when(TenantCommand::ConfigureSaml {
                connection,
                actor: actor("ops"),
                at: t(10),
            })
            .then_expect_error(TenantError::InvalidSamlConnection(reason));
    }
    // Without JIT provisioning the email attribute may be left out.
    let mut no_jit = connection();
    no_jit.email_attribute = None;
    no_jit.jit_provisioning = false;
    TenantTest::with(())
        .given(vec![created()])
        .when(TenantCommand::ConfigureSaml {
            connection: no_jit.clone(),
            actor: actor("ops"),
            at: t(10),
        })
        .then_expect_events(vec![TenantEvent::SamlConnectionConfigured {
            connection: no_jit,
            actor: actor("ops"),
            at: t(10),
        }]);
}

#[test]
fn slugs_are_parsed_strictly() {
    for good in ["acme", "a1", "acme-eu-2", "default"] {
        assert_eq!(TenantSlug::parse(good).unwrap().as_str(), good);
    }
    assert_eq!(TenantSlug::parse("  acme ").unwrap().as_str(), "acme");
    assert!(TenantSlug::parse("default").unwrap().is_default());
    for bad in [
        "", "a", "Acme", "1acme", "acme-", "ac--me", "ac_me", "ac.me", "ac me", "açme",
    ] {
        let error = TenantSlug::parse(bad).unwrap_err();
        assert_eq!(error.field(), "slug", "{bad}");
    }
    assert!(TenantSlug::parse(&"a".repeat(63)).is_ok());
    assert!(TenantSlug::parse(&"a".repeat(64)).is_err());
    // Serialised as the bare string, and parsed again on the way in.
    assert_eq!(
        serde_json::to_string(&TenantSlug::parse("acme").unwrap()).unwrap(),
        "\"acme\""
    );
    assert!(serde_json::from_str::<TenantSlug>("\"Not A Slug\"").is_err());
}

#[test]
fn the_default_tenant_id_is_fixed() {
    assert_eq!(
        TenantId::NAMESPACE,
        uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, b"urn:queue:ns:tenant-slug")
    );
    assert_eq!(
        TenantId::DEFAULT.to_string(),
        "e02b51ee-91ce-59b2-8ff6-b3ef33a10a99"
    );
    assert_eq!(
        TenantId::DEFAULT,
        TenantId::for_slug(&TenantSlug::parse(TenantSlug::DEFAULT).unwrap())
    );
    assert_eq!(
        acme_id().to_string(),
        "197ddcde-baef-5e53-a9bc-724819abcd7e"
    );
    assert!(TenantId::default_tenant().is_default());
    assert!(!acme_id().is_default());
}

#[test]
fn idp_metadata_and_attribute_names_are_bounded() {
    assert!(IdpMetadataXml::parse("").is_err());
    assert!(IdpMetadataXml::parse("not xml").is_err());
    assert!(IdpMetadataXml::parse("<a>\u{0}</a>").is_err());
    let huge = format!(
        "<a>{}</a>",
        "x".repeat(crate::types::IDP_METADATA_MAX_BYTES)
    );
    assert!(IdpMetadataXml::parse(&huge).is_err());
    assert!(IdpMetadataXml::parse("<a>\n\t</a>").is_ok());
    assert!(SamlAttributeName::parse("has space").is_err());
    assert!(SamlAttributeName::parse(&"a".repeat(257)).is_err());
    assert!(SamlGroup::parse("  Engineering EU ").unwrap().as_str() == "Engineering EU");
}

mod roles {
    use super::*;
    use crate::customer::{Customer, CustomerEvent};
    use crate::types::{CustomerId, DisplayName, Email, GrantId, Reason};

    fn grant(id: u128, role: &str, by: &str, at: i64) -> CustomerEvent {
        CustomerEvent::RoleGranted {
            grant_id: GrantId::from_uuid(uuid::Uuid::from_u128(id)),
            role: Role::parse(role).unwrap(),
            ticket_id: None,
            reason: reason("test"),
            actor: actor(by),
            expires_at: None,
            at: t(at),
        }
    }

    fn customer(events: Vec<CustomerEvent>) -> Customer {
        let mut customer = Customer::default();
        customer.apply(CustomerEvent::Registered {
            tenant_id: crate::types::TenantId::DEFAULT,
            customer_id: CustomerId::from_uuid(uuid::Uuid::from_u128(7)),
            email: Email::parse("ann@example.com").unwrap(),
            display_name: DisplayName::parse("Ann").unwrap(),
            default_role: Role::default_role(),
            at: t(0),
        });
        for event in events {
            customer.apply(event);
        }
        customer
    }

    fn groups(list: &[&str]) -> Vec<String> {
        list.iter().map(|group| (*group).to_owned()).collect()
    }

    #[test]
    fn the_saml_actor_names_the_tenant() {
        let acme = TenantSlug::parse("acme").unwrap();
        assert_eq!(saml_actor(&acme).unwrap().as_str(), "saml:acme");
    }

    #[test]
    fn groups_give_roles_with_the_first_group_as_the_reason() {
        let connection = connection();
        let roles = connection.roles_for_groups(&groups(&["Support", "Engineering", "Unmapped"]));
        let listed: Vec<(&str, &str)> = roles
            .iter()
            .map(|(role, group)| (role.as_str(), group.as_str()))
            .collect();
        assert_eq!(
            listed,
            vec![
                ("deployer", "Engineering"),
                ("support", "Support"),
                ("viewer", "Support"),
            ]
        );
        // Exact comparison: case and spacing matter.
        assert!(connection
            .roles_for_groups(&groups(&["engineering", " Support"]))
            .is_empty());
    }

    #[test]
    fn a_first_login_grants_every_mapped_role() {
        let saml = actor("saml:acme");
        let customer = customer(vec![]);
        let changes = connection()
            .reconcile_roles(
                customer.state().unwrap(),
                &saml,
                &groups(&["Engineering"]),
                t(10),
            )
            .unwrap();
        assert_eq!(
            changes.grant,
            vec![(
                Role::parse("deployer").unwrap(),
                Reason::parse("SAML group Engineering").unwrap()
            )]
        );
        assert!(changes.revoke.is_empty());
    }

    #[test]
    fn a_removed_group_revokes_only_the_roles_saml_granted() {
        let saml = actor("saml:acme");
        // SAML granted deployer (Engineering) and support+viewer (Support);
        // an operator granted viewer by hand; another tenant's SAML actor
        // granted auditor.
        let customer = customer(vec![
            grant(1, "deployer", "saml:acme", 1),
            grant(2, "support", "saml:acme", 1),
            grant(3, "viewer", "saml:acme", 1),
            grant(4, "viewer", "ops", 2),
            grant(5, "auditor", "saml:globex", 2),
        ]);
        // The IdP now only sends Engineering.
        let changes = connection()
            .reconcile_roles(
                customer.state().unwrap(),
                &saml,
                &groups(&["Engineering"]),
                t(10),
            )
            .unwrap();
        assert!(changes.grant.is_empty());
        let revoked: Vec<u128> = changes
            .revoke
            .iter()
            .map(|(grant_id, _)| grant_id.as_uuid().as_u128())
            .collect();
        assert_eq!(revoked, vec![2, 3]);
        assert_eq!(
            changes.revoke[0].1.as_str(),
            "no SAML group of the customer gives support any more"
        );
        // Nothing changes when the groups still match.
        let same = connection()
            .reconcile_roles(
                customer.state().unwrap(),
                &saml,
                &groups(&["Engineering", "Support"]),
                t(10),
            )
            .unwrap();
        assert!(same.is_empty());
    }

    #[test]
    fn a_duplicate_or_revoked_saml_grant_is_handled() {
        let saml = actor("saml:acme");
        let customer = customer(vec![
            grant(1, "deployer", "saml:acme", 1),
            grant(2, "deployer", "saml:acme", 2),
            grant(3, "support", "saml:acme", 1),
            CustomerEvent::RoleRevoked {
                grant_id: GrantId::from_uuid(uuid::Uuid::from_u128(3)),
                reason: reason("left support"),
                actor: saml.clone(),
                at: t(3),
            },
        ]);
        let changes = connection()
            .reconcile_roles(
                customer.state().unwrap(),
                &saml,
                &groups(&["Engineering", "Support"]),
                t(10),
            )
            .unwrap();
        // The second deployer grant is redundant; support is granted anew.
        assert_eq!(changes.revoke.len(), 1);
        assert_eq!(changes.revoke[0].0.as_uuid().as_u128(), 2);
        let granted: Vec<&str> = changes
            .grant
            .iter()
            .map(|(role, _)| role.as_str())
            .collect();
        assert_eq!(granted, vec!["support", "viewer"]);
    }
}
