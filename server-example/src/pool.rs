//! Inference off the async runtime: worker threads sharing one model (`Inpainter` is `Sync`),
//! fed from one bounded queue.
//!
//! - Submitting to a full queue fails at once ([`AppError::Overloaded`]), so memory is
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

use std::collections::VecDeque;
use std::io::Cursor;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use image::{DynamicImage, GenericImageView};
use partialconv::{io::decode_image, HoleMask, Inpainter, SelfEnsemble, Strategy};
use tokio::sync::oneshot;

use crate::error::AppError;
use crate::metrics::Metrics;
use crate::models::{ModelKey, ModelRegistry};

/// The result's encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    #[default]
    Png,
    Jpeg,
}

impl OutputFormat {
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Jpeg => "image/jpeg",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Jpeg => "jpeg",
        }
    }
}

impl FromStr for OutputFormat {
    type Err = AppError;
    fn from_str(s: &str) -> Result<Self, AppError> {
        match s.to_ascii_lowercase().as_str() {
            "png" => Ok(Self::Png),
            "jpeg" | "jpg" => Ok(Self::Jpeg),
            _ => Err(AppError::bad_request(
                "bad_argument",
                format!("unknown format `{s}`: expected png or jpeg"),
            )),
        }
    }
}

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

type Reply = oneshot::Sender<Result<JobOutput, AppError>>;

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
            .spawn(move || load_and_start(loader))
            .expect("spawn model loader");
        Self {
            shared,
            next_id: AtomicU64::new(1),
        }
    }

    /// Queues a job, or refuses it when the queue is full.
    pub fn submit(&self, input: JobInput) -> Result<Ticket, AppError> {
        if let LoadState::Failed(e) = &*self.shared.state.lock().unwrap() {
            return Err(AppError::NotReady(e.clone()));
        }
        let (tx, rx) = oneshot::channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut q = self.shared.queue.lock().unwrap();
            if q.len() >= self.shared.settings.queue {
                self.shared.metrics.rejected.fetch_add(1, Ordering::Relaxed);
                return Err(AppError::Overloaded);
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
    rx: oneshot::Receiver<Result<JobOutput, AppError>>,
    shared: Arc<Shared>,
}

impl Ticket {
    pub async fn wait(&mut self) -> Result<JobOutput, AppError> {
        (&mut self.rx)
            .await
            .map_err(|_| AppError::internal("inference worker dropped the job"))?
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

fn model_info(inpainter: &Inpainter, path: Option<&PathBuf>) -> ModelInfo {
    let meta = inpainter.meta();
    let model_id = match path {
        Some(p) => p
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| p.display().to_string()),
        None => std::env::var(partialconv::inpainter::MODEL_ENV)
            .ok()
            .filter(|p| !p.is_empty())
            .and_then(|p| {
                PathBuf::from(p)
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
            })
            .unwrap_or_else(|| "bundled".to_owned()),
    };
    let c = &meta.config;
    ModelInfo {
        model_id,
        model_version: format!("pconv-unet-l{}-w{}", c.layer_size, c.width),
        device: format!("{:?}", inpainter.device()).to_lowercase(),
        ensemble: inpainter.ensemble().to_string(),
        config: serde_json::to_value(meta).unwrap_or_default(),
    }
}

fn load_and_start(shared: Arc<Shared>) {
    let s = &shared.settings;
    let inpainter = match Inpainter::load(s.model.as_deref(), s.device) {
        Ok(i) => Arc::new(i.with_ensemble(s.ensemble)),
        Err(e) => {
            tracing::error!("loading the model failed: {e}");
            *shared.state.lock().unwrap() = LoadState::Failed(e.to_string());
            // Nobody will run what is queued; answer it now rather than at the timeout.
            for job in shared.queue.lock().unwrap().drain(..) {
                let _ = job.reply.send(Err(AppError::NotReady(e.to_string())));
            }
            return;
        }
    };
    let info = model_info(&inpainter, s.model.as_ref());
    tracing::info!(model = %info.model_id, device = %info.device, "model loaded");
    for i in 0..s.workers.max(1) {
        let shared = shared.clone();
        let inpainter = inpainter.clone();
        std::thread::Builder::new()
            .name(format!("inference-{i}"))
            .spawn(move || worker(shared, inpainter))
            .expect("spawn inference worker");
    }
    *shared.state.lock().unwrap() = LoadState::Ready(info);
}

fn worker(shared: Arc<Shared>, default: Arc<Inpainter>) {
    if let Some(n) = shared.settings.intra_op_threads {
        crate::threads::pin_intra_op_threads(n);
    }
    while let Some(batch) = next_batch(&shared) {
        shared.metrics.busy_workers.fetch_add(1, Ordering::Relaxed);
        // A libtorch panic fails this batch (its senders drop: 500), not the worker.
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let inpainter = match batch[0].key.3 {
                ModelKey::Default => Ok(default.clone()),
                ModelKey::Tuned(id) => shared.models.get(id),
            };
            match inpainter {
                Ok(inpainter) => run_batch(&inpainter, batch, &shared),
                Err(e) => {
                    for job in batch {
                        let err = match &e {
                            AppError::UnknownModel(id) => AppError::UnknownModel(id.clone()),
                            e => AppError::internal(e),
                        };
                        let _ = job.reply.send(Err(err));
                    }
                }
            }
        }));
        if outcome.is_err() {
            tracing::error!("an inference batch panicked");
        }
        shared.metrics.busy_workers.fetch_sub(1, Ordering::Relaxed);
    }
}

