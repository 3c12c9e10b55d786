use super::*;
use serde_json::json;

#[test]
fn email_is_trimmed_and_lowercased() {
    let email = Email::parse("  Ada.Lovelace+queue@Example.COM ").unwrap();
    assert_eq!(email.as_str(), "ada.lovelace+queue@example.com");
}

#[test]
fn email_accepts_ordinary_addresses() {
    for raw in [
        "a@b.co",
        "first.last@sub.example.org",
        "x_y-z@mail-server.example",
        "ünïcode@exämple.de",
    ] {
        assert!(Email::parse(raw).is_ok(), "{raw}");
    }
}

#[test]
fn email_rejects_bad_addresses() {
    let long_local = format!("{}@example.com", "a".repeat(65));
    let long_total = format!("a@{}.com", "b".repeat(250));
    let cases: Vec<(&str, ParseError)> = vec![
        ("", ParseError::Empty { field: "email" }),
        ("   ", ParseError::Empty { field: "email" }),
        ("no-at.example.com", invalid("email", "must contain an @")),
        (
            "a@b@example.com",
            invalid("email", "must contain exactly one @"),
        ),
        (
            "@example.com",
            invalid("email", "the part before the @ is empty"),
        ),
        (
            "a@localhost",
            invalid("email", "the domain must contain a dot"),
        ),
        ("a@", invalid("email", "the domain must contain a dot")),
        (
            "a@example..com",
            invalid("email", "the domain has an empty label"),
        ),
        (
            "a@.example.com",
            invalid("email", "the domain has an empty label"),
        ),
        (
            "a@example.com.",
            invalid("email", "the domain has an empty label"),
        ),
        (
            "a@-example.com",
            invalid("email", "a domain label starts or ends with -"),
        ),
        (
            "a b@example.com",
            invalid("email", "must not contain whitespace or control characters"),
        ),
        (
            "a\u{7}@example.com",
            invalid("email", "must not contain whitespace or control characters"),
        ),
        (
            "\"a\"@example.com",
            invalid("email", "contains a character not allowed here"),
        ),
        (
            "a<b>@example.com",
            invalid("email", "contains a character not allowed here"),
        ),
        (
            &long_local,
            invalid("email", "the part before the @ is too long"),
        ),
        (
            &long_total,
            ParseError::TooLong {
                field: "email",
                max: 254,
            },
        ),
    ];
    for (raw, expected) in cases {
        assert_eq!(Email::parse(raw), Err(expected), "{raw:?}");
    }
}

#[test]
fn email_round_trips_through_serde_and_validates_on_deserialise() {
    let email = Email::parse("a@example.com").unwrap();
    let json = serde_json::to_value(&email).unwrap();
    assert_eq!(json, json!("a@example.com"));
    assert_eq!(serde_json::from_value::<Email>(json).unwrap(), email);
    assert!(serde_json::from_value::<Email>(json!("not an email")).is_err());
}

#[test]
fn display_name_is_trimmed_and_bounded() {
    assert_eq!(DisplayName::parse("  Ada  ").unwrap().as_str(), "Ada");
    assert!(DisplayName::parse(&"é".repeat(128)).is_ok());
    assert_eq!(
        DisplayName::parse(&"é".repeat(129)),
        Err(ParseError::TooLong {
            field: "display_name",
            max: 128
        })
    );
    assert_eq!(
        DisplayName::parse(" "),
        Err(ParseError::Empty {
            field: "display_name"
        })
    );
    assert_eq!(
        DisplayName::parse("Ada\u{0}"),
        Err(invalid(
            "display_name",
            "must not contain control characters"
        ))
    );
}

#[test]
fn role_names() {
    assert_eq!(Role::default_role().as_str(), "antlers-user");
    assert_eq!(Role::parse(Role::DEFAULT), Ok(Role::default_role()));
    for good in ["admin", "support.tier-2", "rbac:read", "audit_reader", "a"] {
        assert!(Role::parse(good).is_ok(), "{good}");
    }
    assert_eq!(Role::parse(""), Err(ParseError::Empty { field: "role" }));
    assert_eq!(
        Role::parse(&"a".repeat(65)),
        Err(ParseError::TooLong {
            field: "role",
            max: 64
        })
    );
    assert_eq!(
        Role::parse("1admin"),
        Err(invalid("role", "must start with a letter"))
    );
    assert_eq!(
        Role::parse(".admin"),
        Err(invalid("role", "must start with a letter"))
    );
    for bad in ["Admin", "ad min", "admin!", " admin"] {
        assert_eq!(
            Role::parse(bad),
            Err(invalid(
                "role",
                "may only contain a-z, 0-9 and the characters . _ : -"
            )),
            "{bad:?}"
        );
    }
}

