//! Fast `KafkaSink` checks against librdkafka's built-in mock cluster (no external broker).
//! The real-broker tests are in `tests/kafka.rs`.
#![cfg(feature = "kafka")]

use std::time::Duration;

use history_sink::{HistoryEvent, HistorySink, KafkaSink, KafkaSinkConfig};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::mocking::MockCluster;
use rdkafka::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spools_while_broker_down_and_replays_in_order() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("h", 1, 1).unwrap();
    let spool = tempfile::tempdir().unwrap();
    let mut cfg = KafkaSinkConfig::new(mock.bootstrap_servers(), spool.path());
    cfg.topic = "h".into();
    cfg.message_timeout = Duration::from_millis(500);
    let sink = KafkaSink::new(cfg.clone()).await.unwrap();

    let mut sent = Vec::new();
    for _ in 0..10 {
        let ev = HistoryEvent::upload("u");
        sink.record(&ev).await.unwrap();
        sent.push(ev.event_id);
    }
    sink.flush().await.unwrap();
    assert_eq!(sink.pending_events(), 0);

    mock.broker_down(-1).unwrap();
    for _ in 0..10 {
        let ev = HistoryEvent::upload("u");
        sink.record(&ev).await.unwrap();
        sent.push(ev.event_id);
    }
    assert_eq!(sink.pending_events(), 10, "records wait in the spool");
    drop(sink);

    // A new sink (a restarted process) replays the spool once the broker is back.
    mock.broker_up(-1).unwrap();
    let sink = KafkaSink::new(cfg).await.unwrap();
    sink.flush().await.unwrap();
    assert_eq!(sink.pending_events(), 0);

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", mock.bootstrap_servers())
        .set("group.id", "check")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&["h"]).unwrap();
    // At least once, in order: a batch the broker took but did not acknowledge within the
    // 500 ms timeout (a loaded machine) is sent again, so an event may come twice; its
    // first delivery is in its place.
    let mut got = Vec::new();
    let mut seen = std::collections::HashSet::new();
    while seen.len() < sent.len() {
        let m = tokio::time::timeout(Duration::from_secs(20), consumer.recv())
            .await
            .expect("all events consumed")
            .unwrap();
        assert_eq!(m.key(), Some(&b"u"[..]));
        let ev = HistoryEvent::from_json(m.payload().unwrap()).unwrap();
        if seen.insert(ev.event_id) {
            got.push(ev.event_id);
        }
    }
    assert_eq!(got, sent);
}

#[tokio::test]
async fn unreachable_broker_at_start_costs_the_caller_nothing() {
    let spool = tempfile::tempdir().unwrap();
    let mut cfg = KafkaSinkConfig::new("127.0.0.1:1", spool.path());
    cfg.message_timeout = Duration::from_millis(300);
    let sink = KafkaSink::new(cfg).await.unwrap();
    let start = std::time::Instant::now();
    for _ in 0..200 {
        sink.record(&HistoryEvent::upload("u")).await.unwrap();
    }
    assert_eq!(sink.pending_events(), 200);
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    assert!(matches!(
        sink.flush_timeout(Duration::from_millis(200)).await,
        Err(history_sink::HistoryError::FlushTimeout(_))
    ));
    let mut lines = 0;
    for f in std::fs::read_dir(spool.path()).unwrap() {
        let path = f.unwrap().path();
        if path.extension().is_some_and(|e| e == "log") {
            lines += std::fs::read_to_string(path).unwrap().lines().count();
        }
    }
    assert_eq!(lines, 200, "every event is on disk");
}
