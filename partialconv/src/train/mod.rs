//! Training and fine-tuning ([`FineTuner`]): random crops of a folder of photos, irregular
//! holes from [`HoleGenerator`] (or a folder of user masks), the paper's loss and two-stage
//! schedule, crash-safe checkpoints, validation per hole-ratio bucket, and a progress
//! callback for the server and the Python bindings.

pub mod average;
pub mod loss;
pub mod plot;

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use image::{imageops, RgbImage};
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::eval::{eval_crop, eval_masks, evaluate_model, ValReport};
use crate::imaging::convert::{composite, image_to_tensor, scale_short_side, valid_tensor};
use crate::imaging::masks::{HoleGenerator, HoleMask, Rng, RATIO_BUCKETS};
use crate::model::{normalize, write_atomic, Model, ModelMeta, Storage};
use crate::nn::layer::Mask;
use crate::nn::unet::PConvUNetConfig;
use crate::nn::vgg::Vgg19Features;
use crate::train::loss::{InpaintingLoss, LossWeights};

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
    pub base: Option<PathBuf>,
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

/// What the progress callback sees after every step.
#[derive(Debug, Clone)]
pub struct Progress {
    /// Steps done, counted from the start of the run (across resumes).
    pub step: u64,
    /// Steps the run will take; a time budget may lower it as the run goes.
    pub total: u64,
    /// This step's total loss.
    pub loss: f64,
    /// This step's weighted loss terms.
    pub terms: LossValues,
    /// 1, or 2 once the encoder's batch norm is frozen.
    pub stage: u8,
    /// Wall time of this run (since `run` was called).
    pub elapsed: Duration,
    /// Estimated time to `total` at this run's mean pace.
    pub eta: Duration,
    /// Set on steps that ran validation.
    pub val: Option<ValReport>,
}

/// The weighted loss terms of one step, as numbers (see [`crate::train::loss::LossTerms`]).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct LossValues {
    /// L1 outside the hole.
    pub valid: f64,
    /// L1 (plus squared error) inside the hole.
    pub hole: f64,
    /// VGG feature distance; 0 without VGG.
    pub perceptual: f64,
    /// Gram-matrix distance; 0 without VGG.
    pub style: f64,
    /// Total variation of the composite.
    pub tv: f64,
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// The step the run ended at.
    pub steps: u64,
    /// The last step's loss.
    pub final_loss: f64,
    /// The last validation, if any ran.
    pub last_val: Option<ValReport>,
    /// Wall time of this run.
    pub wall: Duration,
    /// Photos that could not be decoded.
    pub skipped_images: usize,
    /// Photos trained on.
    pub train_images: usize,
    /// Photos validated on.
    pub val_images: usize,
}

/// Adam (Kingma & Ba), written out so its state can be checkpointed with the weights.
pub struct Adam {
    params: Vec<(String, Tensor)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    t: u64,
}

impl Adam {
    const B1: f64 = 0.9;
    const B2: f64 = 0.999;
    const EPS: f64 = 1e-8;

    /// Zeroed moments for every trainable weight of `model`.
    pub fn new(model: &Model) -> Self {
        let mut params: Vec<(String, Tensor)> = model
            .vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let m = params.iter().map(|(_, p)| p.zeros_like()).collect();
        let v = params.iter().map(|(_, p)| p.zeros_like()).collect();
        Self { params, m, v, t: 0 }
    }

    /// Clears the gradients before the next `backward`.
    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            p.zero_grad();
        }
    }

    /// One update of every weight from its gradient, at learning rate `lr`.
    pub fn step(&mut self, lr: f64) {
        self.t += 1;
        let c1 = 1.0 - Self::B1.powi(self.t as i32);
        let c2 = 1.0 - Self::B2.powi(self.t as i32);
        tch::no_grad(|| {
            for ((_, p), (m, v)) in self
                .params
                .iter_mut()
                .zip(self.m.iter_mut().zip(self.v.iter_mut()))
            {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let _ = m.g_mul_scalar_(Self::B1).g_add_(&(&g * (1.0 - Self::B1)));
                let _ = v
                    .g_mul_scalar_(Self::B2)
                    .g_add_(&(&g * &g * (1.0 - Self::B2)));
                let update = (&*m / c1) / ((&*v / c2).sqrt() + Self::EPS) * lr;
                let _ = p.g_sub_(&update);
            }
        });
    }
}

