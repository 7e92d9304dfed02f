//! Test servers on real sockets (127.0.0.1:0), a tiny model, and image helpers.
#![allow(dead_code)] // each test binary uses a different part

use std::io::Cursor;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use clap::Parser;
use image::{DynamicImage, GrayImage, ImageFormat, Luma, Rgb, RgbImage};
use partialconv::{Model, ModelMeta, PConvUNetConfig, Storage};
use server_example::{app, AppState, Config};

/// A random 4-level, width-4 network: fast on any CPU, and its output differs from its input,
/// which is all these tests need (they must not depend on the bundled model's quality).
pub fn tiny_model() -> &'static Path {
    static MODEL: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &MODEL
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("tiny.safetensors");
            let config = PConvUNetConfig {
                layer_size: 4,
                width: 4,
                ..Default::default()
            };
            Model::new(ModelMeta::new(config), tch::Device::Cpu)
                .unwrap()
                .save(&path, Storage::F32)
                .unwrap();
            (dir, path)
        })
        .1
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub url: String,
    pub state: AppState,
    /// Shared, so that a second server can start on the same data (a restart).
    pub data_dir: Arc<tempfile::TempDir>,
    pub client: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for TestServer {
    /// Graceful, so idle keep-alive connections close too and the server is really gone.
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Starts a server with the tiny model, SQLite history and an image directory in a fresh
/// temporary data dir, plus `args`; waits until `/readyz` says the model is loaded.
pub async fn start(args: &[&str]) -> TestServer {
    start_with(args, |_| {}).await
}

pub async fn start_with(args: &[&str], edit: impl FnOnce(&mut AppState)) -> TestServer {
    start_in(Arc::new(tempfile::tempdir().unwrap()), args, edit).await
}

/// A server on an existing data dir: what a restart looks like.
pub async fn start_in(
    data_dir: Arc<tempfile::TempDir>,
    args: &[&str],
    edit: impl FnOnce(&mut AppState),
) -> TestServer {
    let mut argv: Vec<String> = vec![
        "server-example".into(),
        "--data-dir".into(),
        data_dir.path().display().to_string(),
    ];
    if !args.contains(&"--remote-model") && !args.contains(&"--model") {
        argv.extend(["--model".into(), tiny_model().display().to_string()]);
    }
    // `--no-wait` is ours, not the server's: return before the model is loaded.
    argv.extend(
        args.iter()
            .filter(|a| **a != "--no-wait")
            .map(|s| s.to_string()),
    );
    let cfg = Config::parse_from(argv);
    let mut state = AppState::from_config(&cfg).await.unwrap();
    edit(&mut state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // As `main` serves it: with the peer's address, which --trusted-proxy and the rate
    // limit read.
    let router = app(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    let server = TestServer {
        addr,
        url: format!("http://{addr}"),
        state,
        data_dir,
        client: reqwest::Client::new(),
        stop: Some(stop),
    };
    if !args.contains(&"--no-wait") {
        server.wait_ready().await;
    }
    server
}

impl TestServer {
    /// Stops as `main` does on SIGTERM: the training thread saves a checkpoint of a running
    /// job and exits, then the server stops accepting requests.
    pub async fn stop(mut self) {
        if let Some(jobs) = &self.state.finetune {
            jobs.shutdown().await;
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = self.client.get(format!("{}/readyz", self.url)).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "server not ready after 60 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap()
    }

    pub async fn inpaint(&self, form: reqwest::multipart::Form) -> reqwest::Response {
        self.client
            .post(format!("{}/api/v1/inpaint", self.url))
            .multipart(form)
            .send()
            .await
            .unwrap()
    }

    pub async fn metrics(&self) -> String {
        self.get("/metrics").await.text().await.unwrap()
    }
}

/// A metric's value from Prometheus text, 0 when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// The JSON error body, checked for its shape: `{error, code}`.
pub async fn error_code(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = r.text().await.unwrap();
    assert!(
        ct.starts_with("application/json"),
        "{status}: content type {ct:?}, body {body}"
    );
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{body}");
    (status, v["code"].as_str().unwrap().to_owned())
}

/// A textured picture, so a fill never equals the original by chance.
pub fn picture(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        Rgb([
            (x * 255 / w.max(1)) as u8,
            (y * 255 / h.max(1)) as u8,
            ((x * 7 + y * 13) % 256) as u8,
        ])
    })
}

/// White (hole) inside the rectangle.
pub fn rect_mask(w: u32, h: u32, (x0, y0, x1, y1): (u32, u32, u32, u32)) -> GrayImage {
    GrayImage::from_fn(w, h, |x, y| {
        Luma([if x >= x0 && x < x1 && y >= y0 && y < y1 {
            255
        } else {
            0
        }])
    })
}

pub fn encode(img: impl Into<DynamicImage>, format: ImageFormat) -> Vec<u8> {
    let mut buf = Vec::new();
    img.into()
        .write_to(&mut Cursor::new(&mut buf), format)
        .unwrap();
    buf
}

pub fn png(img: impl Into<DynamicImage>) -> Vec<u8> {
    encode(img, ImageFormat::Png)
}

pub fn form(image: Vec<u8>, mask: Vec<u8>) -> reqwest::multipart::Form {
    reqwest::multipart::Form::new()
        .part(
            "image",
            reqwest::multipart::Part::bytes(image).file_name("image"),
        )
        .part(
            "mask",
            reqwest::multipart::Part::bytes(mask).file_name("mask"),
        )
}

/// A 64×48 picture with a 16×16 hole, as (image PNG, mask PNG).
pub fn small_pair() -> (Vec<u8>, Vec<u8>) {
    (
        png(picture(64, 48)),
        png(rect_mask(64, 48, (20, 16, 36, 32))),
    )
}

pub fn decode(bytes: &[u8]) -> RgbImage {
    image::load_from_memory(bytes).unwrap().to_rgb8()
}
