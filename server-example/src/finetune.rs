//! Fine-tune jobs: an upload becomes a job folder, one background thread trains the jobs
//! one at a time with [`FineTuner`], and each job's status lives in memory (for polling and
//! server-sent events) and in `job.json` (so that it survives a restart).
//!
//! Under `DATA_DIR/finetune/`:
//! - `jobs/<job id>/job.json`: the status;
//! - `jobs/<job id>/train/`, `val/`: the photos, under names the server chose;
//! - `jobs/<job id>/run/`: checkpoint (weights, Adam state, step), log, plots;
//! - `jobs/<job id>/model.safetensors`: the model, once the job is done;
//! - `base.safetensors`: the bundled model written out, when a job starts from it.
//!
//! The training thread gets fewer libtorch intra-op threads and a higher nice value than
//! the inference workers, so inference latency stays bounded while a job trains (figures in
//! `docs/benchmarks.md`). libtorch's intra-op thread count is per thread (OpenMP's
//! `nthreads-var`) once a thread has initialised it, which is what makes this work; see
//! [`threads`].

use std::collections::BTreeMap;
use std::io::{Cursor, Read};
use std::ops::ControlFlow;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use history_sink::{HistoryEvent, HistorySink};
use partialconv::eval::{BucketMetrics, ValReport};
use partialconv::train::{CancelToken, FineTuner, TrainConfig};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Semaphore, SemaphorePermit};
use uuid::Uuid;

use crate::error::AppError;
use crate::identity;
use crate::metrics::Metrics;
use crate::models::{ModelKey, ModelRegistry, MODEL_FILE};
use crate::threads;

/// Share of the usable photos held out for validation.
pub const HOLDOUT_FRACTION: f64 = 0.15;

/// Longest job `name`, in characters.
pub const MAX_NAME_LEN: usize = 100;

/// Fine-tune uploads read and checked at once: each may hold the largest allowed body in
/// memory, so this bounds what uploads take to about this many times `--finetune-max-mb`.
const CONCURRENT_UPLOADS: usize = 2;

#[derive(Debug, Clone)]
pub struct FinetuneSettings {
    pub max_images: usize,
    pub max_bytes: usize,
    pub max_pixels: u64,
    pub max_queued: usize,
    pub default_steps: u64,
    pub max_steps: u64,
    pub threads: usize,
    pub nice: i32,
    pub train_size: u32,
    pub batch: i64,
    pub val_size: u32,
    pub checkpoint_every: u64,
    pub val_every: u64,
    pub vgg: Option<PathBuf>,
    pub device: tch::Device,
    /// The server's `--model`; `None`: `$PARTIALCONV_MODEL` or the bundled model.
    pub default_model: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn is_over(self) -> bool {
        matches!(self, Self::Done | Self::Failed | Self::Cancelled)
    }
}

/// Validation metrics on the held-out photos: means over the hole-ratio buckets, and the
/// buckets themselves.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Scores {
    pub mean_psnr: f64,
    pub mean_ssim: f64,
    pub mean_l1: f64,
    pub buckets: Vec<BucketMetrics>,
}