/// Photos decoded once and kept at the working scale.
struct Photos {
    images: Vec<RgbImage>,
    skipped: usize,
}

fn load_photos(paths: &[PathBuf], side: u32) -> Photos {
    let mut images = Vec::new();
    let mut skipped = 0;
    for p in paths {
        match crate::imaging::io::read_image(p) {
            Ok(img) => images.push(scale_short_side(&img.to_rgb8(), side)),
            Err(_) => skipped += 1,
        }
    }
    Photos { images, skipped }
}

/// Whether the CPU computes bf16 natively. Elsewhere oneDNN emulates it, and a 512² × 4
/// step took 37 s against 4 s in fp32 (an AVX2-only EPYC, `docs/fine-tuning.md`).
fn cpu_has_native_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx512bf16");
    #[cfg(not(target_arch = "x86_64"))]
    return true;
}

fn load_user_masks(cfg: &TrainConfig) -> Result<Vec<HoleMask>> {
    Ok(match &cfg.masks {
        Some(dir) => crate::imaging::io::list_files(dir)?
            .iter()
            .filter_map(|p| crate::imaging::io::read_mask(p).ok())
            .collect(),
        None => Vec::new(),
    })
}

/// Re-estimates `model`'s batch-norm statistics ([`crate::PConvUNet::recalibrate_bn`]) on
/// `batches` batches of `cfg.data`, cropped and holed as training makes them (`train_size`,
/// `photo_side`, `batch_size`, `masks`, `seed`), and records that in the model's `training`
/// metadata, since the same weights with other statistics score differently. Returns the
/// batches used.
pub fn recalibrate_bn(model: &mut Model, cfg: &TrainConfig, batches: usize) -> Result<usize> {
    let photos = load_photos(
        &crate::imaging::io::list_files(&cfg.data)?,
        cfg.photo_side.max(cfg.train_size),
    );
    if photos.images.is_empty() {
        return Err(Error::Data(format!(
            "{}: no readable photos to re-estimate batch norm on",
            cfg.data.display()
        )));
    }
    let loader = Loader::start(
        Arc::new(photos.images),
        Arc::new(load_user_masks(cfg)?),
        cfg,
        0,
    );
    let (norm, channels) = (model.meta.normalization, model.meta.config.input_channels);
    let device = model.vs.device();
    let batches = (0..batches).map(|_| {
        let batch = loader.next();
        let gt = normalize(&batch.gt.to_device(device), &norm);
        let valid = batch.valid.to_device(device);
        (&gt * &valid, Mask::shared(valid, channels))
    });
    let used = model.net.recalibrate_bn(batches);
    model.meta.training = serde_json::json!({
        "bn_recalibrated": {
            "batches": used,
            "batch_size": cfg.batch_size,
            "train_size": cfg.train_size,
            "photo_side": cfg.photo_side,
            "seed": cfg.seed,
        },
        "from": std::mem::take(&mut model.meta.training),
    });
    Ok(used)
}

/// One training batch, on the CPU: normalised images and valid masks.
struct Batch {
    gt: Tensor,
    valid: Tensor,
}

/// Produces batches on background threads so data preparation overlaps the network.
struct Loader {
    rx: mpsc::Receiver<Batch>,
    stop: Arc<AtomicBool>,
}