fn next_batch(shared: &Shared) -> Option<Vec<Job>> {
    let s = &shared.settings;
    let mut q = shared.queue.lock().unwrap();
    let first = loop {
        if shared.shutdown.load(Ordering::SeqCst) {
            return None;
        }
        if let Some(job) = q.pop_front() {
            break job;
        }
        q = shared.wake.wait(q).unwrap();
    };
    let key = first.key;
    let mut batch = vec![first];
    let deadline = Instant::now() + s.batch_window;
    loop {
        let mut i = 0;
        while i < q.len() && batch.len() < s.batch_max {
            if q[i].key == key {
                batch.extend(q.remove(i));
            } else {
                i += 1;
            }
        }
        let now = Instant::now();
        if batch.len() >= s.batch_max || now >= deadline {
            return Some(batch);
        }
        q = shared.wake.wait_timeout(q, deadline - now).unwrap().0;
    }
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

fn decode(input: &JobInput, max_pixels: u64) -> Result<(DynamicImage, HoleMask), AppError> {
    let image = decode_image(&input.image, "image", Some(max_pixels))?;
    let mask = HoleMask::from_image(&decode_image(&input.mask, "mask", Some(max_pixels))?);
    let (w, h) = image.dimensions();
    let (mask_w, mask_h) = mask.dimensions();
    if (mask_w, mask_h) != (w, h) {
        return Err(partialconv::Error::MaskSize {
            image_w: w,
            image_h: h,
            mask_w,
            mask_h,
        }
        .into());
    }
    Ok((image, mask))
}

pub fn encode(img: &DynamicImage, format: OutputFormat) -> Result<Vec<u8>, AppError> {
    use image::codecs::{jpeg::JpegEncoder, png};
    let mut buf = Vec::new();
    let result = match format {
        // Fast compression: at 512×512 the default level costs a tenth of the model time.
        OutputFormat::Png => img.write_with_encoder(png::PngEncoder::new_with_quality(
            Cursor::new(&mut buf),
            png::CompressionType::Fast,
            png::FilterType::Adaptive,
        )),
        OutputFormat::Jpeg => DynamicImage::ImageRgb8(img.to_rgb8())
            .write_with_encoder(JpegEncoder::new_with_quality(Cursor::new(&mut buf), 90)),
    };
    result.map_err(AppError::internal)?;
    Ok(buf)
}

fn run_batch(inpainter: &Inpainter, jobs: Vec<Job>, shared: &Shared) {
    let metrics = &shared.metrics;
    let started = Instant::now();
    let mut items = Vec::with_capacity(jobs.len());
    let mut live = Vec::with_capacity(jobs.len());
    for job in jobs {
        // Taken off the queue just before its client gave up.
        if job.reply.is_closed() {
            metrics.cancelled.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        match decode(&job.input, shared.settings.max_pixels) {
            Ok(item) => {
                items.push(item);
                live.push(job);
            }
            Err(e) => {
                let _ = job.reply.send(Err(e));
            }
        }
    }
    if live.is_empty() {
        return;
    }
    let decode_ms = ms(started) / live.len() as f64;
    let strategy = live[0].input.strategy;
    let resolved: Vec<String> = items
        .iter()
        .map(|(img, mask)| {
            if mask.is_empty() {
                "none".to_owned()
            } else {
                let (w, h) = img.dimensions();
                inpainter.resolve(strategy, w, h, mask).to_string()
            }
        })
        .collect();
    let t = Instant::now();
    let result = if items.len() == 1 {
        inpainter
            .predict(&items[0].0, &items[0].1, strategy)
            .map(|r| vec![r])
    } else {
        inpainter.predict_batch(&items, strategy)
    };
    let inference_ms = ms(t);
    metrics.record_inference(inference_ms / 1000.0);
    metrics.record_batch(live.len());
    let batch_size = live.len();
    match result {
        Ok(outputs) => {
            for (((job, out), (_, mask)), strategy) in
                live.into_iter().zip(outputs).zip(&items).zip(resolved)
            {
                let t = Instant::now();
                let reply = encode(&out, job.input.format).map(|bytes| {
                    let (width, height) = out.dimensions();
                    JobOutput {
                        bytes: bytes.into(),
                        content_type: job.input.format.content_type(),
                        width,
                        height,
                        hole_ratio: mask.hole_ratio(),
                        strategy,
                        inference_ms,
                        decode_ms,
                        encode_ms: ms(t),
                        batch_size,
                    }
                });
                let _ = job.reply.send(reply);
            }
        }
        Err(e) => {
            tracing::error!("inference failed: {e}");
            let bad_input = e.is_bad_input();
            let msg = e.to_string();
            for job in live {
                let err = if bad_input {
                    AppError::Image(partialconv::Error::InvalidArgument(msg.clone()))
                } else {
                    AppError::Internal(msg.clone())
                };
                let _ = job.reply.send(Err(err));
            }
        }
    }
}
