//! `partialconv.FineTuner` and the `Progress` its callback receives.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, TryLockError};
use std::time::{Duration, Instant};

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyList};

use partialconv::eval::ValReport;
use partialconv::masks::RATIO_BUCKETS;
use partialconv::train::{self, TrainConfig};
use partialconv::{Error, PConvUNetConfig, Storage};

use crate::convert::DeviceArg;
use crate::py_err;

/// Trains or fine-tunes a model on a folder of photos (the CLI's `partialconv train`).
#[pyclass(module = "partialconv", frozen)]
pub struct FineTuner {
    inner: Mutex<train::FineTuner>,
    out: PathBuf,
    run_dir: PathBuf,
    skipped_images: usize,
    // Outside the lock, so that the callback can read it while `run` holds the lock.
    step: AtomicU64,
}

#[pymethods]
impl FineTuner {
    /// Every option is the CLI flag of the same name; `None` keeps the CLI's default.
    #[new]
    #[pyo3(signature = (
        data, out, *, base = None, val_data = None, masks = None, run_dir = None,
        steps = None, batch_size = None, train_size = None, photo_side = None, width = None,
        layer_size = None, lr = None, lr_stage2 = None, stage2_at = None, vgg = None,
        checkpoint_every = None, val_every = None, val_size = None, max_val_images = None,
        seed = None, device = None, half = false, loader_threads = None, max_minutes = None,
        style_weight = None, perceptual_weight = None, hole_weight = None,
        hole_mse_weight = None, snapshot_every = None, bf16 = false,
    ))]
    // One keyword per CLI flag, so that the two stay easy to compare.
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        data: PathBuf,
        out: PathBuf,
        base: Option<PathBuf>,
        val_data: Option<PathBuf>,
        masks: Option<PathBuf>,
        run_dir: Option<PathBuf>,
        steps: Option<u64>,
        batch_size: Option<i64>,
        train_size: Option<u32>,
        photo_side: Option<u32>,
        width: Option<i64>,
        layer_size: Option<usize>,
        lr: Option<f64>,
        lr_stage2: Option<f64>,
        stage2_at: Option<u64>,
        vgg: Option<PathBuf>,
        checkpoint_every: Option<u64>,
        val_every: Option<u64>,
        val_size: Option<u32>,
        max_val_images: Option<usize>,
        seed: Option<u64>,
        device: Option<DeviceArg>,
        half: bool,
        loader_threads: Option<usize>,
        max_minutes: Option<f64>,
        style_weight: Option<f64>,
        perceptual_weight: Option<f64>,
        hole_weight: Option<f64>,
        hole_mse_weight: Option<f64>,
        snapshot_every: Option<u64>,
        bf16: bool,
    ) -> PyResult<Self> {
        let mut cfg = TrainConfig::new(data, out);
        cfg.val_data = val_data;
        cfg.masks = masks;
        if let Some(dir) = run_dir {
            cfg.run_dir = dir;
        }
        set(&mut cfg.steps, steps);
        // As the CLI: stage 2 (frozen encoder BN) covers the last quarter from scratch and
        // all of a fine-tune.
        cfg.stage2_at = stage2_at.unwrap_or(if base.is_some() { 0 } else { cfg.steps * 3 / 4 });
        cfg.base = base.map(partialconv::ModelSource::from_name);
        cfg.model = PConvUNetConfig {
            width: width.unwrap_or(cfg.model.width),
            layer_size: layer_size.unwrap_or(cfg.model.layer_size),
            ..cfg.model
        };
        set(&mut cfg.batch_size, batch_size);
        set(&mut cfg.train_size, train_size);
        set(&mut cfg.photo_side, photo_side);
        set(&mut cfg.lr, lr);
        set(&mut cfg.lr_stage2, lr_stage2);
        cfg.vgg = vgg;
        set(
            &mut cfg.checkpoint_every,
            checkpoint_every.map(|n| n.max(1)),
        );
        set(&mut cfg.val_every, val_every.map(|n| n.max(1)));
        set(&mut cfg.val_size, val_size);
        set(&mut cfg.max_val_images, max_val_images);
        set(&mut cfg.seed, seed);
        set(&mut cfg.device, device.map(|d| d.0));
        if half {
            cfg.storage = Storage::F16;
        }
        set(&mut cfg.loader_threads, loader_threads);
        cfg.time_budget = max_minutes.map(|m| Duration::from_secs_f64(m * 60.0));
        set(&mut cfg.loss.style, style_weight);
        set(&mut cfg.loss.perceptual, perceptual_weight);
        set(&mut cfg.loss.hole, hole_weight);
        set(&mut cfg.loss.hole_mse, hole_mse_weight);
        cfg.snapshot_every = snapshot_every.filter(|&n| n > 0);
        cfg.bf16 = bf16;
        let (out, run_dir) = (cfg.out.clone(), cfg.run_dir.clone());
        let tuner = py.detach(|| train::FineTuner::new(cfg)).map_err(py_err)?;
        Ok(Self {
            skipped_images: tuner.skipped_images(),
            step: AtomicU64::new(tuner.step()),
            inner: Mutex::new(tuner),
            out,
            run_dir,
        })
    }

    /// Where the trained model is written.
    #[getter]
    fn out(&self) -> &std::path::Path {
        &self.out
    }

    /// Checkpoints, `log.csv`, `progress.png` and sample grids; a new `FineTuner` with the
    /// same `run_dir` resumes from its checkpoint.
    #[getter]
    fn run_dir(&self) -> &std::path::Path {
        &self.run_dir
    }

    /// Photos of `data` (and `val_data`) that could not be read.
    #[getter]
    fn skipped_images(&self) -> usize {
        self.skipped_images
    }

    /// Steps done so far (more than 0 when resuming).
    #[getter]
    fn step(&self) -> u64 {
        self.step.load(Ordering::Relaxed)
    }

    /// Trains to the configured step count and writes the model to `out`.
    ///
    /// `callback(progress)` runs after every step, holding the GIL; returning `False` stops
    /// the run early, with a checkpoint saved. An exception raised by the callback (or a
    /// Ctrl-C) also saves a checkpoint and then propagates.
    #[pyo3(signature = (callback = None))]
    fn run(&self, py: Python<'_>, callback: Option<Py<PyAny>>) -> PyResult<Py<PyDict>> {
        let start = Instant::now();
        let mut raised: Option<PyErr> = None;
        let mut last_loss = f64::NAN;
        let mut last_val: Option<ValReport> = None;
        let result = py.detach(|| {
            let mut tuner = match self.inner.try_lock() {
                Ok(t) => t,
                Err(TryLockError::Poisoned(p)) => p.into_inner(),
                Err(TryLockError::WouldBlock) => return None,
            };
            Some(tuner.run(|p| {
                self.step.store(p.step, Ordering::Relaxed);
                last_loss = p.loss;
                if p.val.is_some() {
                    last_val.clone_from(&p.val);
                }
                Python::attach(|py| match on_step(py, callback.as_ref(), p) {
                    Ok(flow) => flow,
                    Err(e) => {
                        raised = Some(e);
                        ControlFlow::Break(())
                    }
                })
            }))
        });
        if let Some(e) = raised {
            return Err(e);
        }
        let (steps, final_loss, stopped) =
            match result {
                None => return Err(PyRuntimeError::new_err(
                    "FineTuner.run is already running (in another thread, or this is its callback)",
                )),
                Some(Ok(summary)) => (summary.steps, summary.final_loss, false),
                Some(Err(Error::Interrupted { step })) => (step, last_loss, true),
                Some(Err(e)) => return Err(py_err(e)),
            };
        let summary = PyDict::new(py);
        summary.set_item("steps", steps)?;
        summary.set_item("final_loss", final_loss)?;
        summary.set_item("wall_s", start.elapsed().as_secs_f64())?;
        summary.set_item("stopped", stopped)?;
        summary.set_item("metrics", last_val.map(|v| metrics(py, &v)).transpose()?)?;
        Ok(summary.unbind())
    }
}

fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *field = v;
    }
}

/// One callback call: Ctrl-C first, then the user's function.
fn on_step(
    py: Python<'_>,
    callback: Option<&Py<PyAny>>,
    p: &train::Progress,
) -> PyResult<ControlFlow<()>> {
    py.check_signals()?;
    let Some(callback) = callback else {
        return Ok(ControlFlow::Continue(()));
    };
    let ret = callback.call1(py, (Progress::new(py, p)?,))?;
    Ok(if ret.bind(py).is(PyBool::new(py, false)) {
        ControlFlow::Break(())
    } else {
        ControlFlow::Continue(())
    })
}

/// What the `FineTuner.run` callback receives after each step.
#[pyclass(module = "partialconv", frozen, get_all)]
pub struct Progress {
    /// Steps done.
    step: u64,
    /// Steps the run will do.
    total: u64,
    /// Total loss of this step.
    loss: f64,
    /// The loss terms: `valid`, `hole`, `perceptual`, `style`, `tv`.
    terms: Py<PyDict>,
    /// 1, or 2 once the encoder's batch norm is frozen.
    stage: u8,
    /// Seconds since `run` started.
    elapsed: f64,
    /// Estimated seconds left.
    eta: f64,
    /// Validation metrics on steps that ran validation, else `None`.
    metrics: Option<Py<PyDict>>,
}

impl Progress {
    fn new(py: Python<'_>, p: &train::Progress) -> PyResult<Self> {
        let terms = PyDict::new(py);
        terms.set_item("valid", p.terms.valid)?;
        terms.set_item("hole", p.terms.hole)?;
        terms.set_item("perceptual", p.terms.perceptual)?;
        terms.set_item("style", p.terms.style)?;
        terms.set_item("tv", p.terms.tv)?;
        Ok(Self {
            step: p.step,
            total: p.total,
            loss: p.loss,
            terms: terms.unbind(),
            stage: p.stage,
            elapsed: p.elapsed.as_secs_f64(),
            eta: p.eta.as_secs_f64(),
            metrics: p.val.as_ref().map(|v| metrics(py, v)).transpose()?,
        })
    }
}

#[pymethods]
impl Progress {
    fn __repr__(&self) -> String {
        format!(
            "Progress(step={}, total={}, loss={:.4}, stage={})",
            self.step, self.total, self.loss, self.stage
        )
    }
}

/// `{"mean_psnr": .., "buckets": [{"hole_ratio": (lo, hi), "psnr", "ssim", "l1", "count"}]}`
fn metrics(py: Python<'_>, v: &ValReport) -> PyResult<Py<PyDict>> {
    let buckets = PyList::empty(py);
    for (b, range) in v.buckets.iter().zip(RATIO_BUCKETS) {
        let d = PyDict::new(py);
        d.set_item("hole_ratio", range)?;
        d.set_item("psnr", b.psnr)?;
        d.set_item("ssim", b.ssim)?;
        d.set_item("l1", b.l1)?;
        d.set_item("count", b.count)?;
        buckets.append(d)?;
    }
    let d = PyDict::new(py);
    d.set_item("mean_psnr", v.mean_psnr())?;
    d.set_item("buckets", buckets)?;
    Ok(d.unbind())
}
