//! Throughput of the Kafka path, against a real tansu broker and MariaDB:
//!
//! 1. producer: `KafkaSink::record` with 1000 concurrent callers, events/s spooled (what a
//!    caller waits for) and events/s acknowledged by the broker (what the outbox delivers);
//! 2. consumer: the history service draining that backlog into MySQL, rows/s;
//! 3. end to end: producing while the service runs, events/s until the last row lands.
//!
//! ```text
//! cargo bench -p history-sink --features service --bench throughput
//! HISTORY_BENCH_EVENTS=100000 cargo bench -p history-sink --features service --bench throughput
//! ```
//! Uses the same environment variables as the tests (`HISTORY_TEST_MYSQL`,
//! `HISTORY_TEST_TANSU`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Storage, Tansu, TestDb};
use futures::StreamExt;
use history_sink::service::{run, ServiceConfig, ServiceStats};
use history_sink::{HistoryEvent, HistorySink, KafkaSink, KafkaSinkConfig};

fn events(n: usize) -> Vec<HistoryEvent> {
    (0..n)
        .map(|i| {
            HistoryEvent::inpaint(format!("user-{}", i % 101))
                .with_images(
                    Some(format!("file:///var/lib/partialconv/images/{i:064x}.png")),
                    Some(format!(
                        "file:///var/lib/partialconv/images/{:064x}.png",
                        i + 1
                    )),
                    Some(format!(
                        "file:///var/lib/partialconv/images/{:064x}.png",
                        i + 2
                    )),
                )
                .with_dimensions(512, 512)
                .with_hole_ratio(0.2)
                .with_model("pconv-unet", "1.0.0")
                .with_strategy("whole")
                .with_device("cpu")
                .with_latency_ms(40)
        })
        .collect()
}

async fn produce(sink: &Arc<KafkaSink>, evs: Vec<HistoryEvent>) -> Duration {
    let start = Instant::now();
    futures::stream::iter(evs)
        .for_each_concurrent(1000, |ev| {
            let sink = sink.clone();
            async move { sink.record(&ev).await.expect("record") }
        })
        .await;
    start.elapsed()
}

async fn wait_rows(db: &TestDb, n: i64) {
    let got = db
        .wait_count(
            "SELECT COUNT(*) FROM history_events",
            n,
            Duration::from_secs(600),
        )
        .await;
    assert_eq!(got, n, "rows");
}

fn service(
    brokers: &str,
    db: &TestDb,
    group: &str,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let cfg = ServiceConfig::new(brokers, "image-history", group, db.url());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let h = tokio::spawn(async move {
        run(cfg, Arc::new(ServiceStats::default()), async {
            let _ = rx.await;
        })
        .await
        .expect("service");
    });
    (tx, h)
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a list
    }
    let n: usize = std::env::var("HISTORY_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let tansu = Tansu::start(Storage::Memory).await;
    let spool = tempfile::tempdir().unwrap();
    let cfg = KafkaSinkConfig::new(tansu.brokers(), spool.path());
    let sink = Arc::new(KafkaSink::new(cfg).await.unwrap());

    // 1. Producer: `record` returns once the event is fsynced in the spool; the outbox then
    // delivers it to the broker.
    let start = Instant::now();
    let t = produce(&sink, events(n)).await;
    println!(
        "producer: {n} events spooled in {:.2} s = {:.0} events/s",
        t.as_secs_f64(),
        n as f64 / t.as_secs_f64()
    );
    sink.flush_timeout(Duration::from_secs(600)).await.unwrap();
    let t = start.elapsed();
    println!(
        "producer: {n} events acknowledged by the broker {:.2} s after the first record = {:.0} events/s",
        t.as_secs_f64(),
        n as f64 / t.as_secs_f64()
    );

    // 2. Consumer → MySQL, draining the backlog.
    let db = TestDb::new().await;
    let start = Instant::now();
    let (stop, h) = service(&tansu.brokers(), &db, "bench-drain");
    wait_rows(&db, n as i64).await;
    let t = start.elapsed();
    println!(
        "consumer→MySQL: {n} rows in {:.2} s = {:.0} rows/s (includes start-up and group join)",
        t.as_secs_f64(),
        n as f64 / t.as_secs_f64()
    );
    let _ = stop.send(());
    h.await.unwrap();

    // 3. End to end, service already running.
    let db2 = TestDb::new().await;
    let (stop, h) = service(&tansu.brokers(), &db2, "bench-e2e");
    // Let the group join and catch up on the backlog into db2 first.
    wait_rows(&db2, n as i64).await;
    let start = Instant::now();
    let tp = produce(&sink, events(n)).await;
    wait_rows(&db2, 2 * n as i64).await;
    let t = start.elapsed();
    println!(
        "end to end: {n} events produced in {:.2} s and stored in {:.2} s = {:.0} events/s",
        tp.as_secs_f64(),
        t.as_secs_f64(),
        n as f64 / t.as_secs_f64()
    );
    let _ = stop.send(());
    h.await.unwrap();
}
