use sqlx::PgPool;

use crate::*;

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn verify_exits_zero_when_intact_and_one_naming_the_damage(pool: PgPool) {
    let url = url_of(&pool);
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, recorded_at, prev_hash, hash, mac, mac_key_id) \
         VALUES ('T', 'a', 1, 'E', '1.0', '{}', now(), decode(repeat('00', 32), 'hex'), decode(repeat('00', 32), 'hex'), decode(repeat('00', 32), 'hex'), 'k1')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        let env = [
            ("DATABASE_URL", url.as_str()),
            ("QUEUE_MAC_KEYS", MAC),
            ("QUEUE_CHECKPOINT_KEY", CHECKPOINT_KEY),
        ];
        // The sealer checks each row first: it refuses to sign over this one
        // (exit 1, naming it) and seals nothing past it.
        let seal = queue(&["seal"], &env);
        assert_eq!(seal.status.code(), Some(1), "{}", stderr(&seal));
        assert!(
            stderr(&seal).contains("T a event 1: hash_mismatch"),
            "{}",
            stderr(&seal)
        );
        queue(&["--json", "verify"], &env)
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], false);
    assert_eq!(report["first_problem"]["kind"], "hash_mismatch");
    assert_eq!(report["first_problem"]["aggregate_id"], "a");
    assert!(report["first_problem"]["ledger_seq"].is_null(), "{report}");
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn verify_passes_on_an_empty_and_an_honest_store(pool: PgPool) {
    let url = url_of(&pool);
    let out = tokio::task::spawn_blocking(move || {
        let env = [
            ("DATABASE_URL", url.as_str()),
            ("QUEUE_MAC_KEYS", MAC),
            ("QUEUE_CHECKPOINT_KEY", CHECKPOINT_KEY),
        ];
        queue(&["verify"], &env)
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK: the ledger is intact"));
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn export_then_verify_export_offline(pool: PgPool) {
    use cqrs_es::persist::SerializedEvent;
    use queue_eventstore::{ChainedEventRepository, MacKeys, SharedMacKeys, SystemClock};
    let keys = MacKeys::parse(MAC).unwrap();
    let repo = ChainedEventRepository::new(
        pool.clone(),
        SharedMacKeys::new(keys),
        std::sync::Arc::new(SystemClock),
    );
    for seq in 1..=3usize {
        let event = SerializedEvent::new(
            "c1".into(),
            seq,
            "Customer".into(),
            "E".into(),
            "1.0".into(),
            serde_json::json!({"n": seq}),
            serde_json::json!({}),
        );
        repo.append(&[event]).await.unwrap();
    }
    let url = url_of(&pool);
    let dir = std::env::temp_dir().join(format!("queue-export-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!(
        "{}.jsonl",
        pool.connect_options().get_database().unwrap()
    ));
    let path = file.display().to_string();
    let (ok, tampered) = tokio::task::spawn_blocking(move || {
        let env = [
            ("DATABASE_URL", url.as_str()),
            ("QUEUE_MAC_KEYS", MAC),
            ("QUEUE_CHECKPOINT_KEY", CHECKPOINT_KEY),
        ];
        let out = queue(&["export", "--out", &path], &env);
        assert!(out.status.success(), "{}", stderr(&out));
        let public = queue(&["keys", "public", "checkpoint"], &env);
        let key = String::from_utf8(public.stdout)
            .unwrap()
            .lines()
            .last()
            .unwrap()
            .to_string();
        let ok = queue(&["verify-export", &path, "--checkpoint-key", &key], &[]);
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("{\"n\":2}", "{\"n\":20}");
        std::fs::write(&path, text).unwrap();
        let tampered = queue(
            &["--json", "verify-export", &path, "--checkpoint-key", &key],
            &[],
        );
        (ok, tampered)
    })
    .await
    .unwrap();
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("OK: 3 events"));
    assert_eq!(tampered.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&tampered.stdout).unwrap();
    assert_eq!(report["first_bad_line"], 3);
    std::fs::remove_file(&file).ok();
}

/// `queue export --tenant SLUG`: only that tenant's streams, and the file
/// verifies offline like any other.
#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn export_of_one_tenant_then_verify_export(pool: PgPool) {
    use cqrs_es::Aggregate;
    use queue_domain::types::{Actor, CustomerId, TenantId, TenantSlug};
    use queue_domain::{Customer, CustomerCommand, Tenant, TenantCommand};
    use queue_eventstore::{
        Batch, ChainedEventRepository, EventStore, MacKeys, SharedMacKeys, SystemClock,
    };
    async fn run<A: Aggregate<Services = ()> + Clone + 'static>(
        store: &EventStore,
        id: &str,
        command: A::Command,
    ) {
        let mut loaded = store.load::<A>(id).await.unwrap();
        let events = loaded.execute(command).await.unwrap();
        let mut batch = Batch::new();
        batch.add(&mut loaded, &events).unwrap();
        store.append(batch).await.unwrap();
    }
    let store = EventStore::new(ChainedEventRepository::new(
        pool.clone(),
        SharedMacKeys::new(MacKeys::parse(MAC).unwrap()),
        std::sync::Arc::new(SystemClock),
    ));
    let now = chrono::Utc::now();
    let mut expected = Vec::new();
    for (n, slug) in [(1u128, "acme"), (2, "globex"), (3, "acme")] {
        let tenant = TenantId::for_slug(&TenantSlug::parse(slug).unwrap());
        if n < 3 {
            run::<Tenant>(
                &store,
                &tenant.to_string(),
                TenantCommand::Create {
                    tenant_id: tenant,
                    slug: TenantSlug::parse(slug).unwrap(),
                    name: slug.parse().unwrap(),
                    actor: Actor::parse("console").unwrap(),
                    at: now,
                },
            )
            .await;
        }
        let customer = CustomerId::from_uuid(uuid::Uuid::from_u128(n));
        run::<Customer>(
            &store,
            &customer.to_string(),
            CustomerCommand::Register {
                customer_id: customer,
                tenant_id: tenant,
                email: format!("u{n}@example.com").parse().unwrap(),
                display_name: "Ada".parse().unwrap(),
                at: now,
            },
        )
        .await;
        if slug == "acme" {
            if n == 1 {
                expected.push(format!("Tenant/{tenant}"));
            }
            expected.push(format!("Customer/{customer}"));
        }
    }
    let url = url_of(&pool);
    let dir = std::env::temp_dir().join(format!("queue-export-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!(
        "{}-tenant.jsonl",
        pool.connect_options().get_database().unwrap()
    ));
    let path = file.display().to_string();
    let (export, verified) = tokio::task::spawn_blocking(move || {
        let env = [
            ("DATABASE_URL", url.as_str()),
            ("QUEUE_MAC_KEYS", MAC),
            ("QUEUE_CHECKPOINT_KEY", CHECKPOINT_KEY),
        ];
        let export = queue(&["export", "--tenant", "acme", "--out", &path], &env);
        let public = queue(&["keys", "public", "checkpoint"], &env);
        let key = String::from_utf8(public.stdout)
            .unwrap()
            .lines()
            .last()
            .unwrap()
            .to_string();
        let verified = queue(&["verify-export", &path, "--checkpoint-key", &key], &[]);
        (export, verified)
    })
    .await
    .unwrap();
    assert!(export.status.success(), "{}", stderr(&export));
    assert_eq!(
        verified.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&verified.stdout)
    );
    assert!(String::from_utf8_lossy(&verified.stdout).contains("OK: 3 events"));
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let acme = TenantId::for_slug(&TenantSlug::parse("acme").unwrap());
    assert_eq!(lines[0]["filters"]["tenant_id"], acme.to_string());
    let streams: Vec<String> = lines[1..lines.len() - 1]
        .iter()
        .map(|l| {
            format!(
                "{}/{}",
                l["aggregate_type"].as_str().unwrap(),
                l["aggregate_id"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(streams, expected);
    std::fs::remove_file(&file).ok();
}

/// Issue 17 item 8: a superuser moves `sealer_state` past unsealed events
/// (they would never be sealed, checkpointed or exported as "complete");
/// `queue verify` exits 1 naming them.
#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn verify_fails_after_the_sealer_position_is_moved_forward(pool: PgPool) {
    use cqrs_es::persist::SerializedEvent;
    use queue_eventstore::{ChainedEventRepository, MacKeys, SharedMacKeys, SystemClock};
    let repo = ChainedEventRepository::new(
        pool.clone(),
        SharedMacKeys::new(MacKeys::parse(MAC).unwrap()),
        std::sync::Arc::new(SystemClock),
    );
    let append = |seq: usize| {
        SerializedEvent::new(
            "c1".into(),
            seq,
            "Customer".into(),
            "E".into(),
            "1.0".into(),
            serde_json::json!({"n": seq}),
            serde_json::json!({}),
        )
    };
    let url = url_of(&pool);
    let env = move || {
        vec![
            ("DATABASE_URL".to_owned(), url.clone()),
            ("QUEUE_MAC_KEYS".to_owned(), MAC.to_owned()),
            ("QUEUE_CHECKPOINT_KEY".to_owned(), CHECKPOINT_KEY.to_owned()),
        ]
    };
    let run = |args: &'static [&'static str], env: Vec<(String, String)>| {
        tokio::task::spawn_blocking(move || {
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            queue(args, &env)
        })
    };
    repo.append(&[append(1)]).await.unwrap();
    let seal = run(&["seal"], env()).await.unwrap();
    assert!(seal.status.success(), "{}", stderr(&seal));
    repo.append(&[append(2)]).await.unwrap();
    repo.append(&[append(3)]).await.unwrap();
    let honest = run(&["--json", "verify"], env()).await.unwrap();
    assert_eq!(honest.status.code(), Some(0), "{}", stderr(&honest));
    let report: serde_json::Value = serde_json::from_slice(&honest.stdout).unwrap();
    assert_eq!(report["unsealed"], 2, "{report}");

    sqlx::query(
        "UPDATE sealer_state SET (last_xid, last_insert_id) = (SELECT commit_xid, insert_id \
         FROM events ORDER BY commit_xid DESC, insert_id DESC LIMIT 1)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let out = run(&["--json", "verify"], env()).await.unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], false);
    assert_eq!(
        report["first_problem"]["kind"], "skipped_by_sealer",
        "{report}"
    );
    assert_eq!(report["first_problem"]["sequence"], 2, "{report}");
    // The human report says so too.
    let human = run(&["verify"], env()).await.unwrap();
    assert_eq!(human.status.code(), Some(1));
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.contains("FAILED") && text.contains("sealer's position"),
        "{text}"
    );
}