#[test]
fn ticket_ids_reasons_and_actors() {
    assert!(TicketId::parse("SUP-1234").is_ok());
    assert_eq!(
        TicketId::parse("SUP 1234"),
        Err(invalid(
            "ticket_id",
            "must not contain whitespace or control characters"
        ))
    );
    assert_eq!(
        TicketId::parse(&"x".repeat(129)),
        Err(ParseError::TooLong {
            field: "ticket_id",
            max: 128
        })
    );

    assert_eq!(
        Reason::parse("  fraud\nreport ").unwrap().as_str(),
        "fraud\nreport"
    );
    assert_eq!(
        Reason::parse("\n "),
        Err(ParseError::Empty { field: "reason" })
    );
    assert_eq!(
        Reason::parse(&"r".repeat(1025)),
        Err(ParseError::TooLong {
            field: "reason",
            max: 1024
        })
    );
    assert_eq!(
        Reason::parse("bell\u{7}"),
        Err(invalid("reason", "must not contain control characters"))
    );

    assert_eq!(
        Actor::parse(" ops@example.com ").unwrap().as_str(),
        "ops@example.com"
    );
    assert_eq!(Actor::parse(""), Err(ParseError::Empty { field: "actor" }));
    assert_eq!(
        Actor::parse(&"a".repeat(129)),
        Err(ParseError::TooLong {
            field: "actor",
            max: 128
        })
    );
}

#[test]
fn credential_names_audit_actions_targets_services_and_keys() {
    assert_eq!(
        CredentialName::parse(" YubiKey ").unwrap().as_str(),
        "YubiKey"
    );
    assert_eq!(
        CredentialName::parse(&"n".repeat(65)),
        Err(ParseError::TooLong {
            field: "name",
            max: 64
        })
    );
    assert!(AuditAction::parse("founders.gate.check_failed").is_ok());
    assert!(AuditAction::parse("2fa.reset").is_ok());
    assert!(AuditAction::parse("Founders.Gate").is_err());
    assert!(AuditTarget::parse("customer:42").is_ok());
    assert_eq!(
        AuditTarget::parse(" "),
        Err(ParseError::Empty { field: "target" })
    );
    assert!(ServiceName::parse("billing").is_ok());
    assert!(ServiceName::parse("bill ing").is_err());
    assert!(IdempotencyKey::parse("4c1f-retry").is_ok());
    assert_eq!(
        IdempotencyKey::parse(""),
        Err(ParseError::Empty {
            field: "idempotency_key"
        })
    );
}

#[test]
fn uuid_ids_parse_and_display_hyphenated() {
    let id: CustomerId = "67E55044-10B1-426F-9247-BB680E5FE0C8".parse().unwrap();
    assert_eq!(id.to_string(), "67e55044-10b1-426f-9247-bb680e5fe0c8");
    assert_eq!(
        "nope".parse::<SessionId>(),
        Err(invalid("session_id", "not a UUID"))
    );
    assert_eq!(
        serde_json::to_value(id).unwrap(),
        json!("67e55044-10b1-426f-9247-bb680e5fe0c8")
    );
}

#[test]
fn namespaces_are_documented_uuid_v5_values() {
    let ns = |name: &str| Uuid::new_v5(&Uuid::NAMESPACE_URL, name.as_bytes());
    assert_eq!(CredentialId::NAMESPACE, ns("urn:queue:ns:credential-id"));
    assert_eq!(AuditEventId::NAMESPACE, ns("urn:queue:ns:audit-event-id"));
    assert_eq!(
        CustomerId::LEGACY_NAMESPACE,
        ns("urn:queue:ns:customer-legacy-id")
    );
    assert_eq!(
        SessionId::LEGACY_NAMESPACE,
        ns("urn:queue:ns:session-legacy-id")
    );
    assert_eq!(
        GrantId::LEGACY_NAMESPACE,
        ns("urn:queue:ns:grant-legacy-id")
    );
}

#[test]
fn derived_ids_are_deterministic_and_distinct() {
    assert_eq!(
        CredentialId::for_raw_id(b"abc"),
        CredentialId::for_raw_id(b"abc")
    );
    assert_ne!(
        CredentialId::for_raw_id(b"abc"),
        CredentialId::for_raw_id(b"abd")
    );
    assert_eq!(
        AuditEventId::for_idempotency_key("billing", "k1"),
        AuditEventId::for_idempotency_key("billing", "k1")
    );
    assert_ne!(
        AuditEventId::for_idempotency_key("ab", "c"),
        AuditEventId::for_idempotency_key("a", "bc")
    );
    assert_ne!(
        AuditEventId::for_idempotency_key("billing", "k1"),
        AuditEventId::for_idempotency_key("founders", "k1")
    );
    let legacy = LegacyId::try_from(42).unwrap();
    assert_eq!(
        CustomerId::for_legacy_id(legacy),
        CustomerId::for_legacy_id(legacy)
    );
    assert_ne!(
        *CustomerId::for_legacy_id(legacy).as_uuid(),
        *SessionId::for_legacy_id(legacy).as_uuid()
    );
    assert_eq!(
        CustomerId::for_legacy_id(legacy)
            .as_uuid()
            .get_version_num(),
        5
    );
}

