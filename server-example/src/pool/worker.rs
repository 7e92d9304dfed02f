//! The pool's threads: the model loader, and the workers that batch, decode, run and
//! encode jobs.

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use image::{DynamicImage, GenericImageView};
use partialconv::imaging::metadata::Metadata;
use partialconv::{io::decode_image, HoleMask, Inpainter, ModelSource};

use super::{Job, JobInput, JobOutput, LoadState, ModelInfo, PoolError, Shared};
use crate::codec::{encode, OutputFormat};
use crate::models::{ModelError, ModelKey};
use crate::threads::pin_intra_op_threads;

fn model_info(inpainter: &Inpainter, path: Option<&PathBuf>) -> ModelInfo {
    let meta = inpainter.meta();
    // The model is loaded by now, so its source resolves.
    let model_id = ModelSource::resolve(path.map(PathBuf::as_path))
        .map(|s| s.id())
        .unwrap_or_else(|_| "bundled".to_owned());
    let c = &meta.config;
    ModelInfo {
        model_id,
        model_version: format!("pconv-unet-l{}-w{}", c.layer_size, c.width),
        device: format!("{:?}", inpainter.device()).to_lowercase(),
        ensemble: inpainter.ensemble().to_string(),
        precision: inpainter.precision().to_string(),
        config: serde_json::to_value(meta).unwrap_or_default(),
    }
}

pub(super) fn load_and_start(shared: Arc<Shared>) {
    let s = &shared.settings;
    let loaded = Inpainter::load_with(s.model.as_deref(), s.device, s.precision);
    let inpainter = match loaded {
        Ok(i) => Arc::new(i.with_ensemble(s.ensemble)),
        Err(e) => {
            tracing::error!("loading the model failed: {e}");
            *shared.state.lock().unwrap() = LoadState::Failed(e.to_string());
            // Nobody will run what is queued; answer it now rather than at the timeout.
            for job in shared.queue.lock().unwrap().drain(..) {
                let _ = job.reply.send(Err(PoolError::NotReady(e.to_string())));
            }
            return;
        }
    };
    let info = model_info(&inpainter, s.model.as_ref());
    tracing::info!(model = %info.model_id, device = %info.device, "model loaded");
    for i in 0..s.workers.max(1) {
        let shared = shared.clone();
        let inpainter = inpainter.clone();
        std::thread::Builder::new()
            .name(format!("inference-{i}"))
            .spawn(move || worker(shared, inpainter))
            .expect("spawn inference worker");
    }
    *shared.state.lock().unwrap() = LoadState::Ready(info);
}

fn worker(shared: Arc<Shared>, default: Arc<Inpainter>) {
    if let Some(n) = shared.settings.intra_op_threads {
        pin_intra_op_threads(n);
    }
    while let Some(batch) = next_batch(&shared) {
        shared.metrics.busy_workers.fetch_add(1, Ordering::Relaxed);
        // A libtorch panic fails this batch (its senders drop: 500), not the worker.
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let inpainter = match batch[0].key.3 {
                ModelKey::Default => Ok(default.clone()),
                ModelKey::Tuned(id) => shared.models.get(id),
            };
            match inpainter {
                Ok(inpainter) => run_batch(&inpainter, batch, &shared),
                Err(e) => {
                    for job in batch {
                        let err = match &e {
                            ModelError::Unknown(id) => PoolError::UnknownModel(id.clone()),
                            e => PoolError::internal(e),
                        };
                        let _ = job.reply.send(Err(err));
                    }
                }
            }
        }));
        if outcome.is_err() {
            tracing::error!("an inference batch panicked");
        }
        shared.metrics.busy_workers.fetch_sub(1, Ordering::Relaxed);
    }
}