impl From<&ValReport> for Scores {
    fn from(r: &ValReport) -> Self {
        let used: Vec<&BucketMetrics> = r.buckets.iter().filter(|b| b.count > 0).collect();
        let n = used.len().max(1) as f64;
        Self {
            mean_psnr: r.mean_psnr(),
            mean_ssim: used.iter().map(|b| b.ssim).sum::<f64>() / n,
            mean_l1: used.iter().map(|b| b.l1).sum::<f64>() / n,
            buckets: r.buckets.clone(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Validation {
    pub holdout_images: usize,
    /// The base model on the held-out photos, measured before the first step.
    pub base: Option<Scores>,
    /// The fine-tuned model on the same photos and holes, after the last step.
    pub finetuned: Option<Scores>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ImageCounts {
    /// Files received (zip entries counted one by one).
    pub received: usize,
    /// Files that were not a readable PNG, JPEG or WebP, and were skipped.
    pub skipped: usize,
    pub train: usize,
    pub holdout: usize,
    /// Bytes of the usable photos.
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobStatus {
    pub job_id: Uuid,
    pub state: JobState,
    pub user_id: String,
    /// The user's label; metadata only.
    pub name: Option<String>,
    pub base_model: String,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub step: u64,
    pub total_steps: u64,
    pub loss: Option<f64>,
    /// Mean validation PSNR on the held-out photos at the latest validation.
    pub val_psnr: Option<f64>,
    pub eta_s: Option<f64>,
    pub images: ImageCounts,
    pub validation: Validation,
    /// The step of the last checkpoint, kept after a cancel and resumed from after a restart.
    pub checkpoint_step: Option<u64>,
    /// Set when the job continued from a checkpoint after a server restart.
    pub resumed_from_step: Option<u64>,
    pub error: Option<String>,
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// One photo of an upload, checked and ready to be written.
pub struct Photo {
    bytes: Bytes,
    ext: &'static str,
}

/// A checked upload: what [`FineTunes::submit`] needs.
pub struct Prepared {
    pub user_id: String,
    pub name: Option<String>,
    pub base: ModelKey,
    pub steps: u64,
    photos: Vec<Photo>,
    received: usize,
    skipped: usize,
}

/// The raw fields of a `POST /api/v1/finetune`.
#[derive(Default)]
pub struct Upload {
    /// (file name, bytes): photos, or zips of photos.
    pub files: Vec<(String, Bytes)>,
    pub user_id: Option<String>,
    pub base_model: Option<String>,
    pub name: Option<String>,
    pub steps: Option<String>,
}

fn too_many_images(limit: usize) -> AppError {
    AppError::TooMuch {
        code: "too_many_images",
        message: format!("a fine-tune job takes at most {limit} photos"),
    }
}

fn too_much_data(limit: usize) -> AppError {
    AppError::TooMuch {
        code: "too_much_data",
        message: format!(
            "the photos of a fine-tune job may total at most {:.0} MB",
            limit as f64 / (1024.0 * 1024.0)
        ),
    }
}

fn is_zip(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04")
}

/// Unpacks zips, counting what they unpack to against the limits (a zip bomb stops at the
/// byte limit), and leaves other files as they are.
fn expand(
    files: Vec<(String, Bytes)>,
    s: &FinetuneSettings,
) -> Result<Vec<(String, Bytes)>, AppError> {
    let mut out = Vec::new();
    let mut total = 0usize;
    for (name, bytes) in files {
        if !is_zip(&bytes) {
            total += bytes.len();
            out.push((name, bytes));
        } else {
            let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| {
                AppError::bad_request("bad_zip", format!("{name}: not a readable zip ({e})"))
            })?;
            for i in 0..zip.len() {
                let mut entry = zip.by_index(i).map_err(|e| {
                    AppError::bad_request("bad_zip", format!("{name}: entry {i}: {e}"))
                })?;
                let entry_name = entry.name().to_owned();
                let base = entry_name.rsplit('/').next().unwrap_or_default();
                // Folders, and the resource forks and dotfiles that archivers add.
                if entry.is_dir()
                    || base.is_empty()
                    || base.starts_with('.')
                    || entry_name.starts_with("__MACOSX/")
                {
                    continue;
                }
                let room = s.max_bytes.saturating_sub(total);
                let mut buf = Vec::new();
                (&mut entry)
                    .take(room as u64 + 1)
                    .read_to_end(&mut buf)
                    .map_err(|e| {
                        AppError::bad_request("bad_zip", format!("{name}: {entry_name}: {e}"))
                    })?;
                if buf.len() > room {
                    return Err(too_much_data(s.max_bytes));
                }
                total += buf.len();
                out.push((format!("{name}/{entry_name}"), buf.into()));
                if out.len() > s.max_images {
                    return Err(too_many_images(s.max_images));
                }
            }
        }
        if total > s.max_bytes {
            return Err(too_much_data(s.max_bytes));
        }
        if out.len() > s.max_images {
            return Err(too_many_images(s.max_images));
        }
    }
    Ok(out)
}

/// Checks an upload (blocking: it decodes every photo): limits, readability, fields.
pub fn prepare(
    upload: Upload,
    s: &FinetuneSettings,
    models: &ModelRegistry,
) -> Result<Prepared, AppError> {
    let steps = match upload
        .steps
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
    {
        None => s.default_steps,
        Some(v) => match v.parse::<u64>() {
            Ok(n) if (1..=s.max_steps).contains(&n) => n,
            _ => {
                return Err(AppError::bad_request(
                    "bad_argument",
                    format!("`steps` must be a whole number from 1 to {}", s.max_steps),
                ))
            }
        },
    };
    let name = match upload
        .name
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
    {
        Some(n) if n.chars().count() > MAX_NAME_LEN || n.chars().any(char::is_control) => {
            return Err(AppError::bad_request(
                "bad_argument",
                format!("`name` must be at most {MAX_NAME_LEN} characters of printable text"),
            ))
        }
        n => n,
    };
    let user_id = identity::user_or_anonymous(upload.user_id)?;
    let base = models.resolve(upload.base_model.as_deref())?;
    if upload.files.is_empty() {
        return Err(AppError::missing("images"));
    }
    let files = expand(upload.files, s)?;
    let received = files.len();
    let mut photos = Vec::new();
    let mut skipped = 0;
    for (name, bytes) in files {
        match partialconv::io::decode_image(&bytes, &name, Some(s.max_pixels)) {
            Ok(_) => {
                let ext = match image::guess_format(&bytes) {
                    Ok(image::ImageFormat::Jpeg) => "jpg",
                    Ok(image::ImageFormat::WebP) => "webp",
                    _ => "png",
                };
                photos.push(Photo { bytes, ext });
            }
            // One photo past the pixel limit refuses the job, as it would a single inpaint.
            Err(e @ partialconv::Error::TooLarge { .. }) => return Err(AppError::Image(e)),
            Err(_) => skipped += 1,
        }
    }
    if photos.len() < 2 {
        return Err(AppError::Unprocessable {
            code: "not_enough_images",
            message: format!(
                "{} usable photo(s) of {received} received ({skipped} unreadable); a job needs at least 2",
                photos.len()
            ),
        });
    }
    Ok(Prepared {
        user_id,
        name,
        base,
        steps,
        photos,
        received,
        skipped,
    })
}

/// Indices of the held-out photos: about [`HOLDOUT_FRACTION`] of `n`, spread evenly, and
/// never so many that fewer than 2 remain to train on.
pub fn holdout(n: usize) -> Vec<usize> {
    if n < 3 {
        return Vec::new();
    }
    let k = ((n as f64 * HOLDOUT_FRACTION).round() as usize).clamp(1, n - 2);
    (0..k).map(|j| (2 * j + 1) * n / (2 * k)).collect()
}

struct Entry {
    tx: watch::Sender<JobStatus>,
    cancel: Arc<AtomicBool>,
}

struct Inner {
    root: PathBuf,
    settings: FinetuneSettings,
    table: Mutex<BTreeMap<Uuid, Entry>>,
    wake: Condvar,
    shutdown: AtomicBool,
    /// Flips to true on shutdown, ending the event streams.
    closing: watch::Sender<bool>,
    history: Option<Arc<dyn HistorySink>>,
    metrics: Arc<Metrics>,
    runtime: tokio::runtime::Handle,
    models: Arc<ModelRegistry>,
}

/// The job manager: one per server.
pub struct FineTunes {
    inner: Arc<Inner>,
    worker: Mutex<Option<JoinHandle<()>>>,
    uploads: Semaphore,
}

impl Drop for FineTunes {
    fn drop(&mut self) {
        self.inner.begin_shutdown();
    }
}

impl FineTunes {
    /// Loads the jobs kept under `root` and starts the training thread, which picks up a job
    /// that was running when the server stopped (from its checkpoint), then the queued ones.
    /// Must be called inside a tokio runtime (history events are sent from it).
    pub fn open(
        root: PathBuf,
        settings: FinetuneSettings,
        models: Arc<ModelRegistry>,
        history: Option<Arc<dyn HistorySink>>,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        let jobs_dir = root.join("jobs");
        std::fs::create_dir_all(&jobs_dir)?;
        let mut table = BTreeMap::new();
        for entry in std::fs::read_dir(&jobs_dir)? {
            let path = entry?.path();
            let Some(id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| Uuid::parse_str(n).ok())
            else {
                continue;
            };
            match read_status(&path.join("job.json")) {
                Ok(status) if status.job_id == id => {
                    table.insert(
                        id,
                        Entry {
                            tx: watch::Sender::new(status),
                            cancel: Arc::new(AtomicBool::new(false)),
                        },
                    );
                }
                // A folder whose submit never finished: no job.json, or a broken one.
                Ok(_) | Err(_) => {
                    tracing::warn!("ignoring {}: no readable job.json", path.display())
                }
            }
        }
        let inner = Arc::new(Inner {
            root,
            settings,
            table: Mutex::new(table),
            wake: Condvar::new(),
            shutdown: AtomicBool::new(false),
            closing: watch::Sender::new(false),
            history,
            metrics,
            runtime: tokio::runtime::Handle::current(),
            models,
        });
        let worker = {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name("finetune".into())
                .spawn(move || inner.work())?
        };
        Ok(Self {
            inner,
            worker: Mutex::new(Some(worker)),
            uploads: Semaphore::new(CONCURRENT_UPLOADS),
        })
    }

    pub fn settings(&self) -> &FinetuneSettings {
        &self.inner.settings
    }

    /// A slot for one upload, taken before its body is read (a permit taken only after
    /// the body is in memory would bound nothing); 503 while all are taken.
    pub fn admit_upload(&self) -> Result<SemaphorePermit<'_>, AppError> {
        self.uploads.try_acquire().map_err(|_| AppError::Overloaded)
    }

    /// Checks an upload off the async threads.
    pub async fn prepare(&self, upload: Upload) -> Result<Prepared, AppError> {
        // Before decoding every photo: a user already at the limit gets the 429 cheaply.
        // `submit` checks again, under the lock, for uploads that race.
        if let Ok(user) = identity::user_or_anonymous(upload.user_id.clone()) {
            self.check_quota(&user)?;
        }
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || prepare(upload, &inner.settings, &inner.models))
            .await
            .map_err(AppError::internal)?
    }

    /// Writes the photos, queues the job and records the `queued` event.
    pub async fn submit(&self, p: Prepared) -> Result<JobStatus, AppError> {
        self.check_quota(&p.user_id)?;
        let id = Uuid::now_v7();
        let dir = self.inner.models.job_dir(id);
        let held = holdout(p.photos.len());
        let mut images = ImageCounts {
            received: p.received,
            skipped: p.skipped,
            ..Default::default()
        };
        let mut files = Vec::with_capacity(p.photos.len());
        for (i, photo) in p.photos.into_iter().enumerate() {
            let sub = if held.contains(&i) { "val" } else { "train" };
            if sub == "val" {
                images.holdout += 1;
            } else {
                images.train += 1;
            }
            images.bytes += photo.bytes.len() as u64;
            files.push((
                dir.join(sub).join(format!("{i:04}.{}", photo.ext)),
                photo.bytes,
            ));
        }
        let status = JobStatus {
            job_id: id,
            state: JobState::Queued,
            user_id: p.user_id,
            name: p.name,
            base_model: p.base.to_string(),
            created_at: now(),
            started_at: None,
            finished_at: None,
            step: 0,
            total_steps: p.steps,
            loss: None,
            val_psnr: None,
            eta_s: None,
            images,
            validation: Validation {
                holdout_images: held.len(),
                ..Default::default()
            },
            checkpoint_step: None,
            resumed_from_step: None,
            error: None,
        };
        let write_dir = dir.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            for sub in ["train", "val"] {
                std::fs::create_dir_all(write_dir.join(sub))?;
            }
            for (path, bytes) in files {
                std::fs::write(path, bytes)?;
            }
            Ok(())
        })
        .await
        .map_err(AppError::internal)?
        .map_err(AppError::internal)?;
        let queued = {
            let mut table = self.inner.table.lock().unwrap();
            // Checked again under the lock: two uploads of one user may have raced here.
            let active = active_jobs(&table, &status.user_id);
            if active >= self.inner.settings.max_queued {
                Err(AppError::TooManyJobs {
                    user: status.user_id.clone(),
                    limit: self.inner.settings.max_queued,
                })
            } else {
                write_status(&dir, &status).map_err(AppError::internal)?;
                table.insert(
                    id,
                    Entry {
                        tx: watch::Sender::new(status.clone()),
                        cancel: Arc::new(AtomicBool::new(false)),
                    },
                );
                Ok(())
            }
        };
        if let Err(e) = queued {
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
            return Err(e);
        }
        self.inner.wake.notify_all();
        self.inner.record(&status, "queued").await;
        Ok(status)
    }

    fn check_quota(&self, user: &str) -> Result<(), AppError> {
        let table = self.inner.table.lock().unwrap();
        if active_jobs(&table, user) >= self.inner.settings.max_queued {
            return Err(AppError::TooManyJobs {
                user: user.to_owned(),
                limit: self.inner.settings.max_queued,
            });
        }
        Ok(())
    }

    pub fn status(&self, id: &str) -> Result<JobStatus, AppError> {
        let id = parse_job_id(id)?;
        let table = self.inner.table.lock().unwrap();
        let entry = table
            .get(&id)
            .ok_or_else(|| AppError::UnknownJob(id.to_string()))?;
        let status = entry.tx.borrow().clone();
        Ok(status)
    }

    /// Every job, oldest first; only `user`'s when given.
    pub fn list(&self, user: Option<&str>) -> Vec<JobStatus> {
        let table = self.inner.table.lock().unwrap();
        table
            .values()
            .map(|e| e.tx.borrow().clone())
            .filter(|s| user.is_none_or(|u| s.user_id == u))
            .collect()
    }

    /// The status now and at every change, until the job is over or the server stops.
    pub fn subscribe(
        &self,
        id: &str,
    ) -> Result<(watch::Receiver<JobStatus>, watch::Receiver<bool>), AppError> {
        let id = parse_job_id(id)?;
        let table = self.inner.table.lock().unwrap();
        let entry = table
            .get(&id)
            .ok_or_else(|| AppError::UnknownJob(id.to_string()))?;
        Ok((entry.tx.subscribe(), self.inner.closing.subscribe()))
    }

    /// Cancels a queued job at once, or asks the running one to stop after its current step
    /// (saving a checkpoint) and waits up to `wait` for it.
    pub async fn cancel(&self, id: &str, wait: Duration) -> Result<JobStatus, AppError> {
        let id = parse_job_id(id)?;
        let rx = {
            let table = self.inner.table.lock().unwrap();
            let entry = table
                .get(&id)
                .ok_or_else(|| AppError::UnknownJob(id.to_string()))?;
            let state = entry.tx.borrow().state;
            match state {
                s if s.is_over() => {
                    return Err(AppError::JobFinished(format!(
                        "job {id} is already {}",
                        serde_json::to_value(s)
                            .unwrap_or_default()
                            .as_str()
                            .unwrap_or("over")
                    )))
                }
                JobState::Queued => {
                    entry.tx.send_modify(|s| {
                        s.state = JobState::Cancelled;
                        s.finished_at = Some(now());
                    });
                    let status = entry.tx.borrow().clone();
                    write_status(&self.inner.models.job_dir(id), &status)
                        .map_err(AppError::internal)?;
                    Err(status)
                }
                _ => {
                    entry.cancel.store(true, Ordering::SeqCst);
                    Ok(entry.tx.subscribe())
                }
            }
        };
        // `Err`: cancelled while queued, recorded here, outside the table's lock.
        let mut rx = match rx {
            Ok(rx) => rx,
            Err(status) => {
                self.inner.record(&status, "cancelled").await;
                return Ok(status);
            }
        };
        let _ = tokio::time::timeout(wait, rx.wait_for(|s| s.state.is_over())).await;
        let status = rx.borrow().clone();
        Ok(status)
    }

    /// Stops the training thread, which saves a checkpoint of a running job and leaves it
    /// `running` on disk, to resume at the next start. Waits for it.
    pub async fn shutdown(&self) {
        self.inner.begin_shutdown();
        let handle = self.worker.lock().unwrap().take();
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }

    /// Finished jobs, whose models can be used: oldest first.
    pub fn finished(&self) -> Vec<JobStatus> {
        self.list(None)
            .into_iter()
            .filter(|s| s.state == JobState::Done)
            .collect()
    }
}

fn active_jobs(table: &BTreeMap<Uuid, Entry>, user: &str) -> usize {
    table
        .values()
        .filter(|e| {
            let s = e.tx.borrow();
            s.user_id == user && !s.state.is_over()
        })
        .count()
}

fn parse_job_id(id: &str) -> Result<Uuid, AppError> {
    Uuid::parse_str(id).map_err(|_| AppError::UnknownJob(id.chars().take(64).collect()))
}

fn read_status(path: &Path) -> std::io::Result<JobStatus> {
    let bytes = std::fs::read(path)?;
    serde_json::from_slice(&bytes).map_err(std::io::Error::other)
}

/// `job.json`, written to a temporary file and renamed so a crash leaves the old or the new.
fn write_status(dir: &Path, status: &JobStatus) -> std::io::Result<()> {
    let tmp = dir.join("job.json.writing");
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(status).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(tmp, dir.join("job.json"))
}

enum Outcome {
    Done(Option<ValReport>),
    Cancelled(u64),
    /// The server is stopping: the job stays `running` and resumes at the next start.
    Stopped(u64),
    Failed(String),
}

impl Inner {
    fn begin_shutdown(&self) {
        self.shutdown.store(true, Ordering::SeqCst);
        self.closing.send_replace(true);
        // Under the lock, so the worker cannot miss it between its check and its wait.
        let _table = self.table.lock().unwrap();
        self.wake.notify_all();
    }

    fn work(self: Arc<Self>) {
        threads::lower_priority(self.settings.threads, self.settings.nice);
        while let Some(id) = self.next_job() {
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| self.run(id)))
                .unwrap_or_else(|_| Outcome::Failed("training panicked".into()));
            self.finish(id, outcome);
        }
    }

