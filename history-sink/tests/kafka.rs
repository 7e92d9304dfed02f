//! Kafka sink → tansu → history service → MariaDB, with faults.
//!
//! Each test starts its own tansu broker (see `tests/common` for the environment variables).
#![cfg(feature = "service")]

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{init_tracing, skip_services, Proxy, Storage, Tansu, TestDb};
use futures::StreamExt;
use history_sink::kafka::{create_producer, ensure_topic, KafkaSinkConfig};
use history_sink::service::{run, ServiceConfig, ServiceStats};
use history_sink::{HistoryEvent, HistorySink, KafkaSink};
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const TOPIC: &str = "image-history";

struct Service {
    stats: Arc<ServiceStats>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<history_sink::Result<()>>>,
}

impl Service {
    fn start(brokers: &str, mysql: &str) -> Self {
        let mut cfg = ServiceConfig::new(brokers, TOPIC, "history-test", mysql);
        cfg.retry_max = Duration::from_millis(500);
        let stats = Arc::new(ServiceStats::default());
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(run(cfg, stats.clone(), async {
            let _ = rx.await;
        }));
        Self {
            stats,
            stop: Some(tx),
            task: Some(task),
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(30), self.task.take().unwrap())
            .await
            .expect("service did not stop within 30 s")
            .unwrap()
            .unwrap();
    }
}

fn sink_config(brokers: &str, spool: &Path) -> KafkaSinkConfig {
    let mut cfg = KafkaSinkConfig::new(brokers, spool);
    cfg.message_timeout = Duration::from_secs(2);
    cfg
}

fn event(i: usize) -> HistoryEvent {
    HistoryEvent::inpaint(format!("user-{}", i % 17))
        .with_dimensions(512, 512)
        .with_hole_ratio(0.25)
        .with_model("pconv-unet", "1.0.0")
        .with_latency_ms(i as u64)
}

