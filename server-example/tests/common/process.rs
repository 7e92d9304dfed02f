//! The `server-example` binary as an operator runs it: a process on a free port that a test
//! can kill with SIGKILL (no shutdown hook runs) and start again on the same data.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{form, small_pair, tiny_model};

/// A process the test starts, may kill and start again; killed when dropped.
#[derive(Default)]
pub struct Process(Option<Child>);

impl Process {
    pub fn start(&mut self, child: Child) {
        assert!(self.0.is_none(), "already running");
        self.0 = Some(child);
    }

    /// SIGKILL, then reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The process id, while it runs.
    pub fn id(&self) -> Option<u32> {
        self.0.as_ref().map(Child::id)
    }

    pub fn assert_running(&mut self, what: &str) {
        let exited = self.0.as_mut().map(|c| c.try_wait().unwrap());
        assert!(matches!(exited, Some(None)), "{what} is not running");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `server-example` binary on a data dir of its own, on a free port.
pub struct Server {
    pub child: Process,
    pub url: String,
    pub data_dir: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub client: reqwest::Client,
}

impl Server {
    /// Starts the binary with the tiny model, one forward pass per fill, and `args`.
    pub async fn start(data_dir: &Path, args: &[&str]) -> Self {
        Self::start_with_env(data_dir, args, &[]).await
    }

    /// As [`Self::start`], with environment variables (S3 credentials, say).
    pub async fn start_with_env(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut s = Self {
            child: Process::default(),
            url: String::new(),
            data_dir: data_dir.to_owned(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            client: reqwest::Client::new(),
        };
        s.restart().await;
        s
    }

    /// Starts the process (again, on the same data dir) and waits until it is ready.
    pub async fn restart(&mut self) {
        let mut command = Command::new(env!("CARGO_BIN_EXE_server-example"));
        command
            .args(["--bind", "127.0.0.1:0", "--data-dir"])
            .arg(&self.data_dir)
            .args(["--ensemble", "single"])
            .env("RUST_LOG", "warn,history_sink=info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        if !self.args.iter().any(|a| a == "--remote-model") {
            command.arg("--model").arg(tiny_model());
        }
        let mut child = command.args(&self.args).spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).unwrap();
            line
        })
        .await
        .unwrap();
        let addr = line
            .trim()
            .strip_prefix("server-example listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        self.url = addr.trim_end_matches('/').to_owned();
        self.child.start(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.readyz().await.is_none() {
            assert!(Instant::now() < deadline, "server not ready after 60 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn readyz(&self) -> Option<serde_json::Value> {
        let r = self
            .client
            .get(format!("{}/readyz", self.url))
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some(())?;
        r.json().await.ok()
    }

    /// One inpaint request: its event id and how long it took.
    pub async fn inpaint(&self, user: &str) -> (uuid::Uuid, Duration) {
        let (img, mask) = small_pair();
        let start = Instant::now();
        let r = self
            .client
            .post(format!("{}/api/v1/inpaint", self.url))
            .multipart(form(img, mask).text("user_id", user.to_owned()))
            .send()
            .await
            .unwrap();
        let took = start.elapsed();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        let id = r.headers()["x-event-id"].to_str().unwrap().parse().unwrap();
        r.bytes().await.unwrap();
        (id, took)
    }

    pub async fn metrics(&self) -> String {
        let r = self.client.get(format!("{}/metrics", self.url)).send();
        r.await.unwrap().text().await.unwrap()
    }

    /// The running process's id (a replica's name in job claims ends with it).
    pub fn child_id(&self) -> u32 {
        self.child.id().expect("the server runs")
    }

    /// SIGKILL: no shutdown hook runs.
    pub fn kill(&mut self) {
        self.child.kill();
    }
}
