//! Where inference runs: this process's worker pool, or another `server-example` reached over
//! HTTP (`--remote-model`), so the web tier and the model tier scale apart.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::http::StatusCode;
use bytes::Bytes;
use reqwest::header::HeaderMap;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

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

/// How often each model tier's `/readyz` is asked: a tier that went away is noticed within
/// about a second, for one small request per tier and second.
const POLL_EVERY: Duration = Duration::from_secs(1);

/// How long a model tier's `/readyz` may take to answer before the tier counts as down; short,
/// so that a hung tier delays neither the poll nor the web tier's own `/readyz` for long.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A client of other servers' `/api/v1/inpaint` (the model tiers), with the same bounds as the
/// local pool over all of them together: at most `concurrency` requests in flight and `queue`
/// waiting, 503 beyond. Requests go round-robin to the tiers whose `/readyz` answers; one that
/// fails to reach its tier is sent once more, to another.
pub struct Remote {
    client: reqwest::Client,
    /// Shared with the task that polls their `/readyz`.
    tiers: Arc<[Tier]>,
    /// Round-robin position over `tiers`.
    next: AtomicUsize,
    /// `--remote-model-token`: a service token of the model tier, which then acts for the
    /// user each request names.
    token: Option<String>,
    permits: Semaphore,
    concurrency: usize,
    queue: usize,
    waiting: AtomicUsize,
    timeout_secs: u64,
    info: OnceLock<ModelInfo>,
    poller: JoinHandle<()>,
}

impl Drop for Remote {
    /// The poller holds only the tiers and a client, so nothing else would end it.
    fn drop(&mut self) {
        self.poller.abort();
    }
}

/// One model tier: its base URL, and whether the last poll or request found it serving.
struct Tier {
    base: String,
    ready: AtomicBool,
}

impl Tier {
    // Only changes are logged, so that a tier that stays down doesn't fill the log.
    fn up(&self) {
        if !self.ready.swap(true, Ordering::Relaxed) {
            tracing::info!(tier = %self.base, "model tier is ready");
        }
    }

    fn down(&self, why: &str) {
        if self.ready.swap(false, Ordering::Relaxed) {
            tracing::warn!(tier = %self.base, "model tier marked down: {why}");
        }
    }
}

/// Why one attempt at a model tier failed.
enum Failed {
    /// The tier could not be reached, or said it can't serve now (502, 503): another may.
    Down(AppError),
    /// An answer about the request itself, or the whole request timed out: final.
    Final(AppError),
}

struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

