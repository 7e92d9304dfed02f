//! The limits and training parameters of fine-tune jobs, from the server's flags.

use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct FinetuneSettings {
    pub max_images: usize,
    pub max_bytes: usize,
    pub max_pixels: u64,
    pub max_queued: usize,
    pub default_steps: u64,
    pub max_steps: u64,
    pub threads: usize,
    pub nice: i32,
    pub train_size: u32,
    pub batch: i64,
    pub val_size: u32,
    pub checkpoint_every: u64,
    pub val_every: u64,
    pub vgg: Option<PathBuf>,
    pub device: tch::Device,
    /// The server's `--model`; `None`: `$PARTIALCONV_MODEL` or the bundled model.
    pub default_model: Option<PathBuf>,
}
