//! Real components for the integration tests: MariaDB databases, tansu brokers, a TCP proxy.
//!
//! Environment:
//! - `HISTORY_TEST_MYSQL` (default `mysql://root@127.0.0.1:3306`): server for throwaway
//!   databases (`hs_test_<random>`, dropped afterwards);
//! - `HISTORY_TEST_TANSU` (default: `tansu` on `PATH`, else
//!   `~/.cache/partialconv/tools/bin/tansu`): the broker binary; each test starts its own;
//! - `HISTORY_TEST_SKIP_SERVICES=1`: skip tests that need MariaDB or tansu. Without it a
//!   missing service FAILS the test.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::{Connection, MySqlConnection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// True when the caller asked to skip service-backed tests.
pub fn skip_services(test: &str) -> bool {
    let skip = std::env::var("HISTORY_TEST_SKIP_SERVICES").is_ok_and(|v| v == "1");
    if skip {
        eprintln!("SKIPPED {test}: HISTORY_TEST_SKIP_SERVICES=1");
    }
    skip
}

/// Logs to stderr once (RUST_LOG controls the level; default warn).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,history_sink=info".into()),
        )
        .with_test_writer()
        .with_ansi(false)
        .try_init();
}

pub fn mysql_base() -> String {
    std::env::var("HISTORY_TEST_MYSQL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into())
        .trim_end_matches('/')
        .to_owned()
}

/// A throwaway MariaDB database, dropped on `Drop`.
pub struct TestDb {
    pub name: String,
    base: String,
}

impl TestDb {
    pub async fn new() -> Self {
        let base = mysql_base();
        let name = format!("hs_test_{:016x}", rand::random::<u64>());
        let mut conn = MySqlConnection::connect(&base).await.unwrap_or_else(|e| {
            panic!(
                "MariaDB not reachable at {base} ({e}). Start it, set HISTORY_TEST_MYSQL, or set \
                 HISTORY_TEST_SKIP_SERVICES=1 to skip"
            )
        });
        sqlx::raw_sql(&format!("CREATE DATABASE `{name}`"))
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        Self { name, base }
    }

    pub fn url(&self) -> String {
        format!("{}/{}", self.base, self.name)
    }

    /// The URL with the host/port replaced (to go through a proxy).
    pub fn url_via(&self, addr: SocketAddr) -> String {
        let mut u = url::Url::parse(&self.url()).unwrap();
        u.set_host(Some(&addr.ip().to_string())).unwrap();
        u.set_port(Some(addr.port())).unwrap();
        u.to_string()
    }

    pub async fn count(&self, sql: &str) -> i64 {
        let mut conn = MySqlConnection::connect(&self.url()).await.unwrap();
        let n: i64 = sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap();
        conn.close().await.unwrap();
        n
    }

    pub async fn event_count(&self) -> i64 {
        self.count("SELECT COUNT(*) FROM history_events").await
    }

    /// Polls `sql` until it returns at least `want` or `timeout` passes; returns the last
    /// value (callers assert the exact count).
    pub async fn wait_count(&self, sql: &str, want: i64, timeout: Duration) -> i64 {
        let start = Instant::now();
        loop {
            let n = match MySqlConnection::connect(&self.url()).await {
                Ok(mut c) => sqlx::query_scalar::<_, i64>(sql)
                    .fetch_one(&mut c)
                    .await
                    .unwrap_or(-1),
                Err(_) => -1,
            };
            if n >= want || start.elapsed() > timeout {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (base, name) = (self.base.clone(), self.name.clone());
        // Drop runs inside a runtime; use a fresh one on another thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut c) = MySqlConnection::connect(&base).await {
                    let _ = sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS `{name}`"))
                        .execute(&mut c)
                        .await;
                }
            })
        })
        .join();
    }
}

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn tansu_binary() -> PathBuf {
    if let Ok(p) = std::env::var("HISTORY_TEST_TANSU") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("tansu"))
            .find(|p| p.is_file())
    }) {
        return p;
    }
    let home = std::env::var("HOME").unwrap_or_default();
    PathBuf::from(home).join(".cache/partialconv/tools/bin/tansu")
}

/// Which tansu storage engine to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// `memory://tansu/`: fast, loses everything on restart.
    Memory,
    /// `sqlite://tansu.db` in the broker's directory: durable across restarts.
    Sqlite,
}

/// A tansu broker in its own directory and port; restartable on the same port.
pub struct Tansu {
    pub port: u16,
    pub dir: tempfile::TempDir,
    storage: Storage,
    child: Option<Child>,
}

