//! The evaluation protocol: photos scaled so the short side is `size` and centre-cropped to
//! `size²`, one free-form mask per hole-ratio bucket per photo (fixed by the photo's index),
//! and PSNR / SSIM / L1 on the composited 8-bit output, next to OpenCV-style Telea on the
//! same holes.

pub mod metrics;

use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::classic::telea;
use crate::error::Result;
use crate::imaging::convert::{composite, scale_short_side};
use crate::imaging::masks::{HoleGenerator, HoleMask, RATIO_BUCKETS};
use crate::model::Model;

pub use crate::classic::telea::TELEA_RADIUS;

/// Mean metrics over the masks of one hole-ratio bucket.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct BucketMetrics {
    /// Mean PSNR in dB (each image capped at 100 dB).
    pub psnr: f64,
    /// Mean SSIM.
    pub ssim: f64,
    /// Mean absolute error per channel, in 8-bit levels.
    pub l1: f64,
    /// Masks in the bucket.
    pub count: usize,
}

/// One row per bucket of [`RATIO_BUCKETS`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ValReport {
    /// The training step it was taken at; 0 outside training.
    pub step: u64,
    /// One entry per bucket, in the order of [`RATIO_BUCKETS`].
    pub buckets: Vec<BucketMetrics>,
}

impl ValReport {
    /// Mean PSNR over the buckets that have samples.
    pub fn mean_psnr(&self) -> f64 {
        let used: Vec<_> = self.buckets.iter().filter(|b| b.count > 0).collect();
        used.iter().map(|b| b.psnr).sum::<f64>() / used.len().max(1) as f64
    }
}

/// A centre crop of `size²` after scaling the short side to `size`.
pub fn eval_crop(img: &RgbImage, size: u32) -> RgbImage {
    let scaled = scale_short_side(img, size);
    let (w, h) = scaled.dimensions();
    image::imageops::crop_imm(&scaled, (w - size) / 2, (h - size) / 2, size, size).to_image()
}

/// The fixed masks of photo `index`: one per bucket.
pub fn eval_masks(size: u32, index: usize) -> Vec<HoleMask> {
    let g = HoleGenerator::default();
    RATIO_BUCKETS
        .iter()
        .enumerate()
        .map(|(b, &r)| g.generate(size, size, r, 1_000_003 * index as u64 + b as u64))
        .collect()
}

/// Scores `fill` (which returns the filled image, composited or not) on `(photo, mask)`
/// pairs, bucketed by each mask's hole ratio.
pub fn evaluate_pairs(
    pairs: &[(&RgbImage, &HoleMask)],
    mut fill: impl FnMut(&RgbImage, &HoleMask) -> Result<RgbImage>,
) -> Result<ValReport> {
    let mut sums = vec![BucketMetrics::default(); RATIO_BUCKETS.len()];
    for &(gt, mask) in pairs {
        let Some(b) = metrics::bucket_of(mask.hole_ratio()) else {
            continue;
        };
        let out = composite(gt, &fill(gt, mask)?, mask);
        sums[b].psnr += metrics::psnr(gt, &out).min(100.0);
        sums[b].ssim += metrics::ssim(gt, &out);
        sums[b].l1 += metrics::mean_l1(gt, &out);
        sums[b].count += 1;
    }
    for s in &mut sums {
        let n = s.count.max(1) as f64;
        (s.psnr, s.ssim, s.l1) = (s.psnr / n, s.ssim / n, s.l1 / n);
    }
    Ok(ValReport {
        step: 0,
        buckets: sums,
    })
}

/// The protocol's pairs for `size²` crops: every photo with each of its [`eval_masks`].
pub fn protocol_masks(photos: &[RgbImage], size: u32) -> Vec<Vec<HoleMask>> {
    (0..photos.len()).map(|i| eval_masks(size, i)).collect()
}

/// `model` on the protocol, batching each photo's five masks into one forward pass.
pub fn evaluate_model(model: &Model, photos: &[RgbImage], size: u32) -> Result<ValReport> {
    let masks = protocol_masks(photos, size);
    let mut filled: Vec<RgbImage> = Vec::new();
    for (gt, ms) in photos.iter().zip(&masks) {
        let gts: Vec<&RgbImage> = ms.iter().map(|_| gt).collect();
        filled.extend(model.fill_native(&gts, &ms.iter().collect::<Vec<_>>())?);
    }
    let pairs: Vec<(&RgbImage, &HoleMask)> = photos
        .iter()
        .zip(&masks)
        .flat_map(|(gt, ms)| ms.iter().map(move |m| (gt, m)))
        .collect();
    let mut outputs = filled.into_iter();
    evaluate_pairs(&pairs, |_, _| {
        Ok(outputs.next().expect("one output per pair"))
    })
}

/// Telea on the same pairs.
pub fn evaluate_telea(pairs: &[(&RgbImage, &HoleMask)]) -> Result<ValReport> {
    evaluate_pairs(pairs, |gt, mask| {
        Ok(telea::inpaint_telea(gt, &mask.to_gray(), TELEA_RADIUS))
    })
}

/// A plain-text table of two reports side by side.
pub fn format_table(model: &ValReport, baseline: &ValReport) -> String {
    let mut s = format!(
        "{:<12} {:>5} | {:>8} {:>8} {:>8} | {:>8} {:>8} {:>8}\n",
        "holes", "n", "PSNR", "SSIM", "L1", "Telea", "SSIM", "L1"
    );
    for (i, (m, t)) in model.buckets.iter().zip(&baseline.buckets).enumerate() {
        let (lo, hi) = RATIO_BUCKETS[i];
        s += &format!(
            "({lo:.2}-{hi:.2}] {:>5} | {:>8.2} {:>8.4} {:>8.2} | {:>8.2} {:>8.4} {:>8.2}\n",
            m.count, m.psnr, m.ssim, m.l1, t.psnr, t.ssim, t.l1
        );
    }
    s += &format!(
        "mean PSNR: model {:.2} dB, Telea {:.2} dB ({:+.2} dB)\n",
        model.mean_psnr(),
        baseline.mean_psnr(),
        model.mean_psnr() - baseline.mean_psnr()
    );
    s
}
