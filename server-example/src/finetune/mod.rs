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

mod jobs;
mod settings;
mod status;
mod store;
mod upload;
mod worker;

pub use jobs::FineTunes;
pub use settings::FinetuneSettings;
pub use status::{ImageCounts, JobState, JobStatus, Scores, Validation};
pub use upload::{holdout, prepare, Photo, Prepared, Upload, HOLDOUT_FRACTION, MAX_NAME_LEN};
