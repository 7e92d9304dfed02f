//! A job's status: what `GET /api/v1/finetune/{id}` answers, the events stream sends and
//! `job.json` keeps.

use partialconv::eval::{BucketMetrics, ValReport};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

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

pub(super) fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
