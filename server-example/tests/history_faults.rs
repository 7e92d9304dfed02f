//! History through the processes an operator runs, with faults injected: the
//! `server-example` binary, tansu on durable `sqlite://` storage, the `history-service`
//! binary and MariaDB. Kill the broker, the server or the database; every accepted request
//! still ends up as exactly one history row.
//!
//! The tests run one at a time: the broker test compares request latencies, which other
//! tests' servers on the same two cores would disturb.
#![cfg(all(feature = "kafka", feature = "mysql"))]

mod common;
#[path = "../../history-sink/tests/common/mod.rs"]
mod services;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::process::{Process, Server};
use common::{metric, tiny_model};
use services::{free_port, skip_services, Storage, Tansu, TestDb};
use sqlx::{Connection, MySqlConnection};

/// Serialises the tests of this file (see the module documentation).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const TOPIC: &str = "image-history";

/// `history-service`, built by the same `cargo test --workspace` next to this test.
fn history_service_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("history-service");
    assert!(
        bin.is_file(),
        "{} not found: build it with `cargo build -p history-sink --features service` (or run \
         `cargo test --workspace --all-features`)",
        bin.display()
    );
    bin
}

impl Server {
    /// Waits until `/readyz` reports the sink as spooling (a delivery attempt has failed).
    async fn wait_spooling(&self) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let body = self.readyz().await.expect("ready during the outage");
            if body["history"]["sinks"][0]["status"] == "spooling" {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "readyz never said the sink was spooling: {body}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The `history-service` binary: Kafka consumer group into MySQL.
struct HistoryService(Process);

impl HistoryService {
    fn start(brokers: &str, mysql: &str, log: &Path) -> Self {
        let log = std::fs::File::create(log).unwrap();
        let child = Command::new(history_service_binary())
            .args(["--brokers", brokers, "--topic", TOPIC, "--mysql", mysql])
            .args(["--group", &format!("faults-{:08x}", rand::random::<u32>())])
            .args(["--retry-max-ms", "500"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut process = Process::default();
        process.start(child);
        Self(process)
    }

    fn assert_running(&mut self) {
        self.0.assert_running("history-service");
    }
}

/// A MariaDB server of the test's own, on its own port and data folder, that it can kill.
struct OwnMariaDb {
    port: u16,
    dir: tempfile::TempDir,
    child: Process,
}

impl OwnMariaDb {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        // --no-defaults first: the system's my.cnf names another user and data folder.
        let out = Command::new("mariadb-install-db")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", dir.path().join("data").display()))
            .args(["--user=root", "--auth-root-authentication-method=normal"])
            .args(["--skip-test-db", "--skip-name-resolve"])
            .output()
            .expect("mariadb-install-db (Debian's mariadb-server) is needed");
        assert!(
            out.status.success(),
            "mariadb-install-db failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut db = Self {
            port: free_port(),
            dir,
            child: Process::default(),
        };
        db.restart().await;
        let mut conn = MySqlConnection::connect(&db.base_url()).await.unwrap();
        sqlx::raw_sql("CREATE DATABASE history")
            .execute(&mut conn)
            .await
            .unwrap();
        db
    }

    fn base_url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}", self.port)
    }

    fn url(&self) -> String {
        format!("{}/history", self.base_url())
    }

    async fn restart(&mut self) {
        let d = self.dir.path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("mariadbd.log"))
            .unwrap();
        let child = Command::new("/usr/sbin/mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", d.join("data").display()))
            .arg(format!("--socket={}", d.join("mysqld.sock").display()))
            .arg(format!("--pid-file={}", d.join("mysqld.pid").display()))
            .arg(format!("--port={}", self.port))
            .args([
                "--bind-address=127.0.0.1",
                "--user=root",
                "--skip-grant-tables",
            ])
            .args(["--skip-log-bin", "--innodb-buffer-pool-size=32M"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child.start(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while MySqlConnection::connect(&self.base_url()).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "MariaDB on {} not up after 60 s:\n{}",
                self.port,
                std::fs::read_to_string(d.join("mariadbd.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL, mid-whatever.
    fn kill(&mut self) {
        self.child.kill();
    }
}

/// Event ids in `history_events` at `url`; empty while the database or table is missing.
async fn stored_ids(url: &str) -> Vec<uuid::Uuid> {
    let Ok(mut conn) = MySqlConnection::connect(url).await else {
        return Vec::new();
    };
    let rows: Vec<Vec<u8>> = sqlx::query_scalar("SELECT event_id FROM history_events")
        .fetch_all(&mut conn)
        .await
        .unwrap_or_default();
    rows.iter()
        .map(|b| uuid::Uuid::from_slice(b).unwrap())
        .collect()
}

/// The logs of the Kafka → MySQL path: the history service's (`DATA/hs.log`) and the broker's.
fn pipeline_logs(data: &Path, tansu: &Tansu) -> [PathBuf; 2] {
    [data.join("hs.log"), tansu.dir.path().join("tansu.log")]
}

/// The last `n` lines of a log file, for a failure message.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Waits until `url` holds a row for every id in `want`, then checks that it holds exactly
/// those rows, once each. On failure the message ends with the tails of `logs` (the
/// history service's, the broker's), which the test harness would not show otherwise.
async fn assert_exactly_once(
    url: &str,
    want: &HashSet<uuid::Uuid>,
    timeout: Duration,
    logs: &[PathBuf],
) {
    let deadline = Instant::now() + timeout;
    let mut rows = stored_ids(url).await;
    while rows.len() < want.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        rows = stored_ids(url).await;
    }
    // A moment more, so that a duplicate on its way would show.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rows = stored_ids(url).await;
    let distinct: HashSet<uuid::Uuid> = rows.iter().copied().collect();
    assert_eq!(distinct.len(), rows.len(), "an event was stored twice");
    let missing: Vec<_> = want.difference(&distinct).collect();
    assert!(
        missing.is_empty(),
        "{} of {} events never arrived: {missing:?}\n{}",
        missing.len(),
        want.len(),
        logs.iter()
            .map(|p| format!("--- {}:\n{}", p.display(), tail(p, 60)))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(&distinct, want, "rows that no request made");
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_loses_nothing_and_slows_nothing() {
    if skip_services("a_broker_outage_loses_nothing_and_slows_nothing") {
        return;
    }
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut tansu = Tansu::start(Storage::Sqlite).await;
    let db = TestDb::new().await;
    let data = tempfile::tempdir().unwrap();
    let kafka = format!("kafka://{}/{TOPIC}", tansu.brokers());
    let server = Server::start(data.path(), &["--history", &kafka]).await;
    let mut service =
        HistoryService::start(&tansu.brokers(), &db.url(), &data.path().join("hs.log"));

    let mut ids = HashSet::new();
    ids.insert(server.inpaint("warm-up").await.0);
    let mut up = Vec::new();
    for i in 0..10 {
        let (id, took) = server.inpaint(&format!("user-{i}")).await;
        ids.insert(id);
        up.push(took);
    }
    tansu.kill();
    let mut down = Vec::new();
    for i in 0..10 {
        let (id, took) = server.inpaint(&format!("user-{i}")).await;
        ids.insert(id);
        down.push(took);
    }
    let ready = server.wait_spooling().await;
    let sink = &ready["history"]["sinks"][0];
    assert_eq!(sink["sink"], "kafka");
    assert!(
        sink["message"]
            .as_str()
            .unwrap()
            .contains("delivered when it is back"),
        "{ready}"
    );
    assert!(sink["pending_events"].as_u64().unwrap() >= 10, "{ready}");
    let text = server.metrics().await;
    assert!(
        metric(&text, "history_spool_events{sink=\"kafka\"}") >= 10.0,
        "{text}"
    );
    assert!(metric(&text, "history_delivery_failures_total{sink=\"kafka\"}") >= 1.0);
    assert!(metric(&text, "history_spool_oldest_age_seconds{sink=\"kafka\"}") > 0.0);
    assert_eq!(metric(&text, "history_delivery_up{sink=\"kafka\"}"), 0.0);

    tansu.restart().await;
    assert_exactly_once(
        &db.url(),
        &ids,
        Duration::from_secs(120),
        &pipeline_logs(data.path(), &tansu),
    )
    .await;
    service.assert_running();
    let text = server.metrics().await;
    assert_eq!(
        metric(&text, "history_spool_events{sink=\"kafka\"}"),
        0.0,
        "{text}"
    );
    assert_eq!(metric(&text, "history_delivery_up{sink=\"kafka\"}"), 1.0);

    let (up, down) = (median(up), median(down));
    eprintln!("median request latency: {up:?} with the broker up, {down:?} with it down");
    assert!(
        down <= up + Duration::from_millis(500),
        "median latency {down:?} with the broker down against {up:?} with it up"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_delivers_its_spool_when_restarted() {
    if skip_services("a_killed_server_delivers_its_spool_when_restarted") {
        return;
    }
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut tansu = Tansu::start(Storage::Sqlite).await;
    let db = TestDb::new().await;
    let data = tempfile::tempdir().unwrap();
    let kafka = format!("kafka://{}/{TOPIC}", tansu.brokers());
    let mut server = Server::start(data.path(), &["--history", &kafka]).await;
    let _service = HistoryService::start(&tansu.brokers(), &db.url(), &data.path().join("hs.log"));

    let mut ids = HashSet::new();
    ids.insert(server.inpaint("before").await.0);
    tansu.kill();
    for i in 0..8 {
        ids.insert(server.inpaint(&format!("user-{i}")).await.0);
    }
    let ready = server.readyz().await.unwrap();
    assert!(
        ready["history"]["sinks"][0]["pending_events"]
            .as_u64()
            .unwrap()
            >= 8,
        "{ready}"
    );
    // The spool is under the data dir, not the working directory.
    assert!(data.path().join("history-spool").is_dir());
    server.kill();

    tansu.restart().await;
    server.restart().await;
    assert_exactly_once(
        &db.url(),
        &ids,
        Duration::from_secs(120),
        &pipeline_logs(data.path(), &tansu),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mysql_outage_under_history_service_loses_nothing() {
    if skip_services("a_mysql_outage_under_history_service_loses_nothing") {
        return;
    }
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut mysql = OwnMariaDb::start().await;
    let tansu = Tansu::start(Storage::Sqlite).await;
    let data = tempfile::tempdir().unwrap();
    let kafka = format!("kafka://{}/{TOPIC}", tansu.brokers());
    let server = Server::start(data.path(), &["--history", &kafka]).await;
    let mut service =
        HistoryService::start(&tansu.brokers(), &mysql.url(), &data.path().join("hs.log"));

    let mut ids = HashSet::new();
    for i in 0..10 {
        ids.insert(server.inpaint(&format!("user-{i}")).await.0);
    }
    assert_exactly_once(
        &mysql.url(),
        &ids,
        Duration::from_secs(60),
        &pipeline_logs(data.path(), &tansu),
    )
    .await;
    mysql.kill();
    for i in 0..10 {
        ids.insert(server.inpaint(&format!("user-{i}")).await.0);
    }
    // Longer than a connection attempt may wait (10 s), so writes fail and are retried, and
    // a crash-looping service would show.
    tokio::time::sleep(Duration::from_secs(15)).await;
    service.assert_running();
    mysql.restart().await;
    assert_exactly_once(
        &mysql.url(),
        &ids,
        Duration::from_secs(90),
        &pipeline_logs(data.path(), &tansu),
    )
    .await;
    service.assert_running();
    let log = std::fs::read_to_string(data.path().join("hs.log")).unwrap();
    assert!(log.contains("MySQL write failed; retrying"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mysql_history_outage_loses_nothing() {
    if skip_services("a_mysql_history_outage_loses_nothing") {
        return;
    }
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut mysql = OwnMariaDb::start().await;
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &["--history", &mysql.url()]).await;

    let mut ids = HashSet::new();
    for i in 0..5 {
        ids.insert(server.inpaint(&format!("user-{i}")).await.0);
    }
    assert_exactly_once(&mysql.url(), &ids, Duration::from_secs(60), &[]).await;
    mysql.kill();
    for i in 0..10 {
        ids.insert(server.inpaint(&format!("user-{i}")).await.0);
    }
    let ready = server.wait_spooling().await;
    assert_eq!(ready["history"]["sinks"][0]["sink"], "mysql", "{ready}");
    // History reads need the database; they fail with an error that says so.
    let r = server
        .client
        .get(format!("{}/api/v1/history?user_id=user-1", server.url))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_server_error(), "{}", r.status());
    mysql.restart().await;
    assert_exactly_once(&mysql.url(), &ids, Duration::from_secs(90), &[]).await;
    let page: serde_json::Value = server
        .client
        .get(format!("{}/api/v1/history?user_id=user-1", server.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["events"].as_array().map(Vec::len), Some(2), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_drops_and_counts_and_keeps_serving() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let data = tempfile::tempdir().unwrap();
    // Nothing listens on port 1: every event stays in the spool, which holds about six.
    let server = Server::start(
        data.path(),
        &[
            "--history",
            "kafka://127.0.0.1:1/t",
            "--history-spool-max-mb",
            "0.004",
        ],
    )
    .await;
    for i in 0..15 {
        server.inpaint(&format!("user-{i}")).await;
    }
    let text = server.metrics().await;
    let dropped = metric(&text, "history_dropped_total{sink=\"kafka\"}");
    let spooled = metric(&text, "history_spool_events{sink=\"kafka\"}");
    assert!(dropped >= 1.0 && spooled >= 1.0, "{text}");
    assert_eq!(dropped + spooled, 15.0, "{text}");
    assert!(metric(&text, "history_spool_bytes{sink=\"kafka\"}") <= 0.004 * 1024.0 * 1024.0);
    assert_eq!(metric(&text, "history_record_failures_total"), dropped);
    let ready = server.readyz().await.expect("still ready");
    assert_eq!(
        ready["history"]["sinks"][0]["dropped"], dropped as u64,
        "{ready}"
    );

    // A second server on the same data dir would share the spool; it refuses to start.
    let out = Command::new(env!("CARGO_BIN_EXE_server-example"))
        .args(["--bind", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .arg("--model")
        .arg(tiny_model())
        .args(["--history", "kafka://127.0.0.1:1/t"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("is in use by another process"), "{stderr}");
}
