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
use crate::error::AppError;
use crate::models::stored_model_name;
use crate::threads;

/// How often an idle training thread looks for jobs queued on other replicas (a job queued
/// here wakes it at once).
const POLL: Duration = Duration::from_secs(1);

/// Progress is written to the job's record at most this often, besides checkpoints,
/// validations and the end: what pollers and event streams on any replica see, and how soon
/// a cancel asked on another replica reaches the trainer.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// How long a job whose files or base model could not be fetched waits before a replica
/// claims it again, so that queued jobs are not held up behind it.
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(10);

enum Outcome {
    Done(Option<ValReport>),
    Cancelled(u64),
    /// The claim is given up and the job resumes from its stored checkpoint on the next
    /// replica to claim it: at once when the server is stopping (`step`: where the trainer
    /// stopped), after [`RETRY_AFTER_ERROR`] when the store could not be reached.
    Stopped {
        step: Option<u64>,
        error: bool,
    },
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
            self.finish(&mut job, outcome);
            heartbeat.abort();
            // In this order, so a stream woken by `started` always finds the job running.
            self.started.send_replace(None);
            *self.running.lock().unwrap() = None;
            job.work.remove();
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
            let mut renewed = Instant::now();
            loop {
                every.tick().await;
                match self.queue.heartbeat(id, token, self.lease).await {
                    Ok(Beat::Held { cancel: asked }) => {
                        renewed = Instant::now();
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
                    // Two thirds of a lease without a renewal: another replica may claim the
                    // job when the lease runs out, so this one stops writing now, first.
                    Err(e) if renewed.elapsed() >= self.lease * 2 / 3 => {
                        tracing::warn!(job = %id, "cannot renew the claim ({e}); giving the job up");
                        lost.store(true, Ordering::SeqCst);
                        cancel.store(true, Ordering::SeqCst);
                        return;
                    }
                    Err(e) => tracing::warn!(job = %id, "fine-tune heartbeat: {e}"),
                }
            }
        }
    }

    /// Changes the job's status, writes it to its record when `persist` (or when the last
    /// write is older than [`PROGRESS_EVERY`]), then publishes it here; written first, so
    /// that what a client has seen (a final state above all) is what every replica has. A
    /// write refused because the claim is gone stops the trainer, and publishes nothing.
    fn update(&self, job: &mut Job, persist: bool, f: impl FnOnce(&mut JobStatus)) {
        f(&mut job.status);
        if persist || job.last_save.elapsed() >= PROGRESS_EVERY {
            self.save(job);
        }
        if !job.lost.load(Ordering::SeqCst) {
            job.live.send_replace(job.status.clone());
        }
    }

    /// Writes the status under the claim; `false` unless it was written. A cancel asked on
    /// any replica comes back with the write.
    fn save(&self, job: &mut Job) -> bool {
        if job.lost.load(Ordering::SeqCst) {
            return false;
        }
        match self
            .runtime
            .block_on(self.queue.save(job.token, &job.status))
        {
            Ok(Beat::Held { cancel }) => {
                job.last_save = Instant::now();
                if cancel {
                    job.cancel.store(true, Ordering::SeqCst);
                }
                true
            }
            Ok(Beat::Lost) => {
                job.lost.store(true, Ordering::SeqCst);
                job.cancel.store(true, Ordering::SeqCst);
                false
            }
            Err(e) => {
                tracing::warn!(job = %job.id, "writing the job's status: {e}");
                false
            }
        }
    }

    /// Writes a job's final status, retrying while the database is away (the heartbeat goes
    /// on meanwhile), so that a finished job is not trained again; gives up if the claim is
    /// lost or the server stops.
    fn save_final(&self, job: &mut Job) {
        loop {
            if self.save(job) {
                job.live.send_replace(job.status.clone());
                return;
            }
            if job.lost.load(Ordering::SeqCst) || self.shutdown.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(POLL);
        }
    }

    /// Whether the claim is still ours, renewing it: checked before what the next replica
    /// would otherwise overwrite or repeat (the final model, the history event).
    fn still_held(&self, job: &Job) -> bool {
        if job.lost.load(Ordering::SeqCst) {
            return false;
        }
        match self
            .runtime
            .block_on(self.queue.heartbeat(job.id, job.token, self.lease))
        {
            Ok(Beat::Held { .. }) => true,
            Ok(Beat::Lost) => {
                job.lost.store(true, Ordering::SeqCst);
                false
            }
            // Unknown: go on; the final save finds out, and retries.
            Err(e) => {
                tracing::warn!(job = %job.id, "checking the claim: {e}");
                true
            }
        }
    }

    /// The model a job starts from when it names no base: the server's default.
    fn default_base(&self) -> Result<ModelSource, String> {
        ModelSource::resolve(self.settings.default_model.as_deref())
            .map_err(|_| "this build has no bundled model; start the server with --model".into())
    }

    /// The model the job starts from, copied here when it is a fine-tuned one.
    fn base(&self, status: &JobStatus) -> Result<ModelSource, Outcome> {
        let Ok(base) = status.base_model.parse::<Uuid>() else {
            return self.default_base().map_err(Outcome::Failed);
        };
        match self.runtime.block_on(self.models.fetch(base)) {
            Ok(()) => Ok(ModelSource::File(self.models.model_path(base))),
            // The store is away: try again later rather than fail the job.
            Err(e @ AppError::JobsUnavailable(_)) => {
                tracing::warn!(job = %status.job_id, "fetching the base model: {e}");
                Err(Outcome::Stopped {
                    step: None,
                    error: true,
                })
            }
            Err(e) => Err(Outcome::Failed(format!(
                "base model {}: {e}",
                status.base_model
            ))),
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
            return Outcome::Stopped {
                step: None,
                error: true,
            };
        }
        let base = match self.base(&job.status) {
            Ok(b) => b,
            Err(outcome) => return outcome,
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
            // What this claim starts from, whatever an earlier claim recorded.
            st.resumed_from_step = (resumed > 0).then_some(resumed);
            st.checkpoint_step = (resumed > 0).then_some(resumed);
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
            let stored = p.checkpoint && self.store_checkpoint(job, &checkpoint_file);
            self.update(job, stored || p.val.is_some(), |st| {
                st.step = p.step;
                st.total_steps = p.total;
                st.loss = p.loss.is_finite().then_some(p.loss);
                st.eta_s = Some(p.eta.as_secs_f64());
                // With nothing held out the trainer reports an empty validation: no PSNR.
                if let Some(v) = p.val.as_ref().filter(|_| st.validation.holdout_images > 0) {
                    st.val_psnr = Some(v.mean_psnr());
                }
                if stored {
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
            Err(partialconv::Error::Interrupted { step }) => Outcome::Stopped {
                step: Some(step),
                error: false,
            },
            Err(e) => Outcome::Failed(e.to_string()),
        }
    }

    /// Copies the checkpoint the trainer just wrote to the store, where a replica that
    /// takes the job over resumes from it; `false` when it was not (a failure keeps the
    /// previous stored one, and a lost claim writes nothing).
    fn store_checkpoint(&self, job: &Job, file: &std::path::Path) -> bool {
        if job.lost.load(Ordering::SeqCst) {
            return false;
        }
        match self
            .runtime
            .block_on(self.files.put_file(&checkpoint_name(job.id), file))
        {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(job = %job.id, "storing a checkpoint: {e}");
                false
            }
        }
    }

    /// Publishes how the job ended. The model is in the store, and the history event
    /// recorded, before the record says so, so a client that sees the final state finds both.
    fn finish(&self, job: &mut Job, outcome: Outcome) {
        let id = job.id;
        if job.lost.load(Ordering::SeqCst) {
            tracing::warn!(job = %id, "stopped training: another replica has the job");
            return;
        }
        let mut outcome = outcome;
        if let Outcome::Done(_) = outcome {
            // The last checkpoint first: should the model not make it, the next claim starts
            // at the last step and only writes the model out.
            self.store_checkpoint(job, &job.work.checkpoint());
            let stored = self.runtime.block_on(
                self.files
                    .put_file(&stored_model_name(id), &job.work.model()),
            );
            if let Err(e) = stored {
                tracing::error!(job = %id, "storing the finished model: {e}");
                outcome = Outcome::Stopped {
                    step: None,
                    error: true,
                };
            }
        }
        let phase = match &outcome {
            Outcome::Done(_) => "done",
            Outcome::Cancelled(_) => "cancelled",
            Outcome::Failed(_) => "failed",
            Outcome::Stopped { step, error } => {
                if let Some(step) = *step {
                    if self.store_checkpoint(job, &job.work.checkpoint()) {
                        self.update(job, true, |st| {
                            st.step = step;
                            st.checkpoint_step = Some(step);
                            st.eta_s = None;
                        });
                    }
                }
                let retry = error.then_some(RETRY_AFTER_ERROR);
                if let Err(e) = self
                    .runtime
                    .block_on(self.queue.release(id, job.token, retry))
                {
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
                if job.work.checkpoint().is_file()
                    && self.store_checkpoint(job, &job.work.checkpoint())
                {
                    st.checkpoint_step = Some(step);
                }
                st.state = JobState::Cancelled;
            }
            Outcome::Failed(e) => {
                tracing::warn!(job = %id, "fine-tune job failed: {e}");
                st.state = JobState::Failed;
                st.error = Some(e);
            }
            Outcome::Stopped { .. } | Outcome::Lost => unreachable!("returned above"),
        }
        st.finished_at = Some(now());
        if !self.still_held(job) {
            tracing::warn!(job = %id, "another replica has the job; not recording its end");
            return;
        }
        self.runtime.block_on(self.record(&st, phase));
        job.status = st;
        self.save_final(job);
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
