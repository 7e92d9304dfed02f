//! Training and fine-tuning ([`FineTuner`]): random crops of a folder of photos, irregular
//! holes from [`HoleGenerator`](crate::imaging::masks::HoleGenerator) (or a folder of user
//! masks), the paper's loss and two-stage schedule, crash-safe checkpoints, validation per
//! hole-ratio bucket, and a progress callback for the server and the Python bindings.

mod adam;
pub mod average;
mod budget;
mod cancel;
mod config;
mod data;
pub mod loss;
pub mod plot;

pub use adam::Adam;
pub use budget::plan_for_budget;
pub use cancel::CancelToken;
pub use config::TrainConfig;

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use image::RgbImage;
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::device::cpu_has_native_bf16;
use crate::error::{Error, Result};
use crate::eval::{eval_crop, eval_masks, evaluate_model, ValReport};
use crate::imaging::convert::composite;
use crate::imaging::masks::{HoleMask, RATIO_BUCKETS};
use crate::model::{normalize, write_atomic, Model, ModelMeta, ModelSource, Storage};
use crate::nn::layer::Mask;
use crate::nn::vgg::Vgg19Features;
use crate::train::loss::InpaintingLoss;
use data::{load_photos, load_user_masks, Loader};

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
    /// Set on steps whose checkpoint (`run_dir/checkpoint.safetensors`) was written before
    /// this report, so that a caller can copy it elsewhere (a shared store) from here.
    pub checkpoint: bool,
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
                Some(base) => base.load(cfg.device)?,
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
            // A scheduled checkpoint before the report, so the caller sees it on disk; one
            // for a stop after it, since the caller's answer decides the stop.
            let checkpoint = self.step.is_multiple_of(self.cfg.checkpoint_every);
            if checkpoint {
                self.save_checkpoint()?;
            }
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
                checkpoint,
            };
            self.record(&mut log, &progress)?;
            let stop = callback(&progress).is_break() || self.cancel.is_cancelled();
            if stop && !checkpoint {
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
            "base": self.cfg.base.as_ref().map(ModelSource::id),
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
