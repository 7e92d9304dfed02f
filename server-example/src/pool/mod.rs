//! Inference off the async runtime: worker threads sharing one model (`Inpainter` is `Sync`),
//! fed from one bounded queue.
//!
//! - Submitting to a full queue fails at once ([`PoolError::Overloaded`]), so memory is
//!   bounded by `queue × max upload` whatever the load.
//! - A [`Ticket`] dropped before its job starts (the client went away, or the request timed
//!   out) takes the job out of the queue.
//! - A worker takes the oldest job plus every queued job of the same shape, strategy and
//!   model (up to `batch_max`, optionally waiting `batch_window` for more) and runs them as
//!   one batch.
//! - Fine-tuned models come from the [`ModelRegistry`], loaded by the worker that first
//!   needs one.
//! - Jobs carry the encoded bytes: decoding and encoding run on the workers too, so the async
//!   threads only move bytes.

pub mod error;
mod worker;

pub use error::PoolError;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use bytes::Bytes;
use partialconv::{SelfEnsemble, Strategy};
use tokio::sync::oneshot;

use crate::codec::OutputFormat;
use crate::metrics::Metrics;
use crate::models::{ModelKey, ModelRegistry};

/// One inpainting request, still encoded.
#[derive(Debug, Clone)]
pub struct JobInput {
    pub image: Bytes,
    pub mask: Bytes,
    pub strategy: Strategy,
    pub format: OutputFormat,
    /// Image size from the header, used to group same-shape jobs.
    pub dimensions: (u32, u32),
    /// Which model runs it; only jobs for the same model share a batch.
    pub model: ModelKey,
}

#[derive(Debug, Clone)]
pub struct JobOutput {
    pub bytes: Bytes,
    pub content_type: &'static str,
    pub width: u32,
    pub height: u32,
    pub hole_ratio: f64,
    /// What the strategy resolved to (`none` for an empty mask).
    pub strategy: String,
    /// Model time of the batch this job ran in.
    pub inference_ms: f64,
    pub decode_ms: f64,
    pub encode_ms: f64,
    /// Jobs that shared the forward pass.
    pub batch_size: usize,
}

/// What the loaded model is, for `/readyz` and history events.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelInfo {
    pub model_id: String,
    pub model_version: String,
    pub device: String,
    /// The self-ensemble every fill uses (`--ensemble`).
    pub ensemble: String,
    pub config: serde_json::Value,
}

#[derive(Debug, Clone)]
enum LoadState {
    Loading,
    Ready(ModelInfo),
    Failed(String),
}

type Reply = oneshot::Sender<Result<JobOutput, PoolError>>;

struct Job {
    id: u64,
    key: (u32, u32, Strategy, ModelKey),
    input: JobInput,
    reply: Reply,
}

#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub model: Option<PathBuf>,
    pub device: tch::Device,
    pub ensemble: SelfEnsemble,
    pub workers: usize,
    pub queue: usize,
    pub batch_max: usize,
    pub batch_window: Duration,
    pub max_pixels: u64,
    /// libtorch intra-op threads of each worker. Set explicitly because libtorch's setting
    /// is per thread but a thread's first parallel operation takes the last value any thread
    /// set: without this, a worker would inherit the training thread's lower count.
    pub intra_op_threads: Option<usize>,
}

struct Shared {
    queue: Mutex<VecDeque<Job>>,
    wake: Condvar,
    settings: PoolSettings,
    state: Mutex<LoadState>,
    shutdown: AtomicBool,
    metrics: Arc<Metrics>,
    models: Arc<ModelRegistry>,
}

pub struct Pool {
    shared: Arc<Shared>,
    next_id: AtomicU64,
}

impl Pool {
    /// Loads the model in the background, then starts the workers, so the server answers
    /// `/healthz` at once and `/readyz` once the model is loaded.
    pub fn start(
        settings: PoolSettings,
        metrics: Arc<Metrics>,
        models: Arc<ModelRegistry>,
    ) -> Self {
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::with_capacity(settings.queue)),
            wake: Condvar::new(),
            settings,
            state: Mutex::new(LoadState::Loading),
            shutdown: AtomicBool::new(false),
            metrics,
            models,
        });
        let loader = shared.clone();
        std::thread::Builder::new()
            .name("model-loader".into())
            .spawn(move || worker::load_and_start(loader))
            .expect("spawn model loader");
        Self {
            shared,
            next_id: AtomicU64::new(1),
        }
    }

    /// Queues a job, or refuses it when the queue is full.
    pub fn submit(&self, input: JobInput) -> Result<Ticket, PoolError> {
        if let LoadState::Failed(e) = &*self.shared.state.lock().unwrap() {
            return Err(PoolError::NotReady(e.clone()));
        }
        let (tx, rx) = oneshot::channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut q = self.shared.queue.lock().unwrap();
            if q.len() >= self.shared.settings.queue {
                self.shared.metrics.rejected.fetch_add(1, Ordering::Relaxed);
                return Err(PoolError::Overloaded);
            }
            let (w, h) = input.dimensions;
            q.push_back(Job {
                id,
                key: (w, h, input.strategy, input.model),
                input,
                reply: tx,
            });
        }
        // All, not one: a worker waiting out a batch window may not take this job.
        self.shared.wake.notify_all();
        Ok(Ticket {
            id,
            rx,
            shared: self.shared.clone(),
        })
    }

    pub fn depth(&self) -> usize {
        self.shared.queue.lock().unwrap().len()
    }

    pub fn capacity(&self) -> usize {
        self.shared.settings.queue
    }

    pub fn workers(&self) -> usize {
        self.shared.settings.workers.max(1)
    }

    /// `Ok` once every worker has its model; `Err(None)` while loading, `Err(Some(why))` if
    /// loading failed.
    pub fn readiness(&self) -> Result<ModelInfo, Option<String>> {
        match &*self.shared.state.lock().unwrap() {
            LoadState::Ready(info) => Ok(info.clone()),
            LoadState::Loading => Err(None),
            LoadState::Failed(e) => Err(Some(e.clone())),
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.shared.wake.notify_all();
    }
}

/// A queued job's claim on its result. Dropping it before the job starts dequeues the job.
pub struct Ticket {
    id: u64,
    rx: oneshot::Receiver<Result<JobOutput, PoolError>>,
    shared: Arc<Shared>,
}

impl Ticket {
    pub async fn wait(&mut self) -> Result<JobOutput, PoolError> {
        (&mut self.rx)
            .await
            .map_err(|_| PoolError::internal("inference worker dropped the job"))?
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut q = self.shared.queue.lock().unwrap();
        if let Some(pos) = q.iter().position(|j| j.id == self.id) {
            q.remove(pos);
            self.shared
                .metrics
                .cancelled
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}
