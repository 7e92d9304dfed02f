//! Inference off the async runtime: worker threads sharing one model (`Inpainter` is `Sync`),
//! fed from one bounded queue.
//!
//! - Submitting to a full queue fails at once ([`PoolError::Overloaded`]), so memory is
//!   bounded by `queue × max upload` whatever the load.
//! - A [`Ticket`] dropped before its job starts (the client went away, or the request timed
//!   out) takes the job out of the queue.
//! - A worker takes the oldest job plus every queued job of the same shape, strategy,
//!   model and self-ensemble (up to `batch_max`, optionally waiting `batch_window` for
//!   more) and runs them as one batch.
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
use partialconv::{Precision, SelfEnsemble, Strategy};
use tokio::sync::oneshot;

use crate::codec::OutputFormat;
use crate::metrics::Metrics;
use crate::models::{ModelKey, ModelRegistry};

/// One inpainting request, still encoded.
#[derive(Debug, Clone)]
pub struct JobInput {
    /// The image, as uploaded.
    pub image: Bytes,
    /// The mask, as uploaded.
    pub mask: Bytes,
    /// How to fill (see [`Strategy`]).
    pub strategy: Strategy,
    /// Pixels to grow (positive) or shrink (negative) the mask by before filling.
    pub mask_grow: i32,
    /// How to encode the result.
    pub format: OutputFormat,
    /// The self-ensemble of this request; `None`: the server's (`--ensemble`).
    pub ensemble: Option<SelfEnsemble>,
    /// Keep the photo's GPS position in the result's EXIF (removed by default).
    pub keep_gps: bool,
    /// Also return a lossless PNG master when `format` is lossy, for further edits.
    pub master: bool,
    /// The event this edit continues from: unused by the pool, passed on to a model tier.
    pub parent_event_id: Option<uuid::Uuid>,
    /// Image size from the header, used to group same-shape jobs.
    pub dimensions: (u32, u32),
    /// Which model runs it; only jobs for the same model share a batch.
    pub model: ModelKey,
    /// Whose request it is, for a model tier that checks who owns a fine-tuned model
    /// (`--remote-model-token`); the local pool has checked already.
    pub user: Option<String>,
}

/// A finished job: the encoded result and how it was made.
#[derive(Debug, Clone)]
pub struct JobOutput {
    /// The encoded result.
    pub bytes: Bytes,
    /// Its content type.
    pub content_type: &'static str,
    /// The lossless PNG master, when asked for and `bytes` is lossy.
    pub master: Option<Bytes>,
    /// The self-ensemble that filled it.
    pub ensemble: SelfEnsemble,
    /// Result width, in pixels.
    pub width: u32,
    /// Result height, in pixels.
    pub height: u32,
    /// Share of the pixels that were holes.
    pub hole_ratio: f64,
    /// What the strategy resolved to (`none` for an empty mask).
    pub strategy: String,
    /// Model time of the batch this job ran in.
    pub inference_ms: f64,
    /// Time spent decoding this job's image and mask, in ms.
    pub decode_ms: f64,
    /// Time spent encoding this job's result, in ms.
    pub encode_ms: f64,
    /// Jobs that shared the forward pass.
    pub batch_size: usize,
}

/// What the loaded model is, for `/readyz` and history events.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelInfo {
    /// The model file's stem, or `bundled`.
    pub model_id: String,
    /// Architecture and size, e.g. `pconv-unet-l7-w64`.
    pub model_version: String,
    /// Device the model runs on, e.g. `cpu`.
    pub device: String,
    /// The self-ensemble of fills whose request names none (`--ensemble`).
    pub ensemble: String,
    /// The kind the convolutions compute in, resolved for the device (`--precision`).
    pub precision: String,
    /// The model's metadata (configuration and training).
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
    key: (u32, u32, Strategy, ModelKey, SelfEnsemble),
    input: JobInput,
    reply: Reply,
}

/// How the pool is sized and what it loads.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Model file; `None`: `$PARTIALCONV_MODEL`, else the bundled model.
    pub model: Option<PathBuf>,
    /// Device the model runs on.
    pub device: tch::Device,
    /// Flipped views each fill averages, unless its request names others.
    pub ensemble: SelfEnsemble,
    /// The kind the convolutions compute in (`--precision`).
    pub precision: Precision,
    /// Worker threads (at least one).
    pub workers: usize,
    /// Jobs that may wait; beyond it, submitting fails with `Overloaded`.
    pub queue: usize,
    /// Most jobs in one forward pass.
    pub batch_max: usize,
    /// How long a worker waits for more same-shape jobs before running a batch.
    pub batch_window: Duration,
    /// Most pixels an image or mask may decode to.
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

/// The inference engine: a bounded queue and the worker threads that drain it.
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
            let ensemble = input.ensemble.unwrap_or(self.shared.settings.ensemble);
            q.push_back(Job {
                id,
                key: (w, h, input.strategy, input.model, ensemble),
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

    /// Jobs waiting now.
    pub fn depth(&self) -> usize {
        self.shared.queue.lock().unwrap().len()
    }

    /// Most jobs that may wait.
    pub fn capacity(&self) -> usize {
        self.shared.settings.queue
    }

    /// Worker threads.
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
    /// Waits for the job's result.
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