impl Loader {
    fn start(
        photos: Arc<Vec<RgbImage>>,
        masks: Arc<Vec<HoleMask>>,
        cfg: &TrainConfig,
        start_step: u64,
    ) -> Self {
        let (tx, rx) = mpsc::sync_channel(4);
        let stop = Arc::new(AtomicBool::new(false));
        let threads = cfg.loader_threads.max(1) as u64;
        for worker in 0..threads {
            let (tx, stop, photos, masks) =
                (tx.clone(), stop.clone(), photos.clone(), masks.clone());
            let (size, batch, seed) = (cfg.train_size, cfg.batch_size, cfg.seed);
            std::thread::spawn(move || {
                let generator = HoleGenerator::default();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let stream = seed ^ (start_step << 20) ^ (worker << 56) ^ n;
                    n += 1;
                    let mut rng = Rng::new(stream);
                    let mut imgs = Vec::with_capacity(batch as usize);
                    let mut valids = Vec::with_capacity(batch as usize);
                    for i in 0..batch as u64 {
                        let photo = &photos[(rng.next_u64() % photos.len() as u64) as usize];
                        imgs.push(image_to_tensor(&random_crop(photo, size, &mut rng)));
                        let mask = if masks.is_empty() {
                            generator.generate_any(
                                size,
                                size,
                                stream.wrapping_mul(31).wrapping_add(i),
                            )
                        } else {
                            let m = &masks[(rng.next_u64() % masks.len() as u64) as usize];
                            m.resize_conservative(size, size)
                        };
                        valids.push(valid_tensor(&mask));
                    }
                    let b = Batch {
                        gt: Tensor::stack(&imgs, 0),
                        valid: Tensor::stack(&valids, 0),
                    };
                    if tx.send(b).is_err() {
                        return;
                    }
                }
            });
        }
        Self { rx, stop }
    }

    fn next(&self) -> Batch {
        self.rx
            .recv()
            .expect("loader threads run until the loader is dropped")
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        while self.rx.try_recv().is_ok() {}
    }
}

/// A random square crop with scale jitter (0.8–1.25×) and a horizontal flip.
fn random_crop(photo: &RgbImage, size: u32, rng: &mut Rng) -> RgbImage {
    let (w, h) = photo.dimensions();
    let side = ((size as f64 * rng.range(0.8, 1.25)).round() as u32)
        .min(w.min(h))
        .max(1);
    let x = rng.below(0, w - side + 1);
    let y = rng.below(0, h - side + 1);
    let crop = imageops::crop_imm(photo, x, y, side, side).to_image();
    let mut crop = if side == size {
        crop
    } else {
        imageops::resize(&crop, size, size, imageops::FilterType::Triangle)
    };
    if rng.uniform() < 0.5 {
        imageops::flip_horizontal_in_place(&mut crop);
    }
    crop
}

/// Asks a [`FineTuner`] to stop after the step in progress, saving a checkpoint first, as a
/// `Break` from the progress callback does. Clones share one flag, so that a signal handler
/// (the CLI's Ctrl-C) or another thread (the server's job cancel) can hold one while the
/// trainer runs with another; the library itself installs no handler.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token not yet cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every holder's [`CancelToken::is_cancelled`] true, for good.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether [`CancelToken::cancel`] was called on this token or a clone.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Shares a flag the caller already has, such as a job table's cancel flag.
impl From<Arc<AtomicBool>> for CancelToken {
    fn from(flag: Arc<AtomicBool>) -> Self {
        Self(flag)
    }
}

/// Trains a model on a folder of photos; see the module docs.
pub struct FineTuner {
    cfg: TrainConfig,
    model: Model,
    adam: Adam,
    loss: InpaintingLoss,
    train: Arc<Vec<RgbImage>>,
    val: Vec<RgbImage>,
    user_masks: Arc<Vec<HoleMask>>,
    skipped: usize,
    step: u64,
    history: Vec<(u64, f64, Option<f64>)>,
    /// Step and elapsed time at the time budget's last pace check.
    pace_mark: Option<(u64, Duration)>,
    /// The run's own `(steps, stage2_at)`, the most a time budget may plan for.
    requested: (u64, u64),
    cancel: CancelToken,
}

const CHECKPOINT: &str = "checkpoint.safetensors";

/// `(steps, stage2_at)` for a run at `step` that takes `per_step` seconds a step and has
/// `left` of its time budget: 95 % of what is left (validation and checkpoints take time
/// too), never beyond the run's `requested` plan. Stage 2 keeps its share of the run until it
/// has begun, and is not moved after.
pub fn plan_for_budget(
    step: u64,
    per_step: f64,
    left: Duration,
    (requested_steps, requested_stage2): (u64, u64),
    stage2_at: u64,
) -> (u64, u64) {
    let fits = step + (0.95 * left.as_secs_f64() / per_step.max(1e-9)) as u64;
    let steps = fits.clamp(step + 1, requested_steps.max(step + 1));
    if step >= stage2_at {
        return (steps, stage2_at);
    }
    let share = requested_stage2 as f64 / requested_steps.max(1) as f64;
    (steps, ((share * steps as f64) as u64).min(requested_stage2))
}

