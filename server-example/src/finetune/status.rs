//! A job's status: what `GET /api/v1/finetune/{id}` answers, the events stream sends and
//! the job database keeps.

use partialconv::eval::{BucketMetrics, ValReport};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Where a job is in its life; the last three are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for the training thread.
    Queued,
    /// Training (or stopped by a restart, to resume from its checkpoint).
    Running,
    /// Finished; its model can be used.
    Done,
    /// Ended with an error (`JobStatus::error`).
    Failed,
    /// Cancelled by its user.
    Cancelled,
}

impl JobState {
    /// The state as the API and the job database spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Whether the job has ended (done, failed or cancelled).
    pub fn is_over(self) -> bool {
        matches!(self, Self::Done | Self::Failed | Self::Cancelled)
    }
}

/// Validation metrics on the held-out photos: means over the hole-ratio buckets, and the
/// buckets themselves.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Scores {
    /// Mean PSNR over the buckets, in dB.
    pub mean_psnr: f64,
    /// Mean SSIM over the non-empty buckets.
    pub mean_ssim: f64,
    /// Mean L1 error over the non-empty buckets.
    pub mean_l1: f64,
    /// Per hole-ratio bucket.
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

/// The job's validation: the base and fine-tuned models on the same held-out photos.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Validation {
    /// Photos held out from training.
    pub holdout_images: usize,
    /// The base model on the held-out photos, measured before the first step.
    pub base: Option<Scores>,
    /// The fine-tuned model on the same photos and holes, after the last step.
    pub finetuned: Option<Scores>,
}

/// What became of the uploaded files.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ImageCounts {
    /// Files received (zip entries counted one by one).
    pub received: usize,
    /// Files that were not a readable PNG, JPEG or WebP, and were skipped.
    pub skipped: usize,
    /// Photos trained on.
    pub train: usize,
    /// Photos held out for validation.
    pub holdout: usize,
    /// Bytes of the usable photos.
    pub bytes: u64,
}

/// A job's status, as the API answers it and the job database keeps it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobStatus {
    /// The job's id, also the id of its model once done.
    pub job_id: Uuid,
    /// Where the job is.
    pub state: JobState,
    /// Who submitted it (`anonymous` when no one was named).
    pub user_id: String,
    /// The user's label; metadata only.
    pub name: Option<String>,
    /// The model it starts from: `default` or a finished job's id.
    pub base_model: String,
    /// When it was queued (RFC 3339).
    pub created_at: String,
    /// When it first started training.
    pub started_at: Option<String>,
    /// When it ended.
    pub finished_at: Option<String>,
    /// Steps done.
    pub step: u64,
    /// Steps asked for.
    pub total_steps: u64,
    /// Training loss at the latest step.
    pub loss: Option<f64>,
    /// Mean validation PSNR on the held-out photos at the latest validation.
    pub val_psnr: Option<f64>,
    /// Estimated seconds to the end, while running.
    pub eta_s: Option<f64>,
    /// What became of the uploaded files.
    pub images: ImageCounts,
    /// Base and fine-tuned scores on the held-out photos.
    pub validation: Validation,
    /// The step of the last checkpoint, kept after a cancel and resumed from after a restart.
    pub checkpoint_step: Option<u64>,
    /// Set when the job continued from a checkpoint: after a restart, or on another
    /// replica after the one training it stopped.
    pub resumed_from_step: Option<u64>,
    /// The replica (`host:pid`) training the job, or that trained it last.
    #[serde(default)]
    pub replica: Option<String>,
    /// Why the job failed.
    pub error: Option<String>,
}

pub(super) fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