fn next_batch(shared: &Shared) -> Option<Vec<Job>> {
    let s = &shared.settings;
    let mut q = shared.queue.lock().unwrap();
    let first = loop {
        if shared.shutdown.load(Ordering::SeqCst) {
            return None;
        }
        if let Some(job) = q.pop_front() {
            break job;
        }
        q = shared.wake.wait(q).unwrap();
    };
    let key = first.key;
    let mut batch = vec![first];
    let deadline = Instant::now() + s.batch_window;
    loop {
        let mut i = 0;
        while i < q.len() && batch.len() < s.batch_max {
            if q[i].key == key {
                batch.extend(q.remove(i));
            } else {
                i += 1;
            }
        }
        let now = Instant::now();
        if batch.len() >= s.batch_max || now >= deadline {
            return Some(batch);
        }
        q = shared.wake.wait_timeout(q, deadline - now).unwrap().0;
    }
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

fn decode(
    input: &JobInput,
    max_pixels: u64,
) -> Result<(DynamicImage, HoleMask), partialconv::Error> {
    let image = decode_image(&input.image, "image", Some(max_pixels))?;
    let mask = HoleMask::from_image(&decode_image(&input.mask, "mask", Some(max_pixels))?)
        .grown(input.mask_grow)?;
    let (w, h) = image.dimensions();
    let (mask_w, mask_h) = mask.dimensions();
    if (mask_w, mask_h) != (w, h) {
        return Err(partialconv::Error::MaskSize {
            image_w: w,
            image_h: h,
            mask_w,
            mask_h,
        });
    }
    Ok((image, mask))
}

fn run_batch(default: &Inpainter, jobs: Vec<Job>, shared: &Shared) {
    let metrics = &shared.metrics;
    // A request may ask for another self-ensemble; a clone shares the weights.
    let ensemble = jobs[0].key.4;
    let other;
    let inpainter = if ensemble == default.ensemble() {
        default
    } else {
        other = default.clone().with_ensemble(ensemble);
        &other
    };
    let started = Instant::now();
    let mut items = Vec::with_capacity(jobs.len());
    let mut live = Vec::with_capacity(jobs.len());
    for job in jobs {
        // Taken off the queue just before its client gave up.
        if job.reply.is_closed() {
            metrics.cancelled.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        match decode(&job.input, shared.settings.max_pixels) {
            Ok(item) => {
                items.push(item);
                live.push(job);
            }
            Err(e) => {
                let _ = job.reply.send(Err(PoolError::Input(e)));
            }
        }
    }
    if live.is_empty() {
        return;
    }
    let decode_ms = ms(started) / live.len() as f64;
    let strategy = live[0].input.strategy;
    let resolved: Vec<String> = items
        .iter()
        .map(|(img, mask)| {
            if mask.is_empty() {
                "none".to_owned()
            } else {
                let (w, h) = img.dimensions();
                inpainter.resolve(strategy, w, h, mask).to_string()
            }
        })
        .collect();
    let t = Instant::now();
    let result = if items.len() == 1 {
        inpainter
            .predict(&items[0].0, &items[0].1, strategy)
            .map(|r| vec![r])
    } else {
        inpainter.predict_batch(&items, strategy)
    };
    let inference_ms = ms(t);
    metrics.record_inference(inference_ms / 1000.0);
    metrics.record_batch(live.len());
    let batch_size = live.len();
    match result {
        Ok(outputs) => {
            for (((job, out), (_, mask)), strategy) in
                live.into_iter().zip(outputs).zip(&items).zip(resolved)
            {
                metrics.record_ensemble(ensemble.name(), inference_ms / 1000.0);
                let t = Instant::now();
                let reply = encode_result(&job.input, &out).map(|(bytes, master)| {
                    let (width, height) = out.dimensions();
                    JobOutput {
                        bytes,
                        content_type: job.input.format.content_type(),
                        master,
                        ensemble,
                        width,
                        height,
                        hole_ratio: mask.hole_ratio(),
                        strategy,
                        inference_ms,
                        decode_ms,
                        encode_ms: ms(t),
                        batch_size,
                    }
                });
                let _ = job.reply.send(reply);
            }
        }
        Err(e) => {
            tracing::error!("inference failed: {e}");
            let bad_input = e.is_bad_input();
            let msg = e.to_string();
            for job in live {
                let err = if bad_input {
                    PoolError::Input(partialconv::Error::InvalidArgument(msg.clone()))
                } else {
                    PoolError::Internal(msg.clone())
                };
                let _ = job.reply.send(Err(err));
            }
        }
    }
}

/// The result in the request's format and, when that is lossy and a master was asked for,
/// as a lossless PNG too; both carry the photo's ICC profile and EXIF.
fn encode_result(
    input: &JobInput,
    out: &DynamicImage,
) -> Result<(bytes::Bytes, Option<bytes::Bytes>), PoolError> {
    // Unreadable metadata costs the metadata, not the result.
    let metadata = Metadata::read(&input.image)
        .unwrap_or_default()
        .for_upright_output(input.keep_gps);
    let bytes = encode(out, input.format, &metadata).map_err(PoolError::internal)?;
    let master = if input.master && input.format.is_lossy() {
        Some(
            encode(out, OutputFormat::Png, &metadata)
                .map_err(PoolError::internal)?
                .into(),
        )
    } else {
        None
    };
    Ok((bytes.into(), master))
}
