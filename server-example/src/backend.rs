//! Where inference runs: this process's worker pool, or another `server-example` reached over
//! HTTP (`--remote-model`), so the web tier and the model tier scale apart.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use axum::http::StatusCode;
use bytes::Bytes;
use tokio::sync::Semaphore;

use crate::codec::{transcode, OutputFormat};
use crate::error::AppError;
use crate::pool::{JobInput, JobOutput, ModelInfo, Pool};

/// Where this server's inference runs.
pub enum Backend {
    /// In this process, on the worker pool.
    Local(Pool),
    // Boxed: the client and its cached model description dwarf the pool's handle.
    /// On another `server-example` (`--remote-model`).
    Remote(Box<Remote>),
}

impl Backend {
    /// Runs one job and waits for its result, bounded like the local queue (503 when full).
    pub async fn infer(&self, input: JobInput) -> Result<JobOutput, AppError> {
        match self {
            // The ticket lives in this future: if the client goes away the future is
            // dropped, and with it the queued job.
            Backend::Local(pool) => Ok(pool.submit(input)?.wait().await?),
            Backend::Remote(remote) => remote.infer(input).await,
        }
    }

    /// (queue depth, queue capacity, workers)
    pub fn load(&self) -> (usize, usize, usize) {
        match self {
            Backend::Local(p) => (p.depth(), p.capacity(), p.workers()),
            Backend::Remote(r) => (r.waiting.load(Ordering::Relaxed), r.queue, r.concurrency),
        }
    }

    /// The model's identity for history events; cached for a remote tier.
    pub async fn model_info(&self) -> Option<ModelInfo> {
        match self {
            Backend::Local(pool) => pool.readiness().ok(),
            Backend::Remote(remote) => {
                if let Some(info) = remote.info.get() {
                    return Some(info.clone());
                }
                let info = remote.readiness().await.ok()?;
                Some(remote.info.get_or_init(|| info).clone())
            }
        }
    }

    /// The model's identity once it can serve; 503 `not_ready` while it loads or after it failed.
    pub async fn readiness(&self) -> Result<ModelInfo, AppError> {
        match self {
            Backend::Local(pool) => pool.readiness().map_err(|e| {
                AppError::NotReady(e.unwrap_or_else(|| "the model is loading".to_owned()))
            }),
            Backend::Remote(remote) => remote.readiness().await,
        }
    }
}

/// A client of another server's `/api/v1/inpaint`, with the same bounds as the local pool:
/// at most `concurrency` requests in flight and `queue` waiting, 503 beyond.
pub struct Remote {
    client: reqwest::Client,
    base: String,
    /// `--remote-model-token`: a service token of the model tier, which then acts for the
    /// user each request names.
    token: Option<String>,
    permits: Semaphore,
    concurrency: usize,
    queue: usize,
    waiting: AtomicUsize,
    timeout_secs: u64,
    info: OnceLock<ModelInfo>,
}

struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

impl Remote {
    /// A client of the model tier at `base`, with `concurrency` requests in flight and `queue`
    /// waiting at most, each given up after `timeout`.
    pub fn new(
        base: &str,
        token: Option<String>,
        concurrency: usize,
        queue: usize,
        timeout: Duration,
    ) -> Self {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .expect("HTTP client without TLS builds");
        Self {
            client,
            base: base.trim_end_matches('/').to_owned(),
            token,
            permits: Semaphore::new(concurrency.max(1)),
            concurrency: concurrency.max(1),
            queue,
            waiting: AtomicUsize::new(0),
            timeout_secs: timeout.as_secs(),
            info: OnceLock::new(),
        }
    }

