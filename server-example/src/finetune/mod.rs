//! Fine-tune jobs: an upload becomes a queued job, a training thread on some replica claims
//! it and trains it with [`FineTuner`], and every replica answers for every job.
//!
//! State lives where all replicas can reach it:
//! - the job records in SQL ([`JobQueue`]: SQLite in the data folder, or MySQL), with the
//!   claim of the replica training each job and its lease, renewed by heartbeat;
//! - the files in the job file store (the image store's backend: a folder, or S3), under
//!   `jobs/<job id>/`: `train/` and `val/` (photos, under names the server chose),
//!   `checkpoint.safetensors` (weights, Adam state, step) and, once done,
//!   `model.safetensors`.
//!
//! Under `DATA_DIR/finetune/`, per process: `work/<job id>/` while this replica trains a job,
//! and `imported/`, the job folders of an earlier version once moved into the above.
//!
//! The training thread gets fewer libtorch intra-op threads and a higher nice value than
//! the inference workers, so inference latency stays bounded while a job trains (figures in
//! `docs/benchmarks.md`). libtorch's intra-op thread count is per thread (OpenMP's
//! `nthreads-var`) once a thread has initialised it, which is what makes this work; see
//! [`threads`].

mod jobs;
mod queue;
mod settings;
mod status;
mod store;
mod upload;
mod worker;

pub use jobs::{FineTunes, JobsConfig};
pub use queue::JobQueue;
pub use settings::FinetuneSettings;
pub use status::{ImageCounts, JobState, JobStatus, Scores, Validation};
pub use upload::{holdout, prepare, Photo, Prepared, Upload, HOLDOUT_FRACTION, MAX_NAME_LEN};