#[test]
fn legacy_ids_stay_below_two_to_the_53() {
    assert_eq!(LegacyId::try_from(1).unwrap().get(), 1);
    assert!(LegacyId::try_from(MAX_LEDGER_INTEGER).is_ok());
    assert!(LegacyId::try_from(MAX_LEDGER_INTEGER + 1).is_err());
    assert!(LegacyId::try_from(0).is_err());
    assert!(LegacyId::try_from(-5).is_err());
    assert_eq!("17".parse::<LegacyId>().unwrap().get(), 17);
    assert!("x".parse::<LegacyId>().is_err());
    assert!(serde_json::from_value::<LegacyId>(json!(9_007_199_254_740_992_i64)).is_err());
    assert_eq!(
        serde_json::to_value(LegacyId::try_from(7).unwrap()).unwrap(),
        json!(7)
    );
}

#[test]
fn secret_hash_is_sha256_in_lowercase_hex() {
    let hash = SecretHash::of(b"abc");
    let hex = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    assert_eq!(hash.to_string(), hex);
    assert_eq!(serde_json::to_value(hash).unwrap(), json!(hex));
    assert_eq!(hex.parse::<SecretHash>(), Ok(hash));
    assert_eq!(hex.to_uppercase().parse::<SecretHash>(), Ok(hash));
    assert_eq!(
        "abc".parse::<SecretHash>(),
        Err(invalid("secret_hash", "must be 64 hex digits"))
    );
    assert_eq!(
        "zz".repeat(32).parse::<SecretHash>(),
        Err(invalid("secret_hash", "must be hex"))
    );
    assert!(serde_json::from_value::<SecretHash>(json!("00")).is_err());
}

#[test]
fn secret_hash_debug_shows_only_a_prefix() {
    let debug = format!("{:?}", SecretHash::of(b"abc"));
    assert_eq!(debug, "SecretHash(ba7816bf…)");
}

#[test]
fn raw_credential_id_is_base64url_without_padding() {
    let raw = RawCredentialId::from_bytes(vec![0xfb, 0xff, 0x01]).unwrap();
    assert_eq!(raw.to_string(), "-_8B");
    assert_eq!(serde_json::to_value(&raw).unwrap(), json!("-_8B"));
    assert_eq!("-_8B".parse::<RawCredentialId>(), Ok(raw.clone()));
    let short = RawCredentialId::from_bytes(vec![1]).unwrap();
    assert_eq!("AQ==".parse::<RawCredentialId>(), Ok(short.clone()));
    assert_eq!("AQ".parse::<RawCredentialId>(), Ok(short));
    assert!("+/8B".parse::<RawCredentialId>().is_err());
    assert_eq!(
        "".parse::<RawCredentialId>(),
        Err(ParseError::Empty {
            field: "raw_credential_id"
        })
    );
    assert!(RawCredentialId::from_bytes(vec![0; 1024]).is_err());
    assert_eq!(
        raw.credential_id(),
        CredentialId::for_raw_id(&[0xfb, 0xff, 0x01])
    );
}

#[test]
fn ledger_json_refuses_floats_and_big_integers() {
    assert_eq!(
        check_ledger_json(&json!({"a": [1, -2, {"b": "c"}], "n": null})),
        Ok(())
    );
    assert_eq!(check_ledger_json(&json!(MAX_LEDGER_INTEGER)), Ok(()));
    assert_eq!(check_ledger_json(&json!(-MAX_LEDGER_INTEGER)), Ok(()));
    assert!(check_ledger_json(&json!({"a": [1.5]})).is_err());
    assert!(check_ledger_json(&json!(1.0)).is_err());
    assert!(check_ledger_json(&json!(MAX_LEDGER_INTEGER + 1)).is_err());
    assert!(check_ledger_json(&json!(-MAX_LEDGER_INTEGER - 1)).is_err());
    assert!(check_ledger_json(&json!(u64::MAX)).is_err());
}

#[test]
fn parse_error_names_its_field() {
    assert_eq!(Email::parse("x").unwrap_err().field(), "email");
    assert_eq!(Role::parse("").unwrap_err().field(), "role");
    assert_eq!(
        Reason::parse(&"r".repeat(2000)).unwrap_err().field(),
        "reason"
    );
}
