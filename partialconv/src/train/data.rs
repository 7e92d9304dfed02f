//! Training data: photos decoded once at the working scale, user masks, and batches of
//! random crops with holes, made on background threads.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use image::{imageops, RgbImage};
use tch::Tensor;

use super::config::TrainConfig;
use crate::error::Result;
use crate::imaging::convert::{image_to_tensor, scale_short_side, valid_tensor};
use crate::imaging::masks::{HoleGenerator, HoleMask, Rng};

/// Photos decoded once and kept at the working scale.
pub(super) struct Photos {
    pub(super) images: Vec<RgbImage>,
    pub(super) skipped: usize,
}

pub(super) fn load_photos(paths: &[PathBuf], side: u32) -> Photos {
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

pub(super) fn load_user_masks(cfg: &TrainConfig) -> Result<Vec<HoleMask>> {
    Ok(match &cfg.masks {
        Some(dir) => crate::imaging::io::list_files(dir)?
            .iter()
            .filter_map(|p| crate::imaging::io::read_mask(p).ok())
            .collect(),
        None => Vec::new(),
    })
}

/// One training batch, on the CPU: normalised images and valid masks.
pub(super) struct Batch {
    pub(super) gt: Tensor,
    pub(super) valid: Tensor,
}

/// Produces batches on background threads so data preparation overlaps the network.
pub(super) struct Loader {
    rx: mpsc::Receiver<Batch>,
    stop: Arc<AtomicBool>,
}

impl Loader {
    pub(super) fn start(
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

    pub(super) fn next(&self) -> Batch {
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
