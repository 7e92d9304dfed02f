//! The training thread: picks the next job, trains it with [`FineTuner`] at a lower
//! priority than inference, publishes its progress and records how it ended.

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

use super::jobs::Inner;
use super::status::{now, JobState, JobStatus, Scores};
use super::store::write_status;
use crate::models::MODEL_FILE;
use crate::threads;

enum Outcome {
    Done(Option<ValReport>),
    Cancelled(u64),
    /// The server is stopping: the job stays `running` and resumes at the next start.
    Stopped(u64),
    Failed(String),
}

impl Inner {
    /// The training thread: runs jobs one at a time until the server stops.
    pub(super) fn work(self: Arc<Self>) {
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

    /// The model a job starts from when it names no base: the server's default.
    fn default_base(&self) -> Result<ModelSource, String> {
        ModelSource::resolve(self.settings.default_model.as_deref())
            .map_err(|_| "this build has no bundled model; start the server with --model".into())
    }

    fn run(&self, id: Uuid) -> Outcome {
        let (tx, cancel) = self.entry(id);
        let status = tx.borrow().clone();
        let dir = self.models.job_dir(id);
        let s = &self.settings;
        let base = match status.base_model.parse::<Uuid>() {
            Ok(b) => Ok(ModelSource::File(self.models.model_path(b))),
            Err(_) => self.default_base(),
        };
        let base = match base {
            Ok(ModelSource::File(p)) if !p.is_file() => {
                tracing::warn!("base model file {} is missing", p.display());
                return Outcome::Failed(format!("base model {} is gone", status.base_model));
            }
            Ok(b) => b,
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