impl FineTuner {
    /// Loads the data and the model, resuming from `run_dir/checkpoint.safetensors` if it
    /// exists.
    pub fn new(cfg: TrainConfig) -> Result<Self> {
        let paths = crate::imaging::io::list_files(&cfg.data)?;
        let (train_paths, val_paths): (Vec<PathBuf>, Vec<PathBuf>) = match &cfg.val_data {
            Some(dir) => (paths, crate::imaging::io::list_files(dir)?),
            None => {
                let (v, t): (Vec<_>, Vec<_>) =
                    paths.into_iter().enumerate().partition(|(i, _)| i % 7 == 6);
                (
                    t.into_iter().map(|x| x.1).collect(),
                    v.into_iter().map(|x| x.1).collect(),
                )
            }
        };
        let train = load_photos(&train_paths, cfg.photo_side.max(cfg.train_size));
        let val = load_photos(
            &val_paths[..val_paths.len().min(cfg.max_val_images)],
            cfg.val_size,
        );
        let usable = train.images.len();
        if usable < 2 {
            return Err(Error::Data(format!(
                "{}: only {usable} usable image(s) ({} unreadable); training needs at least 2",
                cfg.data.display(),
                train.skipped
            )));
        }
        let user_masks = load_user_masks(&cfg)?;
        let vgg = match &cfg.vgg {
            Some(p) => {
                let vgg = Vgg19Features::load(p, cfg.device)?;
                Some(if cfg.bf16 {
                    vgg.with_compute_kind(Kind::BFloat16)
                } else {
                    vgg
                })
            }
            None => {
                // The pixel terms (L1 or squared error, TV) still train; only the VGG terms drop out.
                tracing::warn!(
                    "no VGG feature file given; training without the perceptual and style terms"
                );
                None
            }
        };
        std::fs::create_dir_all(&cfg.run_dir).map_err(|e| Error::io(&cfg.run_dir, e))?;
        let resume = cfg.run_dir.join(CHECKPOINT);
        let (mut model, adam, step) = if resume.exists() {
            load_checkpoint(&resume, cfg.device)?
        } else {
            let model = match &cfg.base {
                Some(base) => Model::load(base, cfg.device)?,
                None => {
                    let mut meta = ModelMeta::new(cfg.model);
                    meta.train_size = Some(cfg.train_size);
                    Model::new(meta, cfg.device)?
                }
            };
            let adam = Adam::new(&model);
            (model, adam, 0)
        };
        model.net.train_compute = cfg.bf16.then_some(Kind::BFloat16);
        if cfg.bf16 && cfg.device == Device::Cpu && !cpu_has_native_bf16() {
            tracing::warn!(
                "this CPU has no AVX512-BF16, so bf16 is emulated: a training step took 9x as \
                 long as in fp32 on such a CPU; train in fp32 instead"
            );
        }
        // Each encoder level halves the crop; a crop that does not halve evenly down to the
        // bottleneck fails deep inside the decoder's concatenation instead.
        let multiple = model.meta.config.multiple();
        if i64::from(cfg.train_size) % multiple != 0 {
            return Err(Error::InvalidArgument(format!(
                "training size {} must be a multiple of {multiple} for a network of {} levels",
                cfg.train_size, model.meta.config.layer_size
            )));
        }
        let loss = InpaintingLoss {
            weights: cfg.loss,
            normalization: model.meta.normalization,
            vgg,
        };
        let skipped = train.skipped + val.skipped;
        let requested = (cfg.steps, cfg.stage2_at);
        let val = val
            .images
            .iter()
            .map(|img| eval_crop(img, cfg.val_size))
            .collect();
        Ok(Self {
            cfg,
            model,
            adam,
            loss,
            train: Arc::new(train.images),
            val,
            user_masks: Arc::new(user_masks),
            skipped,
            step,
            history: Vec::new(),
            pace_mark: None,
            requested,
            cancel: CancelToken::new(),
        })
    }

    /// Stops [`FineTuner::run`] when `token` is cancelled, as a `Break` from its callback
    /// does; set it before `run`, from whatever owns the cancel (a signal, a job table).
    pub fn with_cancel_token(mut self, token: CancelToken) -> Self {
        self.cancel = token;
        self
    }

