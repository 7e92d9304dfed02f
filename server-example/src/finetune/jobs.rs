//! The job manager, [`FineTunes`]: admits uploads, queues jobs in SQL, answers status, list,
//! events and cancel from the shared record (so every replica answers for every job), and
//! owns this replica's training thread.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use history_sink::{FileStore, HistorySink};
use tokio::sync::{watch, Semaphore, SemaphorePermit};
use uuid::Uuid;

use super::queue::JobQueue;
use super::settings::FinetuneSettings;
use super::status::{now, ImageCounts, JobState, JobStatus, Validation};
use super::store::{self, job_prefix, photo_name};
use super::upload::{self, holdout, Prepared, Upload};
use crate::error::AppError;
use crate::identity;
use crate::metrics::Metrics;
use crate::models::{ModelKey, ModelRegistry};

/// Fine-tune uploads read and checked at once: each may hold the largest allowed body in
/// memory, so this bounds what uploads take to about this many times `--finetune-max-mb`.
const CONCURRENT_UPLOADS: usize = 2;

/// How often an event stream reads its job's record: progress written by whichever
/// replica trains the job reaches every replica's streams this fast.
const EVENTS_POLL: Duration = Duration::from_millis(200);

/// How often a waiting cancel reads the job's record.
const CANCEL_POLL: Duration = Duration::from_millis(100);

/// What the handle and the training thread share.
pub(super) struct Inner {
    pub(super) settings: FinetuneSettings,
    pub(super) queue: JobQueue,
    /// Photos, checkpoints and models, shared by the replicas.
    pub(super) files: FileStore,
    /// This replica's work folders, `DATA_DIR/finetune/work`.
    pub(super) work: PathBuf,
    /// This replica's name in claims (`host:pid`).
    pub(super) replica: String,
    /// How long a claim lasts without a heartbeat (`--job-lease-secs`).
    pub(super) lease: Duration,
    /// The job this replica trains, if any.
    pub(super) running: Mutex<Option<Running>>,
    /// The id of the job this replica has just started to train: wakes the event streams
    /// waiting for it, so that they follow it step by step from its first step.
    pub(super) started: watch::Sender<Option<Uuid>>,
    /// Set (and `wake` notified) when a job was queued here or the server is stopping.
    pub(super) kick: Mutex<bool>,
    pub(super) wake: Condvar,
    pub(super) shutdown: AtomicBool,
    /// Flips to true on shutdown, ending the event streams.
    pub(super) closing: watch::Sender<bool>,
    pub(super) history: Option<Arc<dyn HistorySink>>,
    pub(super) metrics: Arc<Metrics>,
    /// The server's runtime, for the database, the store and history from the training
    /// thread.
    pub(super) runtime: tokio::runtime::Handle,
    pub(super) models: Arc<ModelRegistry>,
}

/// The job this replica trains: what a cancel or an event stream asked here reaches directly.
pub(super) struct Running {
    pub(super) id: Uuid,
    /// Stops the trainer after its current step.
    pub(super) cancel: Arc<AtomicBool>,
    /// Every status change, step by step (the record gets them at most every 250 ms).
    pub(super) live: watch::Receiver<JobStatus>,
}

