//! The one feed read: every reader's column set, limit and end give the
//! same commit order, and the counts agree with what is read.

use futures::TryStreamExt;
use queue_eventstore::feed::{self, Columns, FeedRead, Position, Until};
use queue_eventstore::ChainedRow;
use serde_json::json;
use sqlx::{PgPool, Row};

use crate::helpers::{ev, repo};

#[sqlx::test(migrator = "queue_eventstore::MIGRATOR")]
async fn every_reader_sees_the_same_commit_order(pool: PgPool) {
    let repo = repo(&pool);
    // Three transactions; the second touches two streams.
    repo.append(&[
        ev("T", "a", 1, json!({"n": 1})),
        ev("T", "a", 2, json!({"n": 2})),
    ])
    .await
    .unwrap();
    repo.append(&[
        ev("T", "b", 1, json!({"n": 3})),
        ev("T", "a", 3, json!({"n": 4})),
    ])
    .await
    .unwrap();
    repo.append(&[ev("T", "b", 2, json!({"n": 5}))])
        .await
        .unwrap();
    let expected = [("a", 1), ("a", 2), ("b", 1), ("a", 3), ("b", 2)];

    let mut conn = pool.acquire().await.unwrap();
    // The watermark is cluster-wide: wait (with a deadline) until every
    // transaction open now elsewhere has finished.
    let horizon = feed::horizon(&mut conn).await.unwrap();
    let below = queue_testkit::poll::eventually_within(
        &format!("the watermark to reach {horizon}"),
        std::time::Duration::from_secs(60),
        || async {
            let mut conn = pool.acquire().await.unwrap();
            let below = feed::watermark(&mut conn).await.unwrap();
            (below >= horizon).then_some(below)
        },
    )
    .await;
    let end = feed::end(&mut conn).await.unwrap();
    assert_eq!(feed::newest(&mut conn).await.unwrap(), Some(end));

    // Payload columns by index, two at a time from the start (a runner).
    let mut after = Position::default();
    let mut seen = Vec::new();
    loop {
        let rows = FeedRead::new(Columns::Payload, after, Until::Watermark(below))
            .limit(2)
            .fetch_all(&mut conn)
            .await
            .unwrap();
        assert!(rows.len() <= 2);
        let Some(last) = rows.last() else { break };
        after = Position::of(last).unwrap();
        for row in &rows {
            let id: String = row.try_get(3).unwrap();
            let sequence: i64 = row.try_get(4).unwrap();
            seen.push((id, sequence));
        }
    }
    let as_expected: Vec<(String, i64)> = expected
        .iter()
        .map(|(id, s)| (id.to_string(), *s))
        .collect();
    assert_eq!(seen, as_expected);
    assert_eq!(after, end);

    // The sealer's read: every row decodes and names its predecessor.
    let rows = FeedRead::new(
        Columns::ChainedWithPredecessor,
        Position::default(),
        Until::Watermark(below),
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(rows.len(), expected.len());
    for row in &rows {
        let chained = ChainedRow::decode(row).unwrap();
        let predecessor: Option<Vec<u8>> = row.try_get("predecessor_hash").unwrap();
        assert_eq!(predecessor.is_some(), chained.sequence() > 1);
    }

    // Extraction's reads: a fixed end, streamed, and the order columns.
    let first = Position::of(&rows[0]).unwrap();
    let read = FeedRead::new(Columns::Chained, first, Until::Position(end));
    let streamed: Vec<_> = read.fetch(&mut conn).try_collect().await.unwrap();
    assert_eq!(streamed.len(), expected.len() - 1);
    let order = FeedRead::new(Columns::Order, Position::default(), Until::Stored)
        .fetch_all(&mut conn)
        .await
        .unwrap();
    let order: Vec<(String, i64)> = order
        .iter()
        .map(|r| (r.get("aggregate_id"), r.get("sequence")))
        .collect();
    assert_eq!(order, as_expected);

    // The counts agree with the reads.
    let all = Position::default();
    assert_eq!(feed::count(&mut conn, all, Until::Stored).await.unwrap(), 5);
    assert_eq!(
        feed::count(&mut conn, all, Until::Position(end))
            .await
            .unwrap(),
        5
    );
    assert_eq!(
        feed::count(&mut conn, first, Until::Watermark(below))
            .await
            .unwrap(),
        4
    );
    assert_eq!(feed::count(&mut conn, end, Until::Stored).await.unwrap(), 0);
    let backlog = feed::backlog(&mut conn, first, below).await.unwrap();
    assert_eq!(backlog.events, 4);
    assert!(backlog.oldest_seconds >= 0.0);
    let caught_up = feed::backlog(&mut conn, end, below).await.unwrap();
    assert_eq!(caught_up.events, 0);
    assert_eq!(caught_up.oldest_seconds, 0.0);
}