    /// Steps done so far; non-zero after resuming from a checkpoint.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// The model being trained.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Photos that could not be decoded and were left out.
    pub fn skipped_images(&self) -> usize {
        self.skipped
    }

    /// Trains until `cfg.steps`, calling `callback` after each step; `Break`, or a cancelled
    /// [`CancelToken`], stops the run after saving a checkpoint and returns
    /// [`Error::Interrupted`].
    pub fn run(
        &mut self,
        mut callback: impl FnMut(&Progress) -> ControlFlow<()>,
    ) -> Result<TrainSummary> {
        if self.cfg.device.is_cuda() {
            tch::Cuda::cudnn_set_benchmark(true); // fixed shapes: let cuDNN pick the fastest kernels
        }
        let start = Instant::now();
        let first_step = self.step;
        let loader = Loader::start(
            self.train.clone(),
            self.user_masks.clone(),
            &self.cfg,
            self.step,
        );
        let norm = self.model.meta.normalization;
        let channels = self.model.meta.config.input_channels;
        let mut last_loss = f64::NAN;
        let mut last_val = None;
        let mut log = self.open_log()?;
        while self.step < self.cfg.steps {
            let stage2 = self.step >= self.cfg.stage2_at;
            self.model.net.freeze_enc_bn = stage2;
            let lr = if stage2 {
                self.cfg.lr_stage2
            } else {
                self.cfg.lr
            };
            let batch = loader.next();
            let gt = normalize(&batch.gt.to_device(self.cfg.device), &norm);
            let valid = batch.valid.to_device(self.cfg.device);
            let (output, _) = self.model.net.forward_t(
                &(&gt * &valid),
                &Mask::shared(valid.shallow_clone(), channels),
                true,
            );
            let terms = self.loss.compute(&valid, &output, &gt);
            self.adam.zero_grad();
            terms.total.backward();
            self.adam.step(lr);
            self.step += 1;
            last_loss = terms.total.double_value(&[]);
            if !last_loss.is_finite() {
                return Err(Error::Data(format!(
                    "loss became {last_loss} at step {}; lower the learning rate",
                    self.step
                )));
            }
            let values = LossValues {
                valid: terms.valid,
                hole: terms.hole,
                perceptual: terms.perceptual,
                style: terms.style,
                tv: terms.tv,
            };
            // Before validating, so that the step the budget ends on is validated as the last.
            if let Some(budget) = self.cfg.time_budget {
                self.fit_to_budget(budget, start.elapsed(), first_step);
            }
            let val = if self.step.is_multiple_of(self.cfg.val_every) || self.step == self.cfg.steps
            {
                let mut report = self.validate()?;
                report.step = self.step;
                last_val = Some(report.clone());
                Some(report)
            } else {
                None
            };
            let done = (self.step - first_step) as f64;
            let per_step = start.elapsed().as_secs_f64() / done;
            let progress = Progress {
                step: self.step,
                total: self.cfg.steps,
                loss: last_loss,
                terms: values,
                stage: if stage2 { 2 } else { 1 },
                elapsed: start.elapsed(),
                eta: Duration::from_secs_f64(per_step * (self.cfg.steps - self.step) as f64),
                val: val.clone(),
            };
            self.record(&mut log, &progress)?;
            let stop = callback(&progress).is_break() || self.cancel.is_cancelled();
            if stop || self.step.is_multiple_of(self.cfg.checkpoint_every) {
                self.save_checkpoint()?;
            }
            if let Some(n) = self.cfg.snapshot_every {
                if self.step.is_multiple_of(n) {
                    self.save_snapshot()?;
                }
            }
            if val.is_some() {
                self.write_plot()?;
            }
            if stop {
                return Err(Error::Interrupted { step: self.step });
            }
        }
        self.save_checkpoint()?;
        self.model.meta.training = serde_json::json!({
            "steps": self.step,
            "batch_size": self.cfg.batch_size,
            "train_size": self.cfg.train_size,
            "photo_side": self.cfg.photo_side,
            "train_images": self.train.len(),
            "base": self.cfg.base.as_ref().and_then(|p| p.file_name()).map(|n| n.to_string_lossy()),
            "loss": {"valid": self.cfg.loss.valid, "hole": self.cfg.loss.hole,
                     "hole_mse": self.cfg.loss.hole_mse, "tv": self.cfg.loss.tv,
                     "perceptual": if self.cfg.vgg.is_some() { self.cfg.loss.perceptual } else { 0.0 },
                     "style": if self.cfg.vgg.is_some() { self.cfg.loss.style } else { 0.0 }},
            "device": format!("{:?}", self.cfg.device),
            "wall_s_this_run": start.elapsed().as_secs(),
            "final_loss": last_loss,
            "val_mean_psnr": last_val.as_ref().map(ValReport::mean_psnr),
        });
        self.model.save(&self.cfg.out, self.cfg.storage)?;
        Ok(TrainSummary {
            steps: self.step,
            final_loss: last_loss,
            last_val,
            wall: start.elapsed(),
            skipped_images: self.skipped,
            train_images: self.train.len(),
            val_images: self.val.len(),
        })
    }

