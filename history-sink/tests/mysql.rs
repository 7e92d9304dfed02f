//! `MySqlSink` against the real MariaDB (see `tests/common` for the environment variables).
#![cfg(feature = "mysql")]

mod common;

use std::sync::Arc;

use chrono::{TimeZone, Utc};
use common::{skip_services, TestDb};
use history_sink::{
    sink_from_url, EventKind, FanoutSink, HistoryError, HistoryEvent, HistoryQuery, HistorySink,
    MySqlSink, SpoolOptions,
};
use uuid::Uuid;

#[tokio::test]
async fn record_is_idempotent_and_typed() {
    if skip_services("record_is_idempotent_and_typed") {
        return;
    }
    let db = TestDb::new().await;
    let sink = MySqlSink::connect(&db.url()).await.unwrap();
    let ev = HistoryEvent::inpaint("alice")
        .with_images(
            Some("file:///a.png".into()),
            Some("file:///m.png".into()),
            Some("file:///r.png".into()),
        )
        .with_dimensions(640, 480)
        .with_hole_ratio(0.3)
        .with_model("pconv", "1")
        .with_strategy("whole")
        .with_device("cpu")
        .with_latency_ms(123)
        .with_error("out of memory");
    sink.record(&ev).await.unwrap();
    sink.record(&ev).await.unwrap();
    assert_eq!(db.event_count().await, 1);
    assert_eq!(sink.get(ev.event_id).await.unwrap(), Some(ev.clone()));
    // One column per field, with proper types.
    let row: (String, String, i64, f64, String, Option<String>) = sqlx::query_as(
        "SELECT CAST(kind AS CHAR), DATE_FORMAT(occurred_at, '%Y-%m-%d %H:%i:%s.%f'), \
         CAST(width AS SIGNED), hole_ratio, CAST(status AS CHAR), CAST(error_message AS CHAR) \
         FROM history_events WHERE event_id = ?",
    )
    .bind(ev.event_id.as_bytes().to_vec())
    .fetch_one(sink.pool())
    .await
    .unwrap();
    assert_eq!(row.0, "inpaint");
    assert_eq!(
        row.1,
        ev.occurred_at
            .format("%Y-%m-%d %H:%M:%S%.3f000")
            .to_string()
    );
    assert_eq!(row.2, 640);
    assert_eq!(row.3, 0.3);
    assert_eq!(row.4, "error");
    assert_eq!(row.5.as_deref(), Some("out of memory"));
    // Migrations are re-runnable.
    MySqlSink::connect(&db.url()).await.unwrap();
}

#[tokio::test]
async fn query_filters_and_pages() {
    if skip_services("query_filters_and_pages") {
        return;
    }
    let db = TestDb::new().await;
    let spool = tempfile::tempdir().unwrap();
    let sink = sink_from_url(&db.url(), &SpoolOptions::new(spool.path()))
        .await
        .unwrap();
    assert!(sink.can_query());
    let base = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
    let mut all = Vec::new();
    for i in 0..30i64 {
        let kind = if i % 3 == 0 {
            EventKind::Finetune
        } else {
            EventKind::Inpaint
        };
        let ev = HistoryEvent::new(kind, if i % 2 == 0 { "a" } else { "b" })
            .with_occurred_at(base + chrono::Duration::milliseconds((i / 3) * 1500));
        sink.record(&ev).await.unwrap();
        all.push(ev);
    }
    let mut expected = all.clone();
    expected.sort_by_key(|e| std::cmp::Reverse((e.occurred_at, e.event_id)));
    let mut seen = Vec::new();
    let mut q = HistoryQuery {
        limit: 4,
        ..HistoryQuery::default()
    };
    loop {
        let page = sink.query(&q).await.unwrap();
        if page.is_empty() {
            break;
        }
        q.before = Some(page.last().unwrap().event_id);
        seen.extend(page);
    }
    assert_eq!(seen, expected);
    let b = sink
        .query(&HistoryQuery {
            kind: Some(EventKind::Finetune),
            ..HistoryQuery::for_user("b")
        })
        .await
        .unwrap();
    assert_eq!(b.len(), 5);
    let window = sink
        .query(&HistoryQuery {
            since: Some(base + chrono::Duration::milliseconds(1500)),
            until: Some(base + chrono::Duration::milliseconds(4500)),
            ..HistoryQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(window.len(), 6);
    assert!(matches!(
        sink.query(&HistoryQuery {
            before: Some(Uuid::now_v7()),
            ..HistoryQuery::default()
        })
        .await,
        Err(HistoryError::UnknownCursor(_))
    ));
}

#[tokio::test]
async fn delete_user_through_the_spool_deletes_what_was_on_its_way_too() {
    if skip_services("delete_user_through_the_spool_deletes_what_was_on_its_way_too") {
        return;
    }
    let db = TestDb::new().await;
    let spool = tempfile::tempdir().unwrap();
    let sink = sink_from_url(&db.url(), &SpoolOptions::new(spool.path()))
        .await
        .unwrap();
    for user in ["alice", "alice", "bob"] {
        sink.record(&HistoryEvent::inpaint(user)).await.unwrap();
    }
    // No flush first: the delete itself waits for the spool, so none of alice's events is
    // delivered after it and comes back.
    assert_eq!(sink.delete_user("alice").await.unwrap(), 2);
    assert!(sink
        .query(&HistoryQuery::for_user("alice"))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        sink.query(&HistoryQuery::for_user("bob"))
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn fanout_to_sqlite_and_mysql() {
    if skip_services("fanout_to_sqlite_and_mysql") {
        return;
    }
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite:{}", dir.path().join("h.db").display());
    let spool = SpoolOptions::new(dir.path().join("spool"));
    let sink = sink_from_url(&format!("{sqlite}|{}", db.url()), &spool)
        .await
        .unwrap();
    let ev = HistoryEvent::upload("carol");
    sink.record(&ev).await.unwrap();
    // MySQL is behind an outbox: the event is durable in the spool, then delivered.
    sink.flush().await.unwrap();
    assert_eq!(db.event_count().await, 1);
    assert_eq!(sink.get(ev.event_id).await.unwrap(), Some(ev.clone()));
    let my: Arc<dyn HistorySink> = Arc::new(MySqlSink::connect(&db.url()).await.unwrap());
    let f = FanoutSink::new(vec![my]);
    assert_eq!(f.get(ev.event_id).await.unwrap(), Some(ev));
}
