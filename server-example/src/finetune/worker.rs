//! The training thread: claims the next job from the shared queue, keeps its claim alive by
//! heartbeat, trains it with [`FineTuner`] at a lower priority than inference, stores its
//! checkpoints and model, publishes its progress and records how it ended.

use std::ops::ControlFlow;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use history_sink::HistoryEvent;
use partialconv::eval::ValReport;
use partialconv::train::{CancelToken, FineTuner, TrainConfig};
use partialconv::ModelSource;
use tokio::sync::watch;
use uuid::Uuid;

use super::jobs::{Inner, Running};
use super::queue::{Beat, Claim};
use super::status::{now, JobState, JobStatus, Scores};
use super::store::{checkpoint_name, WorkDir};
use crate::models::stored_model_name;
use crate::threads;

/// How often an idle training thread looks for jobs queued on other replicas (a job queued
/// here wakes it at once).
const POLL: Duration = Duration::from_secs(1);

/// Progress is written to the job's record at most this often, besides checkpoints,
/// validations and the end: what pollers and event streams on any replica see.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

enum Outcome {
    Done(Option<ValReport>),
    Cancelled(u64),
    /// The server is stopping, or the store could not be reached: the claim is given up and
    /// the job resumes from its stored checkpoint on the next replica to claim it.
    Stopped(Option<u64>),
    /// Another replica claimed the job (this one's lease ran out): nothing more is written.
    Lost,
    Failed(String),
}

/// A job this replica holds.
struct Job {
    id: Uuid,
    token: Uuid,
    /// The status as this replica last wrote it.
    status: JobStatus,
    /// Stops the trainer after its current step: a cancel, a lost claim or a shutdown.
    cancel: Arc<AtomicBool>,
    /// Set by the heartbeat when another replica has the job now.
    lost: Arc<AtomicBool>,
    work: WorkDir,
    last_save: Instant,
    /// Every change, for event streams on this replica.
    live: watch::Sender<JobStatus>,
}

