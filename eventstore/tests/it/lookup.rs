//! Every lookup that finds streams by a payload field must ride its
//! expression index: if an event field is renamed (or the query drifts from
//! the index expression), the planner can no longer use the index and these
//! tests fail instead of production silently scanning the whole log.

use queue_eventstore::lookup;
use serde_json::Value;
use sqlx::{PgPool, Postgres};

/// The indexes the plan searches by a condition for the lookup `name`
/// (sequential scans are disabled for the session, so the planner takes any
/// usable index).
async fn indexes_used(pool: &PgPool, name: &str) -> Vec<String> {
    let sql = lookup::query_text(name).unwrap();
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("SET enable_seqscan = off")
        .execute(&mut *conn)
        .await
        .unwrap();
    let explain = format!("EXPLAIN (FORMAT JSON) {sql}");
    let query = sqlx::query_scalar::<Postgres, Value>(&explain);
    let query = match name {
        "customers_by_emails" => query.bind(vec!["ada@example.com".to_owned()]),
        "customer_by_email" => query
            .bind("ada@example.com")
            .bind("e02b51ee-91ce-59b2-8ff6-b3ef33a10a99"),
        _ => query.bind("ada@example.com"),
    };
    let plan = query.fetch_one(&mut *conn).await.unwrap();
    let mut found = Vec::new();
    collect_index_names(&plan, &mut found);
    found
}

fn collect_index_names(plan: &Value, out: &mut Vec<String>) {
    match plan {
        Value::Object(map) => {
            // Used *through its expression*: an index scanned whole with a
            // filter (a partial index whose predicate the query implies) has
            // no "Index Cond" and does not count.
            if let (Some(Value::String(index)), Some(_)) =
                (map.get("Index Name"), map.get("Index Cond"))
            {
                out.push(index.clone());
            }
            map.values().for_each(|v| collect_index_names(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_index_names(v, out)),
        _ => {}
    }
}

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn every_lookup_uses_its_expression_index(pool: PgPool) {
    for (name, index) in lookup::INDEXED {
        let used = indexes_used(&pool, name).await;
        assert!(
            used.iter().any(|u| u == index),
            "lookup {name} must use index {index}; the plan uses {used:?}"
        );
    }
}

/// The check itself can fail: without its index a lookup is a scan. (And a
/// renamed field fails it too: with `'grantId'` in `CUSTOMER_OF_GRANT` the
/// plan scans `events_role_grant` whole with a filter, no index condition.)
#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn a_dropped_index_is_noticed(pool: PgPool) {
    sqlx::query("DROP INDEX events_role_grant")
        .execute(&pool)
        .await
        .unwrap();
    let used = indexes_used(&pool, "customer_of_grant").await;
    assert!(!used.iter().any(|u| u == "events_role_grant"), "{used:?}");
}