    /// The job that was running before a restart first, then the oldest queued one.
    fn next_job(&self) -> Option<Uuid> {
        let mut table = self.table.lock().unwrap();
        loop {
            if self.shutdown.load(Ordering::SeqCst) {
                return None;
            }
            let pick = |want: JobState| {
                table
                    .iter()
                    .find(|(_, e)| e.tx.borrow().state == want)
                    .map(|(id, _)| *id)
            };
            if let Some(id) = pick(JobState::Running).or_else(|| pick(JobState::Queued)) {
                let entry = &table[&id];
                entry.tx.send_modify(|s| {
                    s.state = JobState::Running;
                    s.started_at.get_or_insert_with(now);
                });
                let _ = write_status(&self.models.job_dir(id), &entry.tx.borrow());
                return Some(id);
            }
            table = self.wake.wait(table).unwrap();
        }
    }

    fn entry(&self, id: Uuid) -> (watch::Sender<JobStatus>, Arc<AtomicBool>) {
        let table = self.table.lock().unwrap();
        let e = &table[&id];
        (e.tx.clone(), e.cancel.clone())
    }

    /// Changes a job's status. A persisted change is written before it is published, so
    /// that what a client has seen (a final state above all) survives a restart.
    fn update(&self, id: Uuid, persist: bool, f: impl FnOnce(&mut JobStatus)) {
        let (tx, _) = self.entry(id);
        if !persist {
            tx.send_modify(f);
            return;
        }
        // Only this thread changes a job once it runs, so nothing is lost between the
        // copy and the replace.
        let mut next = tx.borrow().clone();
        f(&mut next);
        if let Err(e) = write_status(&self.models.job_dir(id), &next) {
            tracing::warn!(job = %id, "writing job.json: {e}");
        }
        tx.send_replace(next);
    }