/// Where the jobs live and how this replica takes part.
pub struct JobsConfig {
    /// `DATA_DIR/finetune`: this replica's work folders, and jobs of an earlier version.
    pub root: PathBuf,
    /// The job records.
    pub queue: JobQueue,
    /// Photos, checkpoints and models.
    pub files: FileStore,
    /// This replica's name in claims.
    pub replica: String,
    /// How long a claim lasts without a heartbeat.
    pub lease: Duration,
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
    /// Imports the jobs an earlier version kept on disk, then starts the training thread,
    /// which claims jobs from the shared queue: a running one whose replica stopped first
    /// (from its last checkpoint), then the oldest queued one. Must be called inside a tokio
    /// runtime.
    pub async fn open(
        jobs: JobsConfig,
        settings: FinetuneSettings,
        models: Arc<ModelRegistry>,
        history: Option<Arc<dyn HistorySink>>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let imported = store::import_legacy(&jobs.root, &jobs.queue, &jobs.files).await?;
        if imported > 0 {
            tracing::info!(
                "imported {imported} fine-tune jobs from {}",
                jobs.root.display()
            );
        }
        let work = jobs.root.join("work");
        std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
        let inner = Arc::new(Inner {
            settings,
            queue: jobs.queue,
            files: jobs.files,
            work,
            replica: jobs.replica,
            lease: jobs.lease,
            running: Mutex::new(None),
            started: watch::Sender::new(None),
            kick: Mutex::new(false),
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
                .spawn(move || inner.work())
                .map_err(|e| e.to_string())?
        };
        Ok(Self {
            inner,
            worker: Mutex::new(Some(worker)),
            uploads: Semaphore::new(CONCURRENT_UPLOADS),
        })
    }

    /// The limits and training parameters jobs run with.
    pub fn settings(&self) -> &FinetuneSettings {
        &self.inner.settings
    }

    /// This replica's name, as jobs it trains record it.
    pub fn replica(&self) -> &str {
        &self.inner.replica
    }

    /// A slot for one upload, taken before its body is read (a permit taken only after
    /// the body is in memory would bound nothing); 503 while all are taken.
    pub fn admit_upload(&self) -> Result<SemaphorePermit<'_>, AppError> {
        self.uploads.try_acquire().map_err(|_| AppError::Overloaded)
    }

    /// Checks an upload off the async threads; a base model must be a finished job that
    /// `scope` may see.
    pub async fn prepare(&self, upload: Upload, scope: Option<&str>) -> Result<Prepared, AppError> {
        // Before decoding every photo: a user already at the limit gets the 429 cheaply.
        // `submit` checks again, atomically, for uploads that race.
        if let Ok(user) = identity::user_or_anonymous(upload.user_id.clone()) {
            self.check_quota(&user).await?;
        }
        let inner = self.inner.clone();
        let prepared =
            tokio::task::spawn_blocking(move || upload::prepare(upload, &inner.settings))
                .await
                .map_err(AppError::internal)??;
        if let ModelKey::Tuned(base) = prepared.base {
            self.usable_model(base, scope).await?;
        }
        Ok(prepared)
    }