/// Every id in `ids` is stored exactly once (the primary key makes "more than once"
/// impossible, so also compare the total).
async fn assert_rows(db: &TestDb, ids: &HashSet<uuid::Uuid>, timeout: Duration) {
    let n = db
        .wait_count(
            "SELECT COUNT(*) FROM history_events",
            ids.len() as i64,
            timeout,
        )
        .await;
    assert_eq!(n, ids.len() as i64, "rows in history_events");
    let sink = history_sink::MySqlSink::connect(&db.url()).await.unwrap();
    let stored: Vec<Vec<u8>> = sqlx::query_scalar("SELECT event_id FROM history_events")
        .fetch_all(sink.pool())
        .await
        .unwrap();
    let stored: HashSet<uuid::Uuid> = stored
        .iter()
        .map(|b| uuid::Uuid::from_slice(b).unwrap())
        .collect();
    assert_eq!(&stored, ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn end_to_end_with_dead_letters() {
    if skip_services("end_to_end_with_dead_letters") {
        return;
    }
    init_tracing();
    let tansu = Tansu::start(Storage::Memory).await;
    let db = TestDb::new().await;
    let spool = tempfile::tempdir().unwrap();
    let url = format!(
        "kafka://{}/{TOPIC}?spool={}",
        tansu.brokers(),
        spool.path().display()
    );
    let sink = history_sink::sink_from_url(&url, &history_sink::SpoolOptions::new(spool.path()))
        .await
        .unwrap();
    let mut ids = HashSet::new();
    let mut produce = |evs: Vec<HistoryEvent>| {
        ids.extend(evs.iter().map(|e| e.event_id));
        evs
    };
    for ev in produce((0..50).map(|_| event(0)).collect()) {
        sink.record(&ev).await.unwrap();
    }
    // Malformed messages, same key, so same partition, so before the events that follow.
    let raw = create_producer(&sink_config(&tansu.brokers(), spool.path())).unwrap();
    let mut bad_invalid = event(0);
    bad_invalid.user_id = String::new();
    let bad_invalid = serde_json::to_vec(&bad_invalid).unwrap();
    for payload in [&b"not json at all"[..], bad_invalid.as_slice()] {
        raw.send(
            FutureRecord::to(TOPIC).key("user-0").payload(payload),
            Timeout::After(Duration::from_secs(5)),
        )
        .await
        .unwrap();
    }
    for ev in produce((0..50).map(|_| event(0)).collect()) {
        sink.record(&ev).await.unwrap();
    }
    // A duplicate delivery (the same event sent twice) stores one row.
    let dup = event(0);
    ids.insert(dup.event_id);
    sink.record(&dup).await.unwrap();
    sink.record(&dup).await.unwrap();

    let svc = Service::start(&tansu.brokers(), &db.url());
    assert_rows(&db, &ids, Duration::from_secs(60)).await;
    assert_eq!(
        db.wait_count(
            "SELECT COUNT(*) FROM history_dead_letters",
            2,
            Duration::from_secs(10)
        )
        .await,
        2
    );
    let rows: Vec<(String, i32, i64, Vec<u8>, String)> = sqlx::query_as(
        "SELECT CAST(topic AS CHAR), kafka_partition, kafka_offset, raw_payload, CAST(error AS CHAR) \
         FROM history_dead_letters ORDER BY kafka_offset",
    )
    .fetch_all(
        history_sink::MySqlSink::connect(&db.url())
            .await
            .unwrap()
            .pool(),
    )
    .await
    .unwrap();
    assert_eq!(rows[0].0, TOPIC);
    assert_eq!(rows[0].2, 50, "offset of the first malformed message");
    assert_eq!(rows[0].3, b"not json at all");
    assert!(rows[0].4.contains("JSON"), "{}", rows[0].4);
    assert!(rows[1].4.contains("user_id"), "{}", rows[1].4);
    assert_eq!(svc.stats.dead_letters.load(Ordering::Relaxed), 2);
    assert_eq!(svc.stats.duplicates.load(Ordering::Relaxed), 1);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_concurrent_events() {
    if skip_services("ten_thousand_concurrent_events") {
        return;
    }
    init_tracing();
    let tansu = Tansu::start(Storage::Memory).await;
    let db = TestDb::new().await;
    let spool = tempfile::tempdir().unwrap();
    let sink = Arc::new(
        KafkaSink::new(sink_config(&tansu.brokers(), spool.path()))
            .await
            .unwrap(),
    );
    let events: Vec<HistoryEvent> = (0..10_000).map(event).collect();
    let ids: HashSet<_> = events.iter().map(|e| e.event_id).collect();
    let start = Instant::now();
    futures::stream::iter(events)
        .for_each_concurrent(1000, |ev| {
            let sink = sink.clone();
            async move { sink.record(&ev).await.unwrap() }
        })
        .await;
    let produced = start.elapsed();
    eprintln!(
        "produced 10000 events in {produced:?} ({:.0} events/s)",
        10_000.0 / produced.as_secs_f64()
    );
    let svc = Service::start(&tansu.brokers(), &db.url());
    assert_rows(&db, &ids, Duration::from_secs(120)).await;
    assert_eq!(svc.stats.dead_letters.load(Ordering::Relaxed), 0);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_outage_loses_nothing() {
    if skip_services("broker_outage_loses_nothing") {
        return;
    }
    init_tracing();
    let mut tansu = Tansu::start(Storage::Sqlite).await;
    let db = TestDb::new().await;
    let spool = tempfile::tempdir().unwrap();
    let sink = KafkaSink::new(sink_config(&tansu.brokers(), spool.path()))
        .await
        .unwrap();
    let svc = Service::start(&tansu.brokers(), &db.url());
    let mut ids = HashSet::new();
    let mut spooled = false;
    for i in 0..1500 {
        if i == 500 {
            tansu.kill();
        }
        if i == 1000 {
            spooled = sink.pending_events() > 0;
            tokio::time::sleep(Duration::from_secs(2)).await;
            tansu.restart().await;
        }
        let ev = event(i);
        ids.insert(ev.event_id);
        sink.record(&ev).await.unwrap();
        if i % 100 == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(
        spooled,
        "events went to the spool while the broker was down"
    );
    if sink.flush_timeout(Duration::from_secs(60)).await.is_err() {
        let log = tansu.log();
        let first_errors: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("ERROR") || l.contains("WARN") || l.contains("panic"))
            .take(30)
            .collect();
        panic!(
            "spool not drained within 60 s; tansu's first errors:\n{}",
            first_errors.join("\n")
        );
    }
    assert_rows(&db, &ids, Duration::from_secs(90)).await;
    svc.stop().await;
}

/// Not a test on its own: the producing process of `producer_crash_replays_spool`.
/// It records events one by one (the broker is down, so they are spooled), appending each
/// acknowledged event id to a file, until it is killed.
#[tokio::test]
async fn child_producer_process() {
    let (Ok(brokers), Ok(spool), Ok(ids_path)) = (
        std::env::var("HISTORY_CHILD_BROKERS"),
        std::env::var("HISTORY_CHILD_SPOOL"),
        std::env::var("HISTORY_CHILD_IDS"),
    ) else {
        return;
    };
    let mut cfg = sink_config(&brokers, Path::new(&spool));
    cfg.message_timeout = Duration::from_millis(500);
    let sink = KafkaSink::new(cfg).await.unwrap();
    let mut ids = std::fs::File::create(ids_path).unwrap();
    for i in 0.. {
        let ev = event(i);
        sink.record(&ev).await.unwrap();
        writeln!(ids, "{}", ev.event_id).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn producer_crash_replays_spool() {
    if skip_services("producer_crash_replays_spool") {
        return;
    }
    init_tracing();
    let mut tansu = Tansu::start(Storage::Sqlite).await;
    ensure_topic(&tansu.brokers(), TOPIC, 3).await.unwrap();
    tansu.kill();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let ids_path = dir.path().join("ids");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_producer_process", "--nocapture"])
        .env("HISTORY_CHILD_BROKERS", tansu.brokers())
        .env("HISTORY_CHILD_SPOOL", &spool)
        .env("HISTORY_CHILD_IDS", &ids_path)
        .spawn()
        .unwrap();
    let start = Instant::now();
    while std::fs::read_to_string(&ids_path)
        .map(|s| s.lines().count())
        .unwrap_or(0)
        < 300
    {
        assert!(start.elapsed() < Duration::from_secs(60), "child too slow");
        assert!(child.try_wait().unwrap().is_none(), "child exited");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap(); // SIGKILL, mid-production
    child.wait().unwrap();
    let acked: HashSet<uuid::Uuid> = std::fs::read_to_string(&ids_path)
        .unwrap()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect();

    tansu.restart().await;
    let db = TestDb::new().await;
    let sink = KafkaSink::new(sink_config(&tansu.brokers(), &spool))
        .await
        .unwrap();
    sink.flush().await.unwrap();
    let svc = Service::start(&tansu.brokers(), &db.url());
    // Every acknowledged event is stored; at most one more (spooled as the child died,
    // before it could write the id down) may also be there.
    let sql = "SELECT COUNT(*) FROM history_events";
    db.wait_count(sql, acked.len() as i64, Duration::from_secs(60))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stored = db.event_count().await;
    assert!(
        stored == acked.len() as i64 || stored == acked.len() as i64 + 1,
        "stored {stored}, acknowledged {}",
        acked.len()
    );
    let rows: Vec<Vec<u8>> = sqlx::query_scalar("SELECT event_id FROM history_events")
        .fetch_all(
            history_sink::MySqlSink::connect(&db.url())
                .await
                .unwrap()
                .pool(),
        )
        .await
        .unwrap();
    let rows: HashSet<uuid::Uuid> = rows
        .iter()
        .map(|b| uuid::Uuid::from_slice(b).unwrap())
        .collect();
    assert!(acked.is_subset(&rows), "an acknowledged event was lost");
    // Nothing doubled on the wire either: the replay sent each spooled event once.
    assert_eq!(svc.stats.messages.load(Ordering::Relaxed), stored as u64);
    assert_eq!(svc.stats.duplicates.load(Ordering::Relaxed), 0);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mysql_outage_is_retried() {
    if skip_services("mysql_outage_is_retried") {
        return;
    }
    init_tracing();
    let tansu = Tansu::start(Storage::Memory).await;
    let db = TestDb::new().await;
    let upstream: std::net::SocketAddr = {
        let u = url::Url::parse(&db.url()).unwrap();
        let host = u.host_str().unwrap().to_owned();
        tokio::net::lookup_host((host, u.port().unwrap_or(3306)))
            .await
            .unwrap()
            .next()
            .unwrap()
    };
    let proxy = Proxy::start(upstream).await;
    let spool = tempfile::tempdir().unwrap();
    let sink = KafkaSink::new(sink_config(&tansu.brokers(), spool.path()))
        .await
        .unwrap();
    let svc = Service::start(&tansu.brokers(), &db.url_via(proxy.addr));
    let mut ids = HashSet::new();
    for i in 0..300 {
        let ev = event(i);
        ids.insert(ev.event_id);
        sink.record(&ev).await.unwrap();
    }
    assert_eq!(
        db.wait_count(
            "SELECT COUNT(*) FROM history_events",
            300,
            Duration::from_secs(60)
        )
        .await,
        300
    );
    proxy.cut().await;
    for i in 300..700 {
        let ev = event(i);
        ids.insert(ev.event_id);
        sink.record(&ev).await.unwrap();
    }
    let start = Instant::now();
    while svc.stats.db_retries.load(Ordering::Relaxed) < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "service never hit the outage"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        db.event_count().await,
        300,
        "nothing written through a cut proxy"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.restore().await;
    assert_rows(&db, &ids, Duration::from_secs(60)).await;
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn service_binary_stops_on_sigterm() {
    if skip_services("service_binary_stops_on_sigterm") {
        return;
    }
    init_tracing();
    let tansu = Tansu::start(Storage::Memory).await;
    let db = TestDb::new().await;
    let spool = tempfile::tempdir().unwrap();
    let sink = KafkaSink::new(sink_config(&tansu.brokers(), spool.path()))
        .await
        .unwrap();
    let spawn = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_history-service"))
            .args(["--brokers", &tansu.brokers(), "--topic", TOPIC])
            .args(["--group", "bin-test", "--mysql", &db.url()])
            .spawn()
            .unwrap()
    };
    let mut ids = HashSet::new();
    for round in 0..2 {
        let mut child = spawn();
        for i in 0..100 {
            let ev = event(i);
            ids.insert(ev.event_id);
            sink.record(&ev).await.unwrap();
        }
        assert_eq!(
            db.wait_count(
                "SELECT COUNT(*) FROM history_events",
                ids.len() as i64,
                Duration::from_secs(60)
            )
            .await,
            ids.len() as i64,
            "round {round}"
        );
        // SAFETY: plain kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
        let start = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no exit after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(status.success(), "exit status {status}");
    }
    assert_rows(&db, &ids, Duration::from_secs(5)).await;
}