    /// The file the bundled model is written to, so that the trainer can read it as a base.
    fn default_base(&self) -> Result<PathBuf, String> {
        if let Some(p) = &self.settings.default_model {
            return Ok(p.clone());
        }
        if let Some(p) =
            std::env::var_os(partialconv::inpainter::MODEL_ENV).filter(|p| !p.is_empty())
        {
            return Ok(PathBuf::from(p));
        }
        let bytes = partialconv::inpainter::bundled_model()
            .ok_or("this build has no bundled model; start the server with --model")?;
        let path = self.root.join("base.safetensors");
        let current = std::fs::metadata(&path).map(|m| m.len() == bytes.len() as u64);
        if !matches!(current, Ok(true)) {
            partialconv::checkpoint::write_atomic(&path, bytes).map_err(|e| e.to_string())?;
        }
        Ok(path)
    }

    fn run(&self, id: Uuid) -> Outcome {
        let (tx, cancel) = self.entry(id);
        let status = tx.borrow().clone();
        let dir = self.models.job_dir(id);
        let s = &self.settings;
        let base = match status.base_model.parse::<Uuid>() {
            Ok(b) => Ok(self.models.model_path(b)),
            Err(_) => self.default_base(),
        };
        let base = match base {
            Ok(b) if b.is_file() => b,
            Ok(b) => {
                tracing::warn!("base model file {} is missing", b.display());
                return Outcome::Failed(format!("base model {} is gone", status.base_model));
            }
            Err(e) => return Outcome::Failed(e),
        };
        let mut cfg = TrainConfig::new(dir.join("train"), dir.join(MODEL_FILE));
        cfg.val_data = Some(dir.join("val"));
        cfg.run_dir = dir.join("run");
        cfg.base = Some(base);
        cfg.steps = status.total_steps;
        cfg.stage2_at = 0; // fine-tuning runs the paper's second stage throughout
        cfg.batch_size = s.batch;
        cfg.train_size = s.train_size;
        cfg.photo_side = s.train_size * 2;
        cfg.val_size = s.val_size;
        cfg.max_val_images = status.validation.holdout_images;
        cfg.val_every = s.val_every.max(1);
        cfg.checkpoint_every = s.checkpoint_every.max(1);
        cfg.vgg = s.vgg.clone();
        cfg.device = s.device;
        cfg.loader_threads = 1;
        cfg.seed = id.as_u128() as u64;
        let mut tuner = match FineTuner::new(cfg) {
            Ok(t) => t.with_cancel_token(CancelToken::from(cancel.clone())),
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        let resumed = tuner.step();
        self.update(id, true, |st| {
            st.step = resumed;
            if resumed > 0 {
                st.resumed_from_step = Some(resumed);
                st.checkpoint_step = Some(resumed);
            }
            // Files the upload skipped plus written ones the trainer could not decode;
            // recomputed, not added, so a resumed job does not count them twice.
            let c = &status.images;
            st.images.skipped =
                c.received.saturating_sub(c.train + c.holdout) + tuner.skipped_images();
        });
        if status.validation.base.is_none() && status.validation.holdout_images > 0 && resumed == 0
        {
            match tuner.validate() {
                Ok(report) => self.update(id, true, |st| {
                    st.validation.base = Some(Scores::from(&report));
                }),
                Err(e) => return Outcome::Failed(format!("validating the base model: {e}")),
            }
        }
        let mut persisted = Instant::now();
        let every = s.checkpoint_every.max(1);
        let result = tuner.run(|p| {
            let checkpoint = p.step.is_multiple_of(every);
            let persist =
                checkpoint || p.val.is_some() || persisted.elapsed() > Duration::from_secs(5);
            self.update(id, persist, |st| {
                st.step = p.step;
                st.total_steps = p.total;
                st.loss = p.loss.is_finite().then_some(p.loss);
                st.eta_s = Some(p.eta.as_secs_f64());
                // With nothing held out the trainer reports an empty validation: no PSNR.
                if let Some(v) = p.val.as_ref().filter(|_| st.validation.holdout_images > 0) {
                    st.val_psnr = Some(v.mean_psnr());
                }
                if checkpoint {
                    st.checkpoint_step = Some(p.step);
                }
            });
            if persist {
                persisted = Instant::now();
            }
            // A job cancel reaches the trainer through its token; a shutdown through here.
            if self.shutdown.load(Ordering::SeqCst) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        match result {
            Ok(summary) => Outcome::Done(summary.last_val),
            Err(partialconv::Error::Interrupted { step }) if cancel.load(Ordering::SeqCst) => {
                Outcome::Cancelled(step)
            }
            Err(partialconv::Error::Interrupted { step }) => Outcome::Stopped(step),
            Err(e) => Outcome::Failed(e.to_string()),
        }
    }

    /// Publishes how the job ended. The history event is recorded before the status
    /// changes, so a client that sees the final state finds the event too.
    fn finish(&self, id: Uuid, outcome: Outcome) {
        let phase = match &outcome {
            Outcome::Done(_) => "done",
            Outcome::Cancelled(_) => "cancelled",
            Outcome::Failed(_) => "failed",
            Outcome::Stopped(_) => "stopped",
        };
        let (tx, _) = self.entry(id);
        let mut st = tx.borrow().clone();
        st.eta_s = None;
        match outcome {
            Outcome::Done(val) => {
                st.state = JobState::Done;
                st.step = st.total_steps;
                if let Some(v) = val.as_ref().filter(|_| st.validation.holdout_images > 0) {
                    st.val_psnr = Some(v.mean_psnr());
                    st.validation.finetuned = Some(Scores::from(v));
                }
            }
            Outcome::Cancelled(step) => {
                st.state = JobState::Cancelled;
                st.checkpoint_step = Some(step);
            }
            Outcome::Stopped(step) => st.checkpoint_step = Some(step),
            Outcome::Failed(e) => {
                tracing::warn!(job = %id, "fine-tune job failed: {e}");
                st.state = JobState::Failed;
                st.error = Some(e);
            }
        }
        if st.state.is_over() {
            st.finished_at = Some(now());
        }
        if phase != "stopped" {
            self.runtime.block_on(self.record(&st, phase));
        }
        self.update(id, true, |status| *status = st);
    }

    /// A `finetune` history event: `strategy` carries the phase, `model_id` the job (and
    /// model) id, `model_version` the base model's id.
    async fn record(&self, status: &JobStatus, phase: &str) {
        let Some(sink) = self.history.clone() else {
            return;
        };
        let mut ev = HistoryEvent::finetune(&status.user_id)
            .with_model(status.job_id.to_string(), status.base_model.clone())
            .with_strategy(phase)
            .with_device(format!("{:?}", self.settings.device).to_lowercase());
        if let (Some(start), Some(end)) = (&status.started_at, &status.finished_at) {
            if let (Ok(a), Ok(b)) = (
                chrono::DateTime::parse_from_rfc3339(start),
                chrono::DateTime::parse_from_rfc3339(end),
            ) {
                ev = ev.with_latency_ms((b - a).num_milliseconds().max(0) as u64);
            }
        }
        if let Some(e) = &status.error {
            ev = ev.with_error(e.clone());
        }
        // As for inpainting: a sink that is down never fails a job.
        crate::history::record(&sink, ev, &self.metrics).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holdout_is_about_fifteen_percent_and_leaves_two_to_train() {
        assert!(holdout(2).is_empty());
        assert_eq!(holdout(3), vec![1]);
        assert_eq!(holdout(4).len(), 1);
        let h = holdout(200);
        assert_eq!(h.len(), 30);
        assert!(h.windows(2).all(|w| w[0] < w[1]) && *h.last().unwrap() < 200);
        for n in 3..50 {
            let h = holdout(n);
            assert!(n - h.len() >= 2 && !h.is_empty(), "{n}");
        }
    }
}