    /// Stores the photos, queues the job and records the `queued` event.
    pub async fn submit(&self, p: Prepared) -> Result<JobStatus, AppError> {
        self.check_quota(&p.user_id).await?;
        let id = Uuid::now_v7();
        let held = holdout(p.photos.len());
        let mut images = ImageCounts {
            received: p.received,
            skipped: p.skipped,
            ..Default::default()
        };
        let mut files = Vec::with_capacity(p.photos.len());
        for (i, photo) in p.photos.into_iter().enumerate() {
            let folder = if held.contains(&i) { "val" } else { "train" };
            if folder == "val" {
                images.holdout += 1;
            } else {
                images.train += 1;
            }
            images.bytes += photo.bytes.len() as u64;
            files.push((
                photo_name(id, folder, &format!("{i:04}.{}", photo.ext)),
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
            replica: None,
            error: None,
        };
        // The photos first: a replica that claims the job finds them all.
        let stored = async {
            for (name, bytes) in files {
                self.inner.files.put(&name, bytes).await?;
            }
            Ok::<_, history_sink::HistoryError>(())
        };
        if let Err(e) = stored.await {
            self.forget_files(id).await;
            return Err(AppError::jobs(e));
        }
        let admitted = self
            .inner
            .queue
            .insert(&status, self.inner.settings.max_queued)
            .await;
        match admitted {
            Ok(true) => {}
            Ok(false) => {
                self.forget_files(id).await;
                return Err(AppError::TooManyJobs {
                    user: status.user_id.clone(),
                    limit: self.inner.settings.max_queued,
                });
            }
            Err(e) => {
                self.forget_files(id).await;
                return Err(AppError::jobs(e));
            }
        }
        self.inner.kick();
        self.inner.record(&status, "queued").await;
        Ok(status)
    }

    async fn forget_files(&self, id: Uuid) {
        if let Err(e) = self.inner.files.delete_prefix(&job_prefix(id)).await {
            tracing::warn!(job = %id, "removing the photos of a job that was not queued: {e}");
        }
    }

    async fn check_quota(&self, user: &str) -> Result<(), AppError> {
        let active = self
            .inner
            .queue
            .active(user)
            .await
            .map_err(AppError::jobs)?;
        if active >= self.inner.settings.max_queued {
            return Err(AppError::TooManyJobs {
                user: user.to_owned(),
                limit: self.inner.settings.max_queued,
            });
        }
        Ok(())
    }

    /// A job's status now; 404 `unknown_job` for an id no replica knows, and for another
    /// user's job when `scope` names the caller (so that ids cannot be probed).
    pub async fn status(&self, id: &str, scope: Option<&str>) -> Result<JobStatus, AppError> {
        self.visible(parse_job_id(id)?, scope).await
    }

    async fn visible(&self, id: Uuid, scope: Option<&str>) -> Result<JobStatus, AppError> {
        self.inner
            .queue
            .get(id)
            .await
            .map_err(AppError::jobs)?
            .filter(|s| scope.is_none_or(|me| s.user_id == me))
            .ok_or_else(|| AppError::UnknownJob(id.to_string()))
    }

    /// Checks that `id` names a finished job `scope` may use, and has its model copied here:
    /// 404 `unknown_model` otherwise, as for a model that does not exist.
    pub async fn usable_model(&self, id: Uuid, scope: Option<&str>) -> Result<(), AppError> {
        match self.visible(id, scope).await {
            Ok(s) if s.state == JobState::Done => self.inner.models.fetch(id).await,
            Ok(_) | Err(AppError::UnknownJob(_)) => Err(AppError::UnknownModel(id.to_string())),
            Err(e) => Err(e),
        }
    }

    /// Deletes a job that is over, with its model, photos and checkpoint: its owner's
    /// `DELETE /api/v1/models/{id}`. A queued or running job is 409 `job_active` (cancel it
    /// first); another user's is 404, as one that does not exist.
    pub async fn delete(&self, id: &str, scope: Option<&str>) -> Result<JobStatus, AppError> {
        let id = parse_job_id(id)?;
        let status = self.visible(id, scope).await?;
        let active = || {
            AppError::JobActive(format!(
                "job {id} is still {}; cancel it first (DELETE /api/v1/finetune/{id})",
                status.state.as_str()
            ))
        };
        if !status.state.is_over() {
            return Err(active());
        }
        // Out of the queue first: from here on the id is unknown on every replica, even if
        // removing the files fails half-way (they are then logged, and orphans, not served).
        if !self.inner.queue.delete(id).await.map_err(AppError::jobs)? {
            return Err(active());
        }
        self.inner.models.unload(id);
        if let Err(e) = self.inner.files.delete_prefix(&job_prefix(id)).await {
            tracing::error!(job = %id, "removing the files of a deleted job: {e}");
        }
        Ok(status)
    }

    /// Every job, oldest first; only `user`'s when given.
    pub async fn list(&self, user: Option<&str>) -> Result<Vec<JobStatus>, AppError> {
        self.inner
            .queue
            .list(user, None)
            .await
            .map_err(AppError::jobs)
    }

    /// Finished jobs, whose models can be used: oldest first.
    pub async fn finished(&self) -> Result<Vec<JobStatus>, AppError> {
        self.inner
            .queue
            .list(None, Some(JobState::Done))
            .await
            .map_err(AppError::jobs)
    }

    /// The status now and at every change, read from the shared record, until the job is
    /// over or the server stops.
    pub async fn subscribe(
        &self,
        id: &str,
        scope: Option<&str>,
    ) -> Result<(watch::Receiver<JobStatus>, watch::Receiver<bool>), AppError> {
        let id = parse_job_id(id)?;
        let first = self.visible(id, scope).await?;
        let (tx, rx) = watch::channel(first.clone());
        let mut closing = self.inner.closing.subscribe();
        let mut started = self.inner.started.subscribe();
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let mut last = first;
            while !last.state.is_over() {
                // Trained here: every step as it happens, until the job ends or stops here.
                if let Some(mut live) = inner.live(id) {
                    loop {
                        let status = live.borrow_and_update().clone();
                        if status != last {
                            last = status.clone();
                            tx.send_replace(status);
                        }
                        if last.state.is_over() {
                            return;
                        }
                        tokio::select! {
                            changed = live.changed() => if changed.is_err() { break },
                            _ = tx.closed() => return,
                            _ = closing.wait_for(|c| *c) => return,
                        }
                    }
                }
                // Trained elsewhere (or waiting): the shared record, unless it starts here.
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = closing.wait_for(|c| *c) => return,
                    _ = started.wait_for(|s| *s == Some(id)) => continue,
                    _ = tokio::time::sleep(EVENTS_POLL) => {}
                }
                match inner.queue.get(id).await {
                    Ok(Some(status)) if status != last => {
                        last = status.clone();
                        tx.send_replace(status);
                    }
                    Ok(Some(_)) => {}
                    // Deleted while watched: nothing more will come.
                    Ok(None) => return,
                    Err(e) => tracing::warn!(job = %id, "reading the job for its events: {e}"),
                }
            }
        });
        Ok((rx, self.inner.closing.subscribe()))
    }

    /// Cancels a queued job at once, or asks whichever replica runs it to stop after its
    /// current step (saving a checkpoint) and waits up to `wait` for it.
    pub async fn cancel(
        &self,
        id: &str,
        scope: Option<&str>,
        wait: Duration,
    ) -> Result<JobStatus, AppError> {
        let id = parse_job_id(id)?;
        let status = self.visible(id, scope).await?;
        if status.state.is_over() {
            return Err(AppError::JobFinished(format!(
                "job {id} is already {}",
                status.state.as_str()
            )));
        }
        if status.state == JobState::Queued {
            let mut cancelled = status.clone();
            cancelled.state = JobState::Cancelled;
            cancelled.finished_at = Some(now());
            // Atomic: a replica that claimed it meanwhile gets the stop request below.
            if self
                .inner
                .queue
                .cancel_queued(&cancelled)
                .await
                .map_err(AppError::jobs)?
            {
                self.inner.record(&cancelled, "cancelled").await;
                return Ok(cancelled);
            }
        }
        self.inner
            .queue
            .request_cancel(id)
            .await
            .map_err(AppError::jobs)?;
        // Here at once; on another replica at its next heartbeat.
        if let Some(running) = &*self.inner.running.lock().unwrap() {
            if running.id == id {
                running.cancel.store(true, Ordering::SeqCst);
            }
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let status = self.visible(id, None).await?;
            if status.state.is_over() || tokio::time::Instant::now() >= deadline {
                return Ok(status);
            }
            tokio::time::sleep(CANCEL_POLL).await;
        }
    }

    /// Stops the training thread, which saves and stores a checkpoint of a running job and
    /// gives its claim up, so the next replica (or this one, restarted) resumes it. Waits.
    pub async fn shutdown(&self) {
        self.inner.begin_shutdown();
        let handle = self.worker.lock().unwrap().take();
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }
}

/// A job id from a URL; 404 `unknown_job` when it is not one.
fn parse_job_id(id: &str) -> Result<Uuid, AppError> {
    Uuid::parse_str(id).map_err(|_| AppError::UnknownJob(id.chars().take(64).collect()))
}

impl Inner {
    /// The step-by-step status of job `id` if this replica trains it.
    fn live(&self, id: Uuid) -> Option<watch::Receiver<JobStatus>> {
        let running = self.running.lock().unwrap();
        running
            .as_ref()
            .filter(|r| r.id == id)
            .map(|r| r.live.clone())
    }

    /// Wakes the training thread to look for work now rather than at its next poll.
    pub(super) fn kick(&self) {
        *self.kick.lock().unwrap() = true;
        self.wake.notify_all();
    }

    /// Stops the training thread after its current step and ends the event streams.
    pub(super) fn begin_shutdown(&self) {
        self.shutdown.store(true, Ordering::SeqCst);
        self.closing.send_replace(true);
        self.kick();
    }
}
