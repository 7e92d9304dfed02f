//! Image-quality metrics on 8-bit RGB images.
//!
//! The definitions follow scikit-image with `data_range = 255` so that numbers
//! reported by this crate can be compared with published inpainting results
//! (which are almost always computed with scikit-image):
//!
//! * [`psnr`] = `skimage.metrics.peak_signal_noise_ratio(a, b, data_range=255)`
//! * [`ssim`] = `skimage.metrics.structural_similarity(a, b, channel_axis=2, data_range=255)`
//!   (7x7 uniform window, K1 = 0.01, K2 = 0.03, sample covariance, the
//!   3-pixel border where the window does not fit is excluded, mean over channels)
//! * [`mean_l1`] = mean absolute difference in 0..255 units.
//!
//! The tests in `tests/metrics_reference.rs` check these against values written
//! by `tests/reference/make_metric_fixtures.py`.

use image::RgbImage;

/// Hole-ratio buckets used for reporting: (0.01,0.1], (0.1,0.2], (0.2,0.3],
/// (0.3,0.4], (0.4,0.5].
pub use crate::imaging::masks::RATIO_BUCKETS as BUCKETS;

/// Index into [`BUCKETS`] of the bucket whose half-open interval `(lo, hi]`
/// contains `hole_ratio`, or `None` when it lies outside all of them (including NaN).
pub fn bucket_of(hole_ratio: f64) -> Option<usize> {
    BUCKETS
        .iter()
        .position(|&(lo, hi)| hole_ratio > lo && hole_ratio <= hi)
}

const DATA_RANGE: f64 = 255.0;
const WIN: usize = 7;
const K1: f64 = 0.01;
const K2: f64 = 0.03;

fn check_dims(a: &RgbImage, b: &RgbImage) {
    assert_eq!(
        a.dimensions(),
        b.dimensions(),
        "images must have the same size"
    );
}

/// Peak signal-to-noise ratio in dB with a data range of 255.
///
/// Returns `f64::INFINITY` when the images are identical (scikit-image divides
/// by zero there and also yields `inf`). Empty images give NaN.
///
/// # Panics
/// If the images differ in size.
pub fn psnr(a: &RgbImage, b: &RgbImage) -> f64 {
    check_dims(a, b);
    // Squared 8-bit differences summed in u64 are exact, so the only rounding
    // is in the final division and log, unlike a float accumulation.
    let sse: u64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(&x, &y)| {
            let d = u64::from(x.abs_diff(y));
            d * d
        })
        .sum();
    if sse == 0 && !a.as_raw().is_empty() {
        return f64::INFINITY;
    }
    let mse = sse as f64 / a.as_raw().len() as f64;
    10.0 * (DATA_RANGE * DATA_RANGE / mse).log10()
}

/// Mean absolute difference over all pixels and channels, in 0..255 units.
/// Empty images give NaN.
///
/// # Panics
/// If the images differ in size.
pub fn mean_l1(a: &RgbImage, b: &RgbImage) -> f64 {
    check_dims(a, b);
    let sum: u64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(&x, &y)| u64::from(x.abs_diff(y)))
        .sum();
    sum as f64 / a.as_raw().len() as f64
}

/// Mean structural similarity, as scikit-image computes it for RGB images with
/// `data_range=255` and default arguments.
///
/// # Panics
/// If the images differ in size, or if either side is smaller than the 7-pixel
/// window (scikit-image raises a `ValueError` there).
pub fn ssim(a: &RgbImage, b: &RgbImage) -> f64 {
    check_dims(a, b);
    let (w, h) = (a.width() as usize, a.height() as usize);
    assert!(
        w >= WIN && h >= WIN,
        "SSIM needs images of at least {WIN}x{WIN}, got {w}x{h}"
    );
    let mut x = vec![0u32; w * h];
    let mut y = vec![0u32; w * h];
    let mut total = 0.0;
    for c in 0..3 {
        for (dst, src) in [(&mut x, a.as_raw()), (&mut y, b.as_raw())] {
            for (d, px) in dst.iter_mut().zip(src.chunks_exact(3)) {
                *d = u32::from(px[c]);
            }
        }
        total += channel_ssim(&x, &y, w, h);
    }
    total / 3.0
}