impl Inner {
    /// The training thread: runs jobs one at a time until the server stops.
    pub(super) fn work(self: Arc<Self>) {
        threads::lower_priority(self.settings.threads, self.settings.nice);
        while let Some(claim) = self.next_claim() {
            self.metrics.finetune_claims.fetch_add(1, Ordering::Relaxed);
            let id = claim.status.job_id;
            let (live, watched) = watch::channel(claim.status.clone());
            let mut job = Job {
                id,
                token: claim.token,
                status: claim.status,
                cancel: Arc::new(AtomicBool::new(claim.cancel)),
                lost: Arc::new(AtomicBool::new(false)),
                work: WorkDir(self.work.join(id.to_string())),
                last_save: Instant::now(),
                live,
            };
            tracing::info!(job = %job.id, replica = %self.replica, "claimed a fine-tune job");
            *self.running.lock().unwrap() = Some(Running {
                id,
                cancel: job.cancel.clone(),
                live: watched,
            });
            self.started.send_replace(Some(id));
            let heartbeat = self.runtime.spawn(self.clone().heartbeat(&job));
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| self.run(&mut job)))
                .unwrap_or_else(|_| Outcome::Failed("training panicked".into()));
            let stopped = matches!(outcome, Outcome::Stopped(_));
            self.finish(&mut job, outcome);
            heartbeat.abort();
            // In this order, so a stream woken by `started` always finds the job running.
            self.started.send_replace(None);
            *self.running.lock().unwrap() = None;
            job.work.remove();
            if stopped && !self.shutdown.load(Ordering::SeqCst) {
                // The store or the database failed: let it recover before claiming again.
                std::thread::sleep(POLL);
            }
        }
    }

    /// The next job claimed from the queue; `None` once the server stops.
    fn next_claim(&self) -> Option<Claim> {
        loop {
            if self.shutdown.load(Ordering::SeqCst) {
                return None;
            }
            match self
                .runtime
                .block_on(self.queue.claim(&self.replica, self.lease))
            {
                Ok(Some(claim)) => return Some(claim),
                Ok(None) => {}
                Err(e) => tracing::warn!("claiming a fine-tune job: {e}"),
            }
            let mut kicked = self.kick.lock().unwrap();
            if !*kicked {
                kicked = self.wake.wait_timeout(kicked, POLL).unwrap().0;
            }
            *kicked = false;
        }
    }

    /// Renews the claim every third of the lease until aborted; passes a cancel asked on
    /// any replica to the trainer, and stops it when another replica has the job.
    fn heartbeat(self: Arc<Self>, job: &Job) -> impl std::future::Future<Output = ()> + use<> {
        let (id, token) = (job.id, job.token);
        let (cancel, lost) = (job.cancel.clone(), job.lost.clone());
        async move {
            let mut every = tokio::time::interval(self.lease / 3);
            loop {
                every.tick().await;
                match self.queue.heartbeat(id, token, self.lease).await {
                    Ok(Beat::Held { cancel: asked }) => {
                        if asked {
                            cancel.store(true, Ordering::SeqCst);
                        }
                    }
                    Ok(Beat::Lost) => {
                        tracing::warn!(job = %id, "another replica has claimed this job");
                        lost.store(true, Ordering::SeqCst);
                        cancel.store(true, Ordering::SeqCst);
                        return;
                    }
                    // Kept trying: if the database stays away past the lease, another
                    // replica may claim the job, and the next write here finds that out.
                    Err(e) => tracing::warn!(job = %id, "fine-tune heartbeat: {e}"),
                }
            }
        }
    }

    /// Changes the job's status, writes it to its record when `persist` (or when the last
    /// write is older than [`PROGRESS_EVERY`]), then publishes it here; written first, so
    /// that what a client has seen (a final state above all) is what every replica has. A
    /// write refused because the claim is gone stops the trainer.
    fn update(&self, job: &mut Job, persist: bool, f: impl FnOnce(&mut JobStatus)) {
        f(&mut job.status);
        if persist || job.last_save.elapsed() >= PROGRESS_EVERY {
            self.save(job);
        }
        job.live.send_replace(job.status.clone());
    }

    fn save(&self, job: &mut Job) {
        match self
            .runtime
            .block_on(self.queue.save(job.token, &job.status))
        {
            Ok(true) => job.last_save = Instant::now(),
            Ok(false) => {
                job.lost.store(true, Ordering::SeqCst);
                job.cancel.store(true, Ordering::SeqCst);
            }
            Err(e) => tracing::warn!(job = %job.id, "writing the job's status: {e}"),
        }
    }

    /// The model a job starts from when it names no base: the server's default.
    fn default_base(&self) -> Result<ModelSource, String> {
        ModelSource::resolve(self.settings.default_model.as_deref())
            .map_err(|_| "this build has no bundled model; start the server with --model".into())
    }

    fn base(&self, status: &JobStatus) -> Result<ModelSource, String> {
        let Ok(base) = status.base_model.parse::<Uuid>() else {
            return self.default_base();
        };
        match self.runtime.block_on(self.models.fetch(base)) {
            Ok(()) => Ok(ModelSource::File(self.models.model_path(base))),
            Err(e) => Err(format!("base model {}: {e}", status.base_model)),
        }
    }

    fn run(&self, job: &mut Job) -> Outcome {
        let id = job.id;
        if job.cancel.load(Ordering::SeqCst) {
            // Cancelled while no replica held it: keep the stored checkpoint, train nothing.
            return Outcome::Cancelled(job.status.checkpoint_step.unwrap_or(0));
        }
        if let Err(e) = self.runtime.block_on(job.work.fetch(&self.files, id)) {
            tracing::error!(job = %id, "fetching the job's files from the store: {e}");
            return Outcome::Stopped(None);
        }
        let base = match self.base(&job.status) {
            Ok(b) => b,
            Err(e) => return Outcome::Failed(e),
        };
        let s = &self.settings;
        let mut cfg = TrainConfig::new(job.work.0.join("train"), job.work.model());
        cfg.val_data = Some(job.work.0.join("val"));
        cfg.run_dir = job.work.run();
        cfg.base = Some(base);
        cfg.steps = job.status.total_steps;
        cfg.stage2_at = 0; // fine-tuning runs the paper's second stage throughout
        cfg.batch_size = s.batch;
        cfg.train_size = s.train_size;
        cfg.photo_side = s.train_size * 2;
        cfg.val_size = s.val_size;
        cfg.max_val_images = job.status.validation.holdout_images;
        cfg.val_every = s.val_every.max(1);
        cfg.checkpoint_every = s.checkpoint_every.max(1);
        cfg.vgg = s.vgg.clone();
        cfg.device = s.device;
        cfg.loader_threads = 1;
        cfg.seed = id.as_u128() as u64;
        let mut tuner = match FineTuner::new(cfg) {
            Ok(t) => t.with_cancel_token(CancelToken::from(job.cancel.clone())),
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        let resumed = tuner.step();
        let counts = job.status.images.clone();
        let replica = self.replica.clone();
        self.update(job, true, |st| {
            st.state = JobState::Running;
            st.started_at.get_or_insert_with(now);
            st.replica = Some(replica);
            st.step = resumed;
            if resumed > 0 {
                st.resumed_from_step = Some(resumed);
                st.checkpoint_step = Some(resumed);
            }
            // Files the upload skipped plus stored ones the trainer could not decode;
            // recomputed, not added, so a resumed job does not count them twice.
            st.images.skipped = counts
                .received
                .saturating_sub(counts.train + counts.holdout)
                + tuner.skipped_images();
        });
        if job.status.validation.base.is_none()
            && job.status.validation.holdout_images > 0
            && resumed == 0
        {
            match tuner.validate() {
                Ok(report) => self.update(job, true, |st| {
                    st.validation.base = Some(Scores::from(&report));
                }),
                Err(e) => return Outcome::Failed(format!("validating the base model: {e}")),
            }
        }
        let checkpoint_file = job.work.checkpoint();
        let result = tuner.run(|p| {
            self.metrics.finetune_steps.fetch_add(1, Ordering::Relaxed);
            if p.checkpoint {
                self.store_checkpoint(job.id, &checkpoint_file);
            }
            self.update(job, p.checkpoint || p.val.is_some(), |st| {
                st.step = p.step;
                st.total_steps = p.total;
                st.loss = p.loss.is_finite().then_some(p.loss);
                st.eta_s = Some(p.eta.as_secs_f64());
                // With nothing held out the trainer reports an empty validation: no PSNR.
                if let Some(v) = p.val.as_ref().filter(|_| st.validation.holdout_images > 0) {
                    st.val_psnr = Some(v.mean_psnr());
                }
                if p.checkpoint {
                    st.checkpoint_step = Some(p.step);
                }
            });
            // A cancel or a lost claim reaches the trainer through its token; a shutdown
            // through here.
            if self.shutdown.load(Ordering::SeqCst) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        if job.lost.load(Ordering::SeqCst) {
            return Outcome::Lost;
        }
        match result {
            Ok(summary) => Outcome::Done(summary.last_val),
            Err(partialconv::Error::Interrupted { step }) if job.cancel.load(Ordering::SeqCst) => {
                Outcome::Cancelled(step)
            }
            Err(partialconv::Error::Interrupted { step }) => Outcome::Stopped(Some(step)),
            Err(e) => Outcome::Failed(e.to_string()),
        }
    }

    /// Copies the checkpoint the trainer just wrote to the store, where a replica that
    /// takes the job over resumes from it. A failure keeps the previous stored one.
    fn store_checkpoint(&self, id: Uuid, file: &std::path::Path) {
        if let Err(e) = self
            .runtime
            .block_on(self.files.put_file(&checkpoint_name(id), file))
        {
            tracing::warn!(job = %id, "storing a checkpoint: {e}");
        }
    }

    /// Publishes how the job ended. The model is in the store, and the history event
    /// recorded, before the record says so, so a client that sees the final state finds both.
    fn finish(&self, job: &mut Job, outcome: Outcome) {
        let id = job.id;
        let mut outcome = outcome;
        if let Outcome::Done(_) = outcome {
            if let Err(e) = self.runtime.block_on(
                self.files
                    .put_file(&stored_model_name(id), &job.work.model()),
            ) {
                // The final checkpoint is stored below; the next claim saves the model again.
                tracing::error!(job = %id, "storing the finished model: {e}");
                outcome = Outcome::Stopped(Some(job.status.total_steps));
            }
        }
        let phase = match &outcome {
            Outcome::Done(_) => "done",
            Outcome::Cancelled(_) => "cancelled",
            Outcome::Failed(_) => "failed",
            Outcome::Stopped(step) => {
                if let Some(step) = *step {
                    self.store_checkpoint(id, &job.work.checkpoint());
                    self.update(job, true, |st| {
                        st.step = step;
                        st.checkpoint_step = Some(step);
                        st.eta_s = None;
                    });
                }
                if let Err(e) = self.runtime.block_on(self.queue.release(id, job.token)) {
                    // The lease runs out instead, and the job is claimed again then.
                    tracing::warn!(job = %id, "giving the job's claim up: {e}");
                }
                return;
            }
            Outcome::Lost => {
                tracing::warn!(job = %id, "stopped training: another replica has the job");
                return;
            }
        };
        let mut st = job.status.clone();
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
                if job.work.checkpoint().is_file() {
                    self.store_checkpoint(id, &job.work.checkpoint());
                }
                st.state = JobState::Cancelled;
                st.checkpoint_step = Some(step);
            }
            Outcome::Failed(e) => {
                tracing::warn!(job = %id, "fine-tune job failed: {e}");
                st.state = JobState::Failed;
                st.error = Some(e);
            }
            Outcome::Stopped(_) | Outcome::Lost => unreachable!("returned above"),
        }
        st.finished_at = Some(now());
        self.runtime.block_on(self.record(&st, phase));
        self.update(job, true, |status| *status = st);
    }

    /// A `finetune` history event: `strategy` carries the phase, `model_id` the job (and
    /// model) id, `model_version` the base model's id.
    pub(super) async fn record(&self, status: &JobStatus, phase: &str) {
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