    async fn infer(&self, input: JobInput) -> Result<JobOutput, AppError> {
        if self.waiting.fetch_add(1, Ordering::Relaxed) >= self.concurrency + self.queue {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(AppError::Overloaded);
        }
        let _waiting = Waiting(&self.waiting);
        let _permit = self.permits.acquire().await.map_err(AppError::internal)?;
        // A lossy result's master comes from the model tier as the PNG, and the download
        // is made from it here, so that one inference gives both.
        let via_master = input.master && input.format.is_lossy();
        let asked = if via_master {
            OutputFormat::Png
        } else {
            input.format
        };
        let mut form = reqwest::multipart::Form::new()
            .part("image", reqwest::multipart::Part::stream(input.image))
            .part("mask", reqwest::multipart::Part::stream(input.mask))
            .text("strategy", input.strategy.to_string())
            .text("mask_grow", input.mask_grow.to_string())
            .text("format", asked.as_str())
            .text("keep_gps", input.keep_gps.to_string())
            .text("model", input.model.to_string());
        if let Some(ensemble) = input.ensemble {
            form = form.text("ensemble", ensemble.name());
        }
        if let Some(parent) = input.parent_event_id {
            form = form.text("parent_event_id", parent.to_string());
        }
        let url = format!("{}/api/v1/inpaint", self.base);
        let mut request = self
            .client
            .post(&url)
            // The model tier keeps no history: the web tier records the event.
            .header("X-Partialconv-No-History", "1");
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
            if let Some(user) = &input.user {
                request = request.header(crate::auth::ACT_FOR_HEADER, user);
            }
        }
        let response = request
            .multipart(form)
            .send()
            .await
            .map_err(|e| self.unreachable(&url, e))?;
        let status = response.status();
        // The model tier refusing this server is the operator's to fix, not the client's:
        // a 401 passed on would tell the client its own credentials are wrong.
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(AppError::Remote {
                status: StatusCode::BAD_GATEWAY,
                code: "remote_unauthorized".to_owned(),
                message: "the model tier refused this server's credentials (--remote-model-token)"
                    .to_owned(),
            });
        }
        if !status.is_success() {
            let body: serde_json::Value = response.json_or_default().await;
            let field = |k: &str| body.get(k).and_then(|v| v.as_str()).map(str::to_owned);
            return Err(AppError::Remote {
                status: StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY),
                code: field("code").unwrap_or_else(|| "remote_error".to_owned()),
                message: field("error").unwrap_or_else(|| format!("model tier answered {status}")),
            });
        }
        let num = |r: &reqwest::Response, name: &str| {
            header(r, name)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let (w, h) = input.dimensions;
        let ensemble = header(&response, "x-ensemble")
            .and_then(|e| e.parse().ok())
            .unwrap_or_default();
        let out = JobOutput {
            bytes: Bytes::new(),
            content_type: input.format.content_type(),
            master: None,
            ensemble,
            width: w,
            height: h,
            hole_ratio: num(&response, "x-hole-ratio"),
            strategy: header(&response, "x-strategy")
                .unwrap_or("unknown")
                .to_owned(),
            inference_ms: num(&response, "x-inference-ms"),
            decode_ms: num(&response, "x-decode-ms"),
            encode_ms: num(&response, "x-encode-ms"),
            batch_size: num(&response, "x-batch-size") as usize,
        };
        let bytes = response
            .bytes()
            .await
            .map_err(|e| self.unreachable(&url, e))?;
        if !via_master {
            return Ok(JobOutput { bytes, ..out });
        }
        let master = bytes.clone();
        let format = input.format;
        let download = tokio::task::spawn_blocking(move || transcode(&master, format))
            .await
            .map_err(AppError::internal)?
            .map_err(AppError::internal)?;
        Ok(JobOutput {
            bytes: download.into(),
            master: Some(bytes),
            ..out
        })
    }

    fn unreachable(&self, url: &str, e: reqwest::Error) -> AppError {
        if e.is_timeout() {
            return AppError::Timeout(self.timeout_secs);
        }
        AppError::Remote {
            status: StatusCode::BAD_GATEWAY,
            code: "remote_unavailable".to_owned(),
            message: format!("model tier {url} unreachable: {e}"),
        }
    }

    async fn readiness(&self) -> Result<ModelInfo, AppError> {
        let url = format!("{}/readyz", self.base);
        let r = self
            .client
            .get(&url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_err(|e| AppError::NotReady(format!("model tier {url}: {e}")))?;
        if !r.status().is_success() {
            return Err(AppError::NotReady(format!(
                "model tier {url} answered {}",
                r.status()
            )));
        }
        let body: serde_json::Value = r.json_or_default().await;
        let model = body.get("model").cloned().unwrap_or_default();
        let field = |k: &str| {
            model
                .get(k)
                .and_then(|v| v.as_str())
                .unwrap_or("remote")
                .to_owned()
        };
        Ok(ModelInfo {
            model_id: field("model_id"),
            model_version: field("model_version"),
            device: field("device"),
            ensemble: field("ensemble"),
            precision: field("precision"),
            config: model.get("config").cloned().unwrap_or_default(),
        })
    }
}

trait JsonOrDefault {
    async fn json_or_default(self) -> serde_json::Value;
}

impl JsonOrDefault for reqwest::Response {
    /// reqwest's `json()` needs its `json` feature; parsing the bytes ourselves avoids it.
    async fn json_or_default(self) -> serde_json::Value {
        match self.bytes().await {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_default(),
            Err(_) => serde_json::Value::Null,
        }
    }
}
