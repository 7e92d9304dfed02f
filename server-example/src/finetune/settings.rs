//! The limits and training parameters of fine-tune jobs, from the server's flags.

use std::path::PathBuf;

/// Limits and training parameters of fine-tune jobs (the `--finetune-*` flags).
#[derive(Debug, Clone)]
pub struct FinetuneSettings {
    /// Most photos one job takes (zip entries counted one by one).
    pub max_images: usize,
    /// Most bytes the photos of one job may total, unpacked.
    pub max_bytes: usize,
    /// Most pixels one photo may have.
    pub max_pixels: u64,
    /// Most jobs one user may have queued or running.
    pub max_queued: usize,
    /// Steps of a job that names none.
    pub default_steps: u64,
    /// Most steps a job may ask for.
    pub max_steps: u64,
    /// libtorch intra-op threads of the training thread.
    pub threads: usize,
    /// Nice value of the training thread (0–19).
    pub nice: i32,
    /// Side of the training crops, in pixels.
    pub train_size: u32,
    /// Images per training step.
    pub batch: i64,
    /// Side of the validation images, in pixels.
    pub val_size: u32,
    /// Steps between checkpoints (what a cancel or restart resumes from).
    pub checkpoint_every: u64,
    /// Steps between validations on the held-out photos.
    pub val_every: u64,
    /// VGG16 weights for the perceptual and style losses; `None`: the trainer's default.
    pub vgg: Option<PathBuf>,
    /// Device jobs train on.
    pub device: tch::Device,
    /// The server's `--model`; `None`: `$PARTIALCONV_MODEL` or the bundled model.
    pub default_model: Option<PathBuf>,
}