/// Mean SSIM of one channel over the positions where the 7x7 window fits
/// entirely, which is exactly the region scikit-image keeps after cropping.
///
/// The window sums of x, y, x², y² and xy are kept as integers: they are exact,
/// so the result differs from scikit-image's running float sums only by their
/// rounding (~1e-15). Column sums are running sums over rows; the loops are
/// written over equal-length slices so that they vectorise.
fn channel_ssim(x: &[u32], y: &[u32], w: usize, h: usize) -> f64 {
    let (ow, oh) = (w + 1 - WIN, h + 1 - WIN);
    let np = (WIN * WIN) as f64;
    let inv_np = 1.0 / np;
    let cov_norm = np / (np - 1.0);
    let c1 = (K1 * DATA_RANGE).powi(2);
    let c2 = (K2 * DATA_RANGE).powi(2);

    // Column sums over the current 7 rows, one vector per quantity.
    let mut cols: [Vec<u32>; 5] = std::array::from_fn(|_| vec![0; w]);
    let row = |r: usize| (&x[r * w..(r + 1) * w], &y[r * w..(r + 1) * w]);
    for r in 0..WIN {
        let (xr, yr) = row(r);
        update_columns::<true>(&mut cols, xr, yr);
    }

    // Window sums of the current output row, and its SSIM values.
    let mut win: [Vec<u32>; 5] = std::array::from_fn(|_| vec![0; ow]);
    let mut vals = vec![0.0f64; ow];
    let mut total = 0.0f64;
    for oy in 0..oh {
        if oy > 0 {
            let (xr, yr) = row(oy + WIN - 1);
            update_columns::<true>(&mut cols, xr, yr);
            let (xr, yr) = row(oy - 1);
            update_columns::<false>(&mut cols, xr, yr);
        }
        for (sums, col) in win.iter_mut().zip(&cols) {
            sums.copy_from_slice(&col[..ow]);
            for d in 1..WIN {
                for (s, &c) in sums.iter_mut().zip(&col[d..d + ow]) {
                    *s += c;
                }
            }
        }
        let [hx, hy, hxx, hyy, hxy] = &win;
        let (hy, hxx, hyy, hxy) = (&hy[..ow], &hxx[..ow], &hyy[..ow], &hxy[..ow]);
        for (i, v) in vals.iter_mut().enumerate().take(ow) {
            let ux = f64::from(hx[i]) * inv_np;
            let uy = f64::from(hy[i]) * inv_np;
            let uxx = f64::from(hxx[i]) * inv_np;
            let uyy = f64::from(hyy[i]) * inv_np;
            let uxy = f64::from(hxy[i]) * inv_np;
            let vx = cov_norm * (uxx - ux * ux);
            let vy = cov_norm * (uyy - uy * uy);
            let vxy = cov_norm * (uxy - ux * uy);
            let num = (2.0 * ux * uy + c1) * (2.0 * vxy + c2);
            let den = (ux * ux + uy * uy + c1) * (vx + vy + c2);
            *v = num / den;
        }
        total += vals.iter().sum::<f64>();
    }
    total / (ow * oh) as f64
}