    /// Fits the step count to `budget` from the pace after a 10-step warm-up (cuDNN
    /// autotuning and first allocations are slow), re-planned every 100 steps on the pace of
    /// the last 100, so a slow stretch (a build sharing the CPU) shortens the run only while
    /// it lasts. See [`plan_for_budget`].
    fn fit_to_budget(&mut self, budget: Duration, elapsed: Duration, first_step: u64) {
        let done = self.step - first_step;
        if elapsed >= budget {
            self.cfg.steps = self.step; // out of time: finish here; the model is saved after
            return;
        }
        if done == 10 {
            self.pace_mark = Some((self.step, elapsed));
        }
        let Some((since_step, since_time)) = self.pace_mark else {
            return;
        };
        if !done.is_multiple_of(100) {
            return;
        }
        let per_step = (elapsed - since_time).as_secs_f64() / (self.step - since_step) as f64;
        self.pace_mark = Some((self.step, elapsed));
        (self.cfg.steps, self.cfg.stage2_at) = plan_for_budget(
            self.step,
            per_step,
            budget - elapsed,
            self.requested,
            self.cfg.stage2_at,
        );
    }

    /// Validation metrics per bucket, and a sample grid PNG in the run folder.
    pub fn validate(&mut self) -> Result<ValReport> {
        if self.val.is_empty() {
            return Ok(ValReport::default());
        }
        let report = evaluate_model(&self.model, &self.val, self.cfg.val_size)?;
        self.write_grid()?;
        Ok(report)
    }

    fn open_log(&self) -> Result<std::fs::File> {
        let path = self.cfg.run_dir.join("log.csv");
        let new = !path.exists();
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        if new {
            let mut header = "step,stage,loss,valid,hole,perceptual,style,tv,elapsed_s".to_string();
            for (lo, hi) in RATIO_BUCKETS {
                header += &format!(",psnr_{lo}_{hi},ssim_{lo}_{hi},l1_{lo}_{hi}");
            }
            writeln!(f, "{header}").map_err(|e| Error::io(&path, e))?;
        }
        Ok(f)
    }

    fn record(&mut self, log: &mut std::fs::File, p: &Progress) -> Result<()> {
        let t = &p.terms;
        let mut line = format!(
            "{},{},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6},{:.1}",
            p.step,
            p.stage,
            p.loss,
            t.valid,
            t.hole,
            t.perceptual,
            t.style,
            t.tv,
            p.elapsed.as_secs_f64()
        );
        if let Some(v) = &p.val {
            for b in &v.buckets {
                line += &format!(",{:.4},{:.5},{:.4}", b.psnr, b.ssim, b.l1);
            }
        }
        let path = self.cfg.run_dir.join("log.csv");
        writeln!(log, "{line}").map_err(|e| Error::io(&path, e))?;
        self.history
            .push((p.step, p.loss, p.val.as_ref().map(ValReport::mean_psnr)));
        Ok(())
    }

    /// fp32, so that averages of many snapshots are not averages of rounded weights.
    fn save_snapshot(&self) -> Result<()> {
        let dir = self.cfg.run_dir.join("snapshots");
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let path = dir.join(format!("step-{:07}.safetensors", self.step));
        self.model.save(&path, Storage::F32)
    }

    fn write_plot(&self) -> Result<()> {
        let path = self.cfg.run_dir.join("progress.png");
        crate::train::plot::loss_and_psnr(&self.history, &path)
    }