impl Remote {
    /// A client of the model tiers at `bases`, with `concurrency` requests in flight and
    /// `queue` waiting at most over all of them, each given up after `timeout`. Starts the
    /// task that polls the tiers' readiness, so it must be called in a tokio runtime.
    pub fn new(
        bases: &[String],
        token: Option<String>,
        concurrency: usize,
        queue: usize,
        timeout: Duration,
    ) -> Self {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .expect("HTTP client without TLS builds");
        let tiers: Arc<[Tier]> = bases
            .iter()
            .map(|b| Tier {
                base: b.trim_end_matches('/').to_owned(),
                ready: AtomicBool::new(false),
            })
            .collect();
        let poller = tokio::spawn(poll(client.clone(), tiers.clone()));
        Self {
            client,
            tiers,
            next: AtomicUsize::new(0),
            token,
            permits: Semaphore::new(concurrency.max(1)),
            concurrency: concurrency.max(1),
            queue,
            waiting: AtomicUsize::new(0),
            timeout_secs: timeout.as_secs(),
            info: OnceLock::new(),
            poller,
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
        let first = self
            .pick(None)
            .ok_or_else(|| AppError::NotReady("no model tier is configured".to_owned()))?;
        // Sending the request again is safe: inference is idempotent, and the model tier
        // records no history (`X-Partialconv-No-History`); this tier records the event once,
        // after the answer.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(self.timeout_secs);
        let (headers, bytes) = match self.attempt(first, &input, asked, deadline).await {
            Ok(answer) => answer,
            Err(Failed::Final(e)) => return Err(e),
            Err(Failed::Down(e)) => match self.pick(Some(first)) {
                None => return Err(e),
                Some(second) => match self.attempt(second, &input, asked, deadline).await {
                    Ok(answer) => answer,
                    Err(Failed::Down(e) | Failed::Final(e)) => return Err(e),
                },
            },
        };
        let num = |name: &str| {
            header(&headers, name)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let (w, h) = input.dimensions;
        let ensemble = header(&headers, "x-ensemble")
            .and_then(|e| e.parse().ok())
            .unwrap_or_default();
        let out = JobOutput {
            bytes: Bytes::new(),
            content_type: input.format.content_type(),
            master: None,
            ensemble,
            width: w,
            height: h,
            hole_ratio: num("x-hole-ratio"),
            strategy: header(&headers, "x-strategy")
                .unwrap_or("unknown")
                .to_owned(),
            inference_ms: num("x-inference-ms"),
            decode_ms: num("x-decode-ms"),
            encode_ms: num("x-encode-ms"),
            batch_size: num("x-batch-size") as usize,
        };
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

    /// The next tier round-robin, other than `except`: a ready one if there is one, else
    /// any, so that requests still go out before the first poll has answered (a cold start)
    /// and while every tier is thought down.
    fn pick(&self, except: Option<usize>) -> Option<usize> {
        let n = self.tiers.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n.max(1);
        let order = (0..n)
            .map(|i| (start + i) % n)
            .filter(|&i| Some(i) != except);
        order
            .clone()
            .find(|&i| self.tiers[i].ready.load(Ordering::Relaxed))
            .or_else(|| order.clone().next())
    }

    /// One try of the request at tier `t`: its answer's headers and body. The form is built
    /// afresh for each try, as sending consumes it; cloning the images' `Bytes` shares them.
    async fn attempt(
        &self,
        t: usize,
        input: &JobInput,
        asked: OutputFormat,
        deadline: tokio::time::Instant,
    ) -> Result<(HeaderMap, Bytes), Failed> {
        let tier = &self.tiers[t];
        let mut form = reqwest::multipart::Form::new()
            .part(
                "image",
                reqwest::multipart::Part::stream(input.image.clone()),
            )
            .part("mask", reqwest::multipart::Part::stream(input.mask.clone()))
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
        let url = format!("{}/api/v1/inpaint", tier.base);
        let mut request = self
            .client
            .post(&url)
            // Both tries share the request's time: a retry gets what the first left.
            .timeout(deadline.saturating_duration_since(tokio::time::Instant::now()))
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
            .map_err(|e| self.unreachable(tier, &url, e))?;
        let status = response.status();
        // The model tier refusing this server is the operator's to fix, not the client's:
        // a 401 passed on would tell the client its own credentials are wrong.
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(Failed::Final(AppError::Remote {
                status: StatusCode::BAD_GATEWAY,
                code: "remote_unauthorized".to_owned(),
                message: "the model tier refused this server's credentials (--remote-model-token)"
                    .to_owned(),
            }));
        }
        if !status.is_success() {
            let body: serde_json::Value = response.json_or_default().await;
            let field = |k: &str| body.get(k).and_then(|v| v.as_str()).map(str::to_owned);
            let e = AppError::Remote {
                status: StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY),
                code: field("code").unwrap_or_else(|| "remote_error".to_owned()),
                message: field("error").unwrap_or_else(|| format!("model tier answered {status}")),
            };
            // A 502 or 503 is about the tier (its own backend gone, loading, full), which
            // another tier may not share; any other answer would be the same everywhere. The
            // tier stays in the rotation: a full queue is no reason to send it nothing, and
            // its `/readyz` says whether it is down.
            if status == reqwest::StatusCode::BAD_GATEWAY
                || status == reqwest::StatusCode::SERVICE_UNAVAILABLE
            {
                return Err(Failed::Down(e));
            }
            return Err(Failed::Final(e));
        }
        let headers = response.headers().clone();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| self.unreachable(tier, &url, e))?;
        Ok((headers, bytes))
    }

    /// A request to `tier` that got no (whole) answer. A timeout of the whole request is
    /// final: the client has waited its time already, and another tier would be as slow.
    fn unreachable(&self, tier: &Tier, url: &str, e: reqwest::Error) -> Failed {
        if e.is_timeout() {
            return Failed::Final(AppError::Timeout(self.timeout_secs));
        }
        tier.down(&e.to_string());
        Failed::Down(AppError::Remote {
            status: StatusCode::BAD_GATEWAY,
            code: "remote_unavailable".to_owned(),
            message: format!("model tier {url} unreachable: {e}"),
        })
    }

    async fn readiness(&self) -> Result<ModelInfo, AppError> {
        // Those last seen ready first: one of them almost always answers at once.
        let mut order: Vec<&Tier> = self.tiers.iter().collect();
        order.sort_by_key(|t| !t.ready.load(Ordering::Relaxed));
        let mut errors = Vec::new();
        for tier in order {
            match probe(&self.client, tier).await {
                Ok(info) => return Ok(info),
                Err(e) => errors.push(e),
            }
        }
        Err(AppError::NotReady(errors.join("; ")))
    }
}

/// Asks every tier's `/readyz` each [`POLL_EVERY`], all at once, so that a slow tier does
/// not delay noticing the others. Runs until aborted (when its [`Remote`] is dropped).
async fn poll(client: reqwest::Client, tiers: Arc<[Tier]>) {
    let mut tick = tokio::time::interval(POLL_EVERY);
    // After a slow round, a full period's rest rather than a burst of catching up.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        futures_util::future::join_all(tiers.iter().map(|t| probe(&client, t))).await;
    }
}

/// A tier's `/readyz`: its model's identity when it can serve, else why not, naming its URL.
/// Marks the tier ready or down by the answer.
async fn probe(client: &reqwest::Client, tier: &Tier) -> Result<ModelInfo, String> {
    let url = format!("{}/readyz", tier.base);
    let answer = client.get(&url).timeout(PROBE_TIMEOUT).send().await;
    let r = match answer {
        Ok(r) if r.status().is_success() => r,
        Ok(r) => {
            let why = format!("model tier {url} answered {}", r.status());
            tier.down(&why);
            return Err(why);
        }
        Err(e) => {
            let why = format!("model tier {url}: {e}");
            tier.down(&why);
            return Err(why);
        }
    };
    tier.up();
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
