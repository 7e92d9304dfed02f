//! The job manager, [`FineTunes`]: admits uploads, queues jobs, answers status, list,
//! events and cancel, and owns the training thread.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use history_sink::HistorySink;
use tokio::sync::{watch, Semaphore, SemaphorePermit};
use uuid::Uuid;

use super::settings::FinetuneSettings;
use super::status::{now, ImageCounts, JobState, JobStatus, Validation};
use super::store::{self, active_jobs, parse_job_id, write_status, Entry, Table};
use super::upload::{self, holdout, Prepared, Upload};
use crate::error::AppError;
use crate::identity;
use crate::metrics::Metrics;
use crate::models::ModelRegistry;

/// Fine-tune uploads read and checked at once: each may hold the largest allowed body in
/// memory, so this bounds what uploads take to about this many times `--finetune-max-mb`.
const CONCURRENT_UPLOADS: usize = 2;

/// What the handle and the training thread share.
pub(super) struct Inner {
    pub(super) settings: FinetuneSettings,
    pub(super) table: Mutex<Table>,
    /// Wakes the training thread: a job was queued, or the server is stopping.
    pub(super) wake: Condvar,
    pub(super) shutdown: AtomicBool,
    /// Flips to true on shutdown, ending the event streams.
    pub(super) closing: watch::Sender<bool>,
    pub(super) history: Option<Arc<dyn HistorySink>>,
    pub(super) metrics: Arc<Metrics>,
    /// The server's runtime, for sending history events from the training thread.
    pub(super) runtime: tokio::runtime::Handle,
    pub(super) models: Arc<ModelRegistry>,
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
        let table = store::load(&jobs_dir)?;
        let inner = Arc::new(Inner {
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

    /// The limits and training parameters jobs run with.
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
        tokio::task::spawn_blocking(move || upload::prepare(upload, &inner.settings, &inner.models))
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
                table.insert(id, Entry::new(status.clone()));
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

    /// A job's status now; 404 `unknown_job` for an id the server does not know, and for
    /// another user's job when `scope` names the caller (so that ids cannot be probed).
    pub fn status(&self, id: &str, scope: Option<&str>) -> Result<JobStatus, AppError> {
        let id = parse_job_id(id)?;
        let table = self.inner.table.lock().unwrap();
        let entry = visible(&table, id, scope)?;
        let status = entry.tx.borrow().clone();
        Ok(status)
    }

    /// Deletes a job that is over, with its model, photos and checkpoints: its owner's
    /// `DELETE /api/v1/models/{id}`. A queued or running job is 409 `job_active` (cancel it
    /// first); another user's is 404, as one that does not exist.
    pub fn delete(&self, id: &str, scope: Option<&str>) -> Result<JobStatus, AppError> {
        let id = parse_job_id(id)?;
        let mut table = self.inner.table.lock().unwrap();
        let status = visible(&table, id, scope)?.tx.borrow().clone();
        if !status.state.is_over() {
            return Err(AppError::JobActive(format!(
                "job {id} is still {}; cancel it first (DELETE /api/v1/finetune/{id})",
                serde_json::to_value(status.state)
                    .unwrap_or_default()
                    .as_str()
                    .unwrap_or("active")
            )));
        }
        // Out of the table first: from here on the id is unknown, even if removing the
        // folder fails half-way (it is then logged, and the files are orphans, not served).
        table.remove(&id);
        drop(table);
        self.inner.models.unload(id);
        let dir = self.inner.models.job_dir(id);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::error!(job = %id, "removing {}: {e}", dir.display());
        }
        Ok(status)
    }

    /// Who submitted job `id`, if the server knows it.
    pub fn owner(&self, id: Uuid) -> Option<String> {
        let table = self.inner.table.lock().unwrap();
        table.get(&id).map(|e| e.tx.borrow().user_id.clone())
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
        scope: Option<&str>,
    ) -> Result<(watch::Receiver<JobStatus>, watch::Receiver<bool>), AppError> {
        let id = parse_job_id(id)?;
        let table = self.inner.table.lock().unwrap();
        let entry = visible(&table, id, scope)?;
        Ok((entry.tx.subscribe(), self.inner.closing.subscribe()))
    }

    /// Cancels a queued job at once, or asks the running one to stop after its current step
    /// (saving a checkpoint) and waits up to `wait` for it.
    pub async fn cancel(
        &self,
        id: &str,
        scope: Option<&str>,
        wait: Duration,
    ) -> Result<JobStatus, AppError> {
        let id = parse_job_id(id)?;
        let rx = {
            let table = self.inner.table.lock().unwrap();
            let entry = visible(&table, id, scope)?;
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

/// Job `id` if it exists and is `scope`'s (anyone's when `None`); else 404 `unknown_job`,
/// the same for a job that is someone else's as for one that does not exist.
fn visible<'a>(table: &'a Table, id: Uuid, scope: Option<&str>) -> Result<&'a Entry, AppError> {
    table
        .get(&id)
        .filter(|e| scope.is_none_or(|me| e.tx.borrow().user_id == me))
        .ok_or_else(|| AppError::UnknownJob(id.to_string()))
}

impl Inner {
    /// Stops the training thread after its current step and ends the event streams.
    pub(super) fn begin_shutdown(&self) {
        self.shutdown.store(true, Ordering::SeqCst);
        self.closing.send_replace(true);
        // Under the lock, so the worker cannot miss it between its check and its wait.
        let _table = self.table.lock().unwrap();
        self.wake.notify_all();
    }
}