    fn write_grid(&self) -> Result<()> {
        let n = self.val.len().min(4);
        let size = self.cfg.val_size;
        let mut rows = Vec::new();
        for (i, gt) in self.val.iter().take(n).enumerate() {
            let mask = &eval_masks(size, i)[2];
            let filled = self.model.fill_native(&[gt], &[mask])?.remove(0);
            rows.push([
                crate::train::plot::show_holes(gt, mask),
                composite(gt, &filled, mask),
                gt.clone(),
            ]);
        }
        crate::train::plot::grid(&rows, &self.cfg.run_dir.join("samples.png"))
    }

    /// Weights, Adam state and step, written atomically.
    pub fn save_checkpoint(&self) -> Result<()> {
        // The writer needs contiguous tensors; CPU conv weights are kept channels-last.
        let cpu = |t: &Tensor| t.detach().to_device(Device::Cpu).contiguous();
        let mut tensors: Vec<(String, Tensor)> = Vec::new();
        for (name, t) in self.model.vs.variables() {
            tensors.push((format!("model/{name}"), cpu(&t)));
        }
        for ((name, _), (m, v)) in self
            .adam
            .params
            .iter()
            .zip(self.adam.m.iter().zip(&self.adam.v))
        {
            tensors.push((format!("adam_m/{name}"), cpu(m)));
            tensors.push((format!("adam_v/{name}"), cpu(v)));
        }
        let state = serde_json::json!({ "step": self.step, "adam_t": self.adam.t, "meta": self.model.meta });
        tensors.push((
            "state_json".into(),
            Tensor::from_slice(state.to_string().as_bytes()),
        ));
        let path = self.cfg.run_dir.join(CHECKPOINT);
        let tmp = self.cfg.run_dir.join("checkpoint.writing");
        Tensor::write_safetensors(&tensors, &tmp)?;
        let bytes = std::fs::read(&tmp).map_err(|e| Error::io(&tmp, e))?;
        std::fs::remove_file(&tmp).map_err(|e| Error::io(&tmp, e))?;
        write_atomic(&path, &bytes)
    }
}

fn load_checkpoint(path: &Path, device: Device) -> Result<(Model, Adam, u64)> {
    let what = path.display().to_string();
    let bad = |reason: String| Error::Checkpoint {
        what: what.clone(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st =
        SafeTensors::deserialize(&bytes).map_err(|e| bad(format!("corrupt checkpoint ({e})")))?;
    let state_bytes = st
        .tensor("state_json")
        .map_err(|_| bad("no training state".into()))?;
    let state: serde_json::Value =
        serde_json::from_slice(state_bytes.data()).map_err(|e| bad(e.to_string()))?;
    let meta: ModelMeta =
        serde_json::from_value(state["meta"].clone()).map_err(|e| bad(e.to_string()))?;
    let step = state["step"]
        .as_u64()
        .ok_or_else(|| bad("no step".into()))?;
    let model = Model::new(meta, device)?;
    let mut by_name: HashMap<String, Tensor> = HashMap::new();
    for (name, view) in st.tensors() {
        if name == "state_json" {
            continue;
        }
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        by_name.insert(
            name,
            Tensor::f_from_data_size(view.data(), &shape, Kind::Float)?,
        );
    }
    let weights: HashMap<String, Tensor> = by_name
        .iter()
        .filter_map(|(k, t)| {
            k.strip_prefix("model/")
                .map(|n| (n.to_string(), t.shallow_clone()))
        })
        .collect();
    model.load_state_dict(&weights, &what)?;
    let mut adam = Adam::new(&model);
    adam.t = state["adam_t"].as_u64().unwrap_or(step);
    tch::no_grad(|| -> Result<()> {
        for ((name, _), (m, v)) in adam
            .params
            .iter()
            .zip(adam.m.iter_mut().zip(adam.v.iter_mut()))
        {
            let get = |k: String| by_name.get(&k).ok_or_else(|| bad(format!("missing `{k}`")));
            m.f_copy_(&get(format!("adam_m/{name}"))?.to_device(device))?;
            v.f_copy_(&get(format!("adam_v/{name}"))?.to_device(device))?;
        }
        Ok(())
    })?;
    Ok((model, adam, step))
}