/// Add (`ADD`) or subtract one image row's x, y, x², y², xy to the column sums.
/// The sums are exact in u32: at most 7 * 255² per column.
fn update_columns<const ADD: bool>(cols: &mut [Vec<u32>; 5], xr: &[u32], yr: &[u32]) {
    let op = |a: u32, b: u32| if ADD { a + b } else { a - b };
    let n = xr.len();
    let yr = &yr[..n];
    let [sx, sy, sxx, syy, sxy] = cols;
    let (sx, sy, sxx, syy, sxy) = (
        &mut sx[..n],
        &mut sy[..n],
        &mut sxx[..n],
        &mut syy[..n],
        &mut sxy[..n],
    );
    for i in 0..n {
        let (p, q) = (xr[i], yr[i]);
        sx[i] = op(sx[i], p);
        sy[i] = op(sy[i], q);
        sxx[i] = op(sxx[i], p * p);
        syy[i] = op(syy[i], q * q);
        sxy[i] = op(sxy[i], p * q);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                (x * 7 % 256) as u8,
                (y * 5 % 256) as u8,
                ((x + y) * 3 % 256) as u8,
            ])
        })
    }

    #[test]
    fn identical_images() {
        let a = gradient(20, 15);
        assert_eq!(psnr(&a, &a), f64::INFINITY);
        assert_eq!(mean_l1(&a, &a), 0.0);
        assert!((ssim(&a, &a) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn constant_offset() {
        let a = gradient(16, 16);
        let mut b = a.clone();
        for p in b.as_mut() {
            *p = if *p < 250 { *p + 3 } else { *p - 7 };
        }
        let n = a.as_raw().len() as f64;
        let diffs: Vec<f64> = a
            .as_raw()
            .iter()
            .zip(b.as_raw())
            .map(|(&x, &y)| f64::from(x) - f64::from(y))
            .collect();
        let mse = diffs.iter().map(|d| d * d).sum::<f64>() / n;
        let l1 = diffs.iter().map(|d| d.abs()).sum::<f64>() / n;
        assert!((psnr(&a, &b) - 10.0 * (255.0f64 * 255.0 / mse).log10()).abs() < 1e-12);
        assert!((mean_l1(&a, &b) - l1).abs() < 1e-12);
    }

    #[test]
    fn psnr_of_uniform_error_matches_closed_form() {
        let a = RgbImage::from_pixel(8, 8, image::Rgb([100, 100, 100]));
        let b = RgbImage::from_pixel(8, 8, image::Rgb([110, 90, 100]));
        // mse = (100 + 100 + 0) / 3
        let expect = 10.0 * (255.0f64 * 255.0 / (200.0 / 3.0)).log10();
        assert!((psnr(&a, &b) - expect).abs() < 1e-12);
        assert!((mean_l1(&a, &b) - 20.0 / 3.0).abs() < 1e-12);
    }

    /// Straightforward per-window SSIM in floats, as a second implementation.
    fn ssim_naive(a: &RgbImage, b: &RgbImage) -> f64 {
        let (w, h) = (a.width() as usize, a.height() as usize);
        let c1 = (0.01f64 * 255.0).powi(2);
        let c2 = (0.03f64 * 255.0).powi(2);
        let mut total = 0.0;
        for c in 0..3 {
            let mut acc = 0.0;
            for y in 3..h - 3 {
                for x in 3..w - 3 {
                    let mut v = Vec::new();
                    for dy in 0..7 {
                        for dx in 0..7 {
                            let pa = a.get_pixel((x + dx - 3) as u32, (y + dy - 3) as u32)[c];
                            let pb = b.get_pixel((x + dx - 3) as u32, (y + dy - 3) as u32)[c];
                            v.push((f64::from(pa), f64::from(pb)));
                        }
                    }
                    let n = v.len() as f64;
                    let mx = v.iter().map(|p| p.0).sum::<f64>() / n;
                    let my = v.iter().map(|p| p.1).sum::<f64>() / n;
                    let vx = v.iter().map(|p| (p.0 - mx).powi(2)).sum::<f64>() / (n - 1.0);
                    let vy = v.iter().map(|p| (p.1 - my).powi(2)).sum::<f64>() / (n - 1.0);
                    let cxy = v.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum::<f64>() / (n - 1.0);
                    acc += (2.0 * mx * my + c1) * (2.0 * cxy + c2)
                        / ((mx * mx + my * my + c1) * (vx + vy + c2));
                }
            }
            total += acc / ((w - 6) * (h - 6)) as f64;
        }
        total / 3.0
    }

    #[test]
    fn ssim_matches_naive_windows() {
        let a = gradient(23, 11);
        let b = RgbImage::from_fn(23, 11, |x, y| {
            let p = a.get_pixel(x, y);
            let n = ((x * 31 + y * 17) % 23) as u8;
            image::Rgb([p[0].wrapping_add(n), p[1] / 2 + n, 255 - p[2]])
        });
        let fast = ssim(&a, &b);
        let slow = ssim_naive(&a, &b);
        assert!((fast - slow).abs() < 1e-12, "{fast} vs {slow}");
        assert!(fast < 0.99);
    }

    #[test]
    fn ssim_is_symmetric() {
        let a = gradient(12, 9);
        let b = RgbImage::from_fn(12, 9, |x, y| {
            image::Rgb([(x * y) as u8, 40, (x * 20) as u8])
        });
        assert!((ssim(&a, &b) - ssim(&b, &a)).abs() < 1e-15);
    }

    #[test]
    #[should_panic(expected = "same size")]
    fn size_mismatch_panics() {
        psnr(&gradient(8, 8), &gradient(8, 9));
    }

    #[test]
    #[should_panic(expected = "at least 7x7")]
    fn ssim_too_small_panics() {
        ssim(&gradient(6, 10), &gradient(6, 10));
    }

    #[test]
    fn buckets() {
        assert_eq!(bucket_of(0.0), None);
        assert_eq!(bucket_of(0.01), None);
        assert_eq!(bucket_of(0.010001), Some(0));
        assert_eq!(bucket_of(0.1), Some(0));
        assert_eq!(bucket_of(0.15), Some(1));
        assert_eq!(bucket_of(0.3), Some(2));
        assert_eq!(bucket_of(0.5), Some(4));
        assert_eq!(bucket_of(0.51), None);
        assert_eq!(bucket_of(f64::NAN), None);
        for (i, &(lo, hi)) in BUCKETS.iter().enumerate() {
            assert!(lo < hi);
            if i > 0 {
                assert_eq!(BUCKETS[i - 1].1, lo, "buckets must be contiguous");
            }
        }
    }
}
