use cqrs_es::persist::SerializedEvent;
use queue_projections::rebuild::NoProgress;
use queue_projections::runner::load_checkpoint;
use queue_projections::{catch_up, read, rebuild, status, Projection, RebuildOptions};
use queue_replay_tests::repository;
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::*;

/// A Customer event no code can decode: the customers and audit projections
/// stop right before it and say so; credentials and sessions keep going.
#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn a_poison_event_stops_only_its_projections(pool: PgPool) {
    history(&pool, 20, 10).await;
    catch_up(&pool).await.unwrap();
    let before = read::customer_count(&pool, None).await.unwrap();

    let poison_id = "0b5e7a2c-4d1f-4c3b-9a8e-6f5d4c3b2a10";
    repository(&pool)
        .unwrap()
        .append(&[SerializedEvent::new(
            poison_id.to_string(),
            1,
            "Customer".into(),
            "CustomerRegistered".into(),
            "1.0".into(),
            json!({"CustomerRegistered": {"customer_id": poison_id, "surprise": true}}),
            json!({}),
        )])
        .await
        .unwrap();
    history(&pool, 10, 11).await;

    let report = catch_up(&pool).await.unwrap();
    let by_name = |p: Projection| report.iter().find(|c| c.projection == p).unwrap();
    for stopped in [Projection::Customers, Projection::Audit] {
        let error = by_name(stopped).error.as_deref().unwrap();
        assert!(
            error.contains(poison_id) && error.contains("sequence 1"),
            "{error}"
        );
    }
    for running in [Projection::Credentials, Projection::Sessions] {
        assert!(by_name(running).error.is_none());
        assert!(by_name(running).applied > 0);
    }
    // Stopped before the poison event: nothing after it is applied.
    assert_eq!(read::customer_count(&pool, None).await.unwrap(), before);
    let poison_position: (i64, i64) =
        sqlx::query_as("SELECT commit_xid, insert_id FROM events WHERE aggregate_id = $1")
            .bind(poison_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let cp = load_checkpoint(&mut conn, Projection::Customers, false)
        .await
        .unwrap();
    assert!((cp.position.commit_xid, cp.position.insert_id) < poison_position);
    assert!(cp.failed);
    let cp = load_checkpoint(&mut conn, Projection::Sessions, false)
        .await
        .unwrap();
    assert!((cp.position.commit_xid, cp.position.insert_id) > poison_position);
    assert!(!cp.failed);

    // Status reports it; retrying changes nothing (the fold is deterministic).
    let statuses = status(&pool).await.unwrap();
    let customers = statuses
        .iter()
        .find(|s| s.projection == Projection::Customers)
        .unwrap();
    assert!(customers.failed_at.is_some() && customers.events_behind > 0);
    assert!(customers
        .error
        .as_deref()
        .unwrap()
        .contains("cannot decode payload"));
    let again = catch_up(&pool).await.unwrap();
    assert!(again.iter().all(|c| c.projection == Projection::Sessions
        || c.projection == Projection::Credentials
        || c.error.is_some()));

    // A rebuild cannot get past it either, and leaves the live tables alone.
    let err = rebuild(&pool, &RebuildOptions::default(), &NoProgress)
        .await
        .unwrap_err();
    assert!(err.to_string().contains(poison_id), "{err}");
    assert_eq!(read::customer_count(&pool, None).await.unwrap(), before);
    // The projections that do not read Customer events rebuild fine.
    let report = rebuild(
        &pool,
        &RebuildOptions {
            only: Some(Projection::Sessions),
            no_swap: false,
        },
        &NoProgress,
    )
    .await
    .unwrap();
    assert!(report.ok && report.swapped, "{report:?}");
}
