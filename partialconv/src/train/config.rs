//! What a training run is asked to do.

use std::path::PathBuf;
use std::time::Duration;

use tch::Device;

use super::loss::LossWeights;
use crate::model::{ModelSource, Storage};
use crate::nn::unet::PConvUNetConfig;

/// Everything a training run needs.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// Folder of training photos (PNG, JPEG, WebP); unreadable files are skipped and counted.
    pub data: PathBuf,
    /// Folder of validation photos; `None` holds out every 7th training photo.
    pub val_data: Option<PathBuf>,
    /// Folder of mask images to draw holes from instead of the generator.
    pub masks: Option<PathBuf>,
    /// Where the final model is written.
    pub out: PathBuf,
    /// Checkpoints, the CSV log, the plot and sample grids.
    pub run_dir: PathBuf,
    /// Model to start from; `None` trains from scratch with `model`.
    pub base: Option<ModelSource>,
    /// Shape of a network trained from scratch; ignored when `base` is set.
    pub model: PConvUNetConfig,
    /// Steps to train to (counted from the start of the run, across resumes).
    pub steps: u64,
    /// Crops per step.
    pub batch_size: i64,
    /// Side of the square training crops.
    pub train_size: u32,
    /// Photos are first scaled so their short side is this: the scale the model is used at.
    pub photo_side: u32,
    /// Stage 1 learning rate (the paper's 2e-4).
    pub lr: f64,
    /// Stage 2 learning rate (5e-5), with encoder batch norm frozen.
    pub lr_stage2: f64,
    /// First step of stage 2; fine-tuning from a base model starts there (0).
    pub stage2_at: u64,
    /// VGG19 feature file for the perceptual and style terms; `None`: L1 + TV only.
    pub vgg: Option<PathBuf>,
    /// Weights of the loss terms.
    pub loss: LossWeights,
    /// Save the resumable checkpoint every N steps.
    pub checkpoint_every: u64,
    /// Save the model to `run_dir/snapshots/step-NNNNNNN.safetensors` every N steps, for
    /// stochastic weight averaging ([`crate::train::average`]).
    pub snapshot_every: Option<u64>,
    /// Validate (and redraw the plot and sample grid) every N steps.
    pub val_every: u64,
    /// Validation crops are `val_size²`, one mask per bucket per photo.
    pub val_size: u32,
    /// At most this many validation photos.
    pub max_val_images: usize,
    /// Seeds the crops and holes, so that a run is repeatable.
    pub seed: u64,
    /// Where the network trains.
    pub device: Device,
    /// Storage of the final model.
    pub storage: Storage,
    /// Threads preparing batches.
    pub loader_threads: usize,
    /// Mixed precision: the training passes of the network and of VGG compute their
    /// convolutions in bf16 (a step 1.2× faster on an AVX512-BF16 CPU, 1.7× with AMX;
    /// `docs/benchmarks.md`), while the weights, the optimizer, the loss and validation
    /// stay in fp32.
    pub bf16: bool,
    /// Wall-clock budget: after a few steps the step count is cut to what fits, and stage 2
    /// moves with it so that it still covers the last quarter.
    pub time_budget: Option<Duration>,
}

impl TrainConfig {
    /// Defaults for `data` → `out`; from scratch unless `base` is set afterwards.
    pub fn new(data: impl Into<PathBuf>, out: impl Into<PathBuf>) -> Self {
        let out = out.into();
        let mut run_dir = out.clone().into_os_string();
        run_dir.push(".run");
        Self {
            data: data.into(),
            val_data: None,
            masks: None,
            run_dir: run_dir.into(),
            out,
            base: None,
            // Trained from scratch, the `Scaled` convention keeps activations at a plain
            // convolution's scale; `Unscaled` divides by up to in·k² and learns many times
            // slower (examples/overfit.rs shows it).
            model: PConvUNetConfig {
                width: 32,
                convention: crate::Convention::Scaled,
                ..Default::default()
            },
            steps: 10_000,
            batch_size: 8,
            train_size: 256,
            photo_side: 512,
            lr: 2e-4,
            lr_stage2: 5e-5,
            stage2_at: 7_500,
            vgg: None,
            loss: LossWeights::default(),
            checkpoint_every: 500,
            snapshot_every: None,
            val_every: 500,
            val_size: 512,
            max_val_images: 24,
            seed: 0,
            device: Device::Cpu,
            storage: Storage::F32,
            loader_threads: 2,
            bf16: false,
            time_budget: None,
        }
    }
}