impl Tansu {
    pub async fn start(storage: Storage) -> Self {
        let mut t = Self {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            storage,
            child: None,
        };
        t.restart().await;
        t
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the broker (again) and waits until it answers metadata requests.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "broker already running");
        let bin = tansu_binary();
        assert!(
            bin.is_file(),
            "tansu not found at {} — install it with `cargo install tansu --version 0.6.0 \
             --features dynostore,libsql --locked`, set HISTORY_TEST_TANSU, or set \
             HISTORY_TEST_SKIP_SERVICES=1 to skip",
            bin.display()
        );
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let engine = match self.storage {
            Storage::Memory => "memory://tansu/",
            Storage::Sqlite => "sqlite://tansu.db",
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("tansu.log"))
            .unwrap();
        let child = Command::new(&bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", engine])
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        self.child = Some(child);
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "tansu exited with {status}; log:\n{}",
                    std::fs::read_to_string(self.dir.path().join("tansu.log")).unwrap_or_default()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "tansu did not listen on {} within 30 s",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the broker abruptly (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tansu.log")).unwrap_or_default()
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP proxy the test can cut (closing every connection and refusing new ones) and restore.
pub struct Proxy {
    pub addr: SocketAddr,
    upstream: SocketAddr,
    up: Arc<AtomicBool>,
    generation: Arc<Mutex<u64>>,
    accept: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let p = Self {
            addr,
            upstream,
            up: Arc::new(AtomicBool::new(true)),
            generation: Arc::new(Mutex::new(0)),
            accept: Mutex::new(None),
        };
        p.spawn_accept(listener);
        p
    }

    fn spawn_accept(&self, listener: tokio::net::TcpListener) {
        let upstream = self.upstream;
        let up = self.up.clone();
        let generation = self.generation.clone();
        let gen_now = *generation.lock().unwrap();
        let h = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if !up.load(Ordering::SeqCst) {
                    continue;
                }
                let up = up.clone();
                let generation = generation.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let copy = tokio::io::copy_bidirectional(&mut client, &mut server);
                    tokio::pin!(copy);
                    loop {
                        tokio::select! {
                            _ = &mut copy => return,
                            () = tokio::time::sleep(Duration::from_millis(50)) => {
                                if !up.load(Ordering::SeqCst) || *generation.lock().unwrap() != gen_now {
                                    return; // dropping both sockets cuts the connection
                                }
                            }
                        }
                    }
                });
            }
        });
        *self.accept.lock().unwrap() = Some(h);
    }

    /// Closes every proxied connection and stops listening (new connections are refused).
    pub async fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        *self.generation.lock().unwrap() += 1;
        if let Some(h) = self.accept.lock().unwrap().take() {
            h.abort();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    /// Listens again on the same address.
    pub async fn restore(&self) {
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        self.up.store(true, Ordering::SeqCst);
        self.spawn_accept(listener);
    }
}

pub fn spool_dir(base: &Path) -> PathBuf {
    base.join("spool")
}

/// `moto_server`, the S3 stand-in, killed when dropped.
pub struct Moto(Option<Child>);

impl Drop for Moto {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `HISTORY_TEST_MOTO`, else `moto_server` on `PATH`, else the one `make services` installs.
pub fn moto_binary() -> PathBuf {
    if let Ok(p) = std::env::var("HISTORY_TEST_MOTO") {
        return p.into();
    }
    if let Some(p) = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("moto_server"))
            .find(|p| p.is_file())
    }) {
        return p;
    }
    PathBuf::from(std::env::var("HOME").unwrap_or_default())
        .join(".cache/partialconv/venv-moto/bin/moto_server")
}

/// `HISTORY_TEST_S3_ENDPOINT`, else a `moto_server` of the test's own on a free port.
pub async fn moto_endpoint() -> (String, Moto) {
    if let Ok(ep) = std::env::var("HISTORY_TEST_S3_ENDPOINT") {
        return (ep, Moto(None));
    }
    let bin = moto_binary();
    assert!(
        bin.is_file(),
        "moto_server not found at {} — `pip install 'moto[server]'`, set HISTORY_TEST_MOTO or \
         HISTORY_TEST_S3_ENDPOINT, or set HISTORY_TEST_SKIP_SERVICES=1 to skip",
        bin.display()
    );
    let port = free_port();
    let child = Command::new(&bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "moto_server did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (format!("http://127.0.0.1:{port}"), Moto(Some(child)))
}

/// Creates a bucket with a plain HTTP PUT (moto does not check signatures).
pub async fn create_bucket(endpoint: &str, bucket: &str) {
    let hostport = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let mut s = tokio::net::TcpStream::connect(hostport).await.unwrap();
    let req = format!(
        "PUT /{bucket} HTTP/1.1\r\nHost: {hostport}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "create bucket: {resp}");
}
