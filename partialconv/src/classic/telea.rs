//! Telea's fast-marching inpainting (A. Telea, "An Image Inpainting Technique
//! Based on the Fast Marching Method", J. Graphics Tools 9(1), 2004), written to
//! reproduce `cv2.inpaint(img, mask, radius, cv2.INPAINT_TELEA)` on 8-bit RGB.
//!
//! It serves as the classical baseline next to the learned model, so being able
//! to say "this is OpenCV's Telea" matters more than being a clean textbook
//! version. The implementation follows OpenCV's `photo/src/inpaint.cpp` (the
//! `cv::Mat` version with the `std::priority_queue`, as shipped in OpenCV 4.x
//! and 5.0) and keeps its quirks on purpose:
//!
//! * arrival times live on a grid padded by one cell whose border is never
//!   filled (it keeps the time 1e6, which the time gradient of pixels next to
//!   the image edge does see);
//! * the distance of the known pixels around the hole is marched first and
//!   stored negated, so that the level-set factor also sees known pixels;
//! * ties in the marching queue are broken first-in-first-out, the band is
//!   seeded in raster order and neighbours are visited up, left, down, right;
//! * the image gradient of a neighbour uses a factor 2 (not 1/2) for central
//!   differences, and its stencil is shifted inwards on the first and last image
//!   row/column;
//! * the gradient term is normalised to unit length before being added, so any
//!   non-zero gradient moves the result by up to ±√2;
//! * the result is rounded as `saturate_cast<uchar>(sat + 0.5)`, i.e. with a
//!   half-unit upward bias.
//!
//! Single and double precision are mixed exactly where OpenCV mixes them,
//! because the order of the marching front and the 8-bit rounding depend on
//! float ties. Against opencv-python-headless 5.0.0 the output is bit-identical
//! on the committed fixtures and on 120 random image/mask/radius cases
//! (`tests/metrics_reference.rs`); the only known difference is on images one
//! pixel wide or high, where OpenCV reads outside the image and we clamp.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use image::{GrayImage, RgbImage};

/// Cell states of the marching grid.
const KNOWN: u8 = 0;
const BAND: u8 = 1;
const INSIDE: u8 = 2;
/// Marks cells reached by the outward march, whose times get negated afterwards.
const CHANGE: u8 = 3;

/// Arrival time given to cells nothing has reached (OpenCV's 1e6).
const FAR: f32 = 1.0e6;

/// Telea's neighbourhood radius, as in `cv2.inpaint(img, mask, 4, cv2.INPAINT_TELEA)`.
pub const TELEA_RADIUS: f32 = 4.0;

/// Inpaint the pixels where `mask` is non-zero with Telea's method, using
/// neighbourhoods of `radius` pixels (rounded half-to-even and clamped to
/// 1..=100, as OpenCV does).
///
/// `mask`: 255 (or any non-zero) = hole. Returns a new image; pixels outside the
/// hole are unchanged. A mask that covers the whole image leaves nothing to
/// propagate from, so the input is returned as is (as OpenCV does).
///
/// # Panics
/// If `img` and `mask` differ in size.
pub fn inpaint_telea(img: &RgbImage, mask: &GrayImage, radius: f32) -> RgbImage {
    inpaint_telea_within(img, mask, radius, f32::INFINITY)
}

/// [`inpaint_telea`] with the march stopped once its front passes arrival time `max_time`
/// (about the distance into the hole): every pixel it reaches is filled exactly as the full
/// march fills it, since the march is the same up to there; deeper pixels keep their input
/// values. The edge blend needs only the first few pixels, which costs a fraction of a
/// large hole.
pub fn inpaint_telea_within(
    img: &RgbImage,
    mask: &GrayImage,
    radius: f32,
    max_time: f32,
) -> RgbImage {
    assert_eq!(
        img.dimensions(),
        mask.dimensions(),
        "image and mask must have the same size"
    );
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut out = img.clone();
    if w == 0 || h == 0 || mask.as_raw().iter().all(|&m| m == 0) {
        return out;
    }
    let range = (f64::from(radius).round_ties_even() as i32).clamp(1, 100) as usize;
    let mut grid = Grid::new(mask);
    grid.march_outside(range);
    grid.fill(out.as_mut(), range, max_time);
    out
}

/// Entry of the marching queue: smallest time first, equal times in push order.
#[derive(Clone, Copy)]
struct Node {
    t: f32,
    seq: u64,
    idx: usize,
}

impl PartialEq for Node {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Node {}
impl PartialOrd for Node {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Node {
    fn cmp(&self, other: &Self) -> Ordering {
        self.t.total_cmp(&other.t).then(self.seq.cmp(&other.seq))
    }
}

#[derive(Default)]
struct Queue {
    heap: BinaryHeap<Reverse<Node>>,
    seq: u64,
}

impl Queue {
    fn push(&mut self, idx: usize, t: f32) {
        self.heap.push(Reverse(Node {
            t,
            seq: self.seq,
            idx,
        }));
        self.seq += 1;
    }

    fn pop(&mut self) -> Option<usize> {
        self.heap.pop().map(|Reverse(n)| n.idx)
    }
}

/// Marching state on the image padded by one cell on every side.
struct Grid {
    /// Padded width and height.
    pw: usize,
    ph: usize,
    /// `INSIDE` for hole cells that are not yet filled, otherwise not `INSIDE`.
    flags: Vec<u8>,
    /// Arrival times: 0 on the initial band, positive inside the hole, negative
    /// (distance) in the known ring around it, `FAR` elsewhere.
    t: Vec<f32>,
    /// The initial band: known cells 4-adjacent to the hole, in raster order.
    band: Vec<usize>,
}

impl Grid {
    fn new(mask: &GrayImage) -> Self {
        let (w, h) = (mask.width() as usize, mask.height() as usize);
        let (pw, ph) = (w + 2, h + 2);
        let mut flags = vec![KNOWN; pw * ph];
        for (y, row) in mask.as_raw().chunks_exact(w).enumerate() {
            for (x, &m) in row.iter().enumerate() {
                if m != 0 {
                    flags[(y + 1) * pw + x + 1] = INSIDE;
                }
            }
        }
        let mut t = vec![FAR; pw * ph];
        let mut band = Vec::new();
        for y in 1..ph - 1 {
            for x in 1..pw - 1 {
                let i = y * pw + x;
                if flags[i] != INSIDE
                    && [i - pw, i - 1, i + 1, i + pw]
                        .iter()
                        .any(|&n| flags[n] == INSIDE)
                {
                    band.push(i);
                    t[i] = 0.0;
                }
            }
        }
        Self {
            pw,
            ph,
            flags,
            t,
            band,
        }
    }

    /// 4-neighbours in OpenCV's visiting order: up, left, down, right.
    fn neighbours(&self, i: usize) -> [usize; 4] {
        [i - self.pw, i - 1, i + self.pw, i + 1]
    }

    /// Arrival time at cell `i` from the upwind pairs of its neighbours.
    fn arrival(&self, flags: &[u8], i: usize) -> f32 {
        let [up, left, down, right] = self.neighbours(i);
        let a = solve(flags, &self.t, up, left);
        let b = solve(flags, &self.t, down, left);
        let c = solve(flags, &self.t, up, right);
        let d = solve(flags, &self.t, down, right);
        min_f32(min_f32(a, b), min_f32(c, d))
    }

    /// Distance of the known pixels within the (square) `range` neighbourhood of
    /// the hole, marched outwards from the band and stored negated in `t`.
    fn march_outside(&mut self, range: usize) {
        let (pw, ph) = (self.pw, self.ph);
        let near = dilate_square(&self.flags, pw, ph, range);
        let mut ring: Vec<u8> = near
            .iter()
            .zip(&self.flags)
            .map(|(&n, &f)| if n && f != INSIDE { INSIDE } else { KNOWN })
            .collect();
        for &i in &self.band {
            ring[i] = KNOWN;
        }
        clear_border(&mut ring, pw, ph);

        let mut queue = Queue::default();
        for &i in &self.band {
            queue.push(i, 0.0);
        }
        while let Some(p) = queue.pop() {
            ring[p] = CHANGE;
            for n in self.neighbours(p) {
                if ring[n] == INSIDE {
                    let d = self.arrival(&ring, n);
                    self.t[n] = d;
                    ring[n] = BAND;
                    queue.push(n, d);
                }
            }
        }
        for (t, &r) in self.t.iter_mut().zip(&ring) {
            if r == CHANGE {
                *t = -*t;
            }
        }
    }

    /// March into the hole, filling each pixel of `out` (unpadded RGB) as it is reached.
    fn fill(&mut self, out: &mut [u8], range: usize, max_time: f32) {
        let kernel = Kernel::new(range);
        let mut queue = Queue::default();
        for &i in &self.band {
            queue.push(i, 0.0);
        }
        while let Some(p) = queue.pop() {
            if self.t[p] > max_time {
                break;
            }
            self.flags[p] = KNOWN;
            for n in self.neighbours(p) {
                if self.flags[n] == INSIDE {
                    let d = self.arrival(&self.flags, n);
                    self.t[n] = d;
                    let rgb = self.weighted_estimate(out, n, &kernel);
                    let (y, x) = (n / self.pw - 1, n % self.pw - 1);
                    let o = (y * (self.pw - 2) + x) * 3;
                    out[o..o + 3].copy_from_slice(&rgb);
                    self.flags[n] = BAND;
                    queue.push(n, d);
                }
            }
        }
    }

    /// Gradient of the arrival time at `i`, one-sided where a neighbour is still unknown.
    fn time_gradient(&self, i: usize) -> (f32, f32) {
        let f = &self.flags;
        let t = &self.t;
        let diff = |prev: usize, next: usize| -> f32 {
            match (f[prev] != INSIDE, f[next] != INSIDE) {
                (true, true) => (t[next] - t[prev]) * 0.5,
                (false, true) => t[next] - t[i],
                (true, false) => t[i] - t[prev],
                (false, false) => 0.0,
            }
        };
        (diff(i - 1, i + 1), diff(i - self.pw, i + self.pw))
    }

    /// Telea's weighted first-order extrapolation from the known pixels within
    /// the kernel's range of padded cell `i`, for each channel.
    fn weighted_estimate(&self, out: &[u8], i: usize, kernel: &Kernel) -> [u8; 3] {
        let (pw, ph) = (self.pw as isize, self.ph as isize);
        let (w, h) = (pw - 2, ph - 2);
        let (ci, cj) = ((i / self.pw) as isize, (i % self.pw) as isize);
        let (grad_tx, grad_ty) = self.time_gradient(i);
        let t_i = self.t[i];
        let r = kernel.range;
        // Byte offset of image pixel (row, col). OpenCV reads out of bounds for
        // 1-pixel-wide images; clamping is a no-op for anything larger.
        let at = |row: isize, col: isize| -> usize {
            (row.clamp(0, h - 1) * w + col.clamp(0, w - 1)) as usize * 3
        };

        let mut ia = [0.0f32; 3];
        let mut jx = [0.0f32; 3];
        let mut jy = [0.0f32; 3];
        let mut s = [1.0e-20f32; 3];
        for k in ci - r..=ci + r {
            if k <= 0 || k >= ph - 1 {
                continue;
            }
            // OpenCV's image rows for the gradient stencil of padded row k: `km`
            // is its own row except on the first image row, where the stencil is
            // shifted down one row so that `km - 1` stays inside; `kp + 1` is the
            // row below, shifted up on the last image row.
            let km = k - 1 + isize::from(k == 1);
            let kp = k - 1 - isize::from(k == ph - 2);
            for l in cj - r..=cj + r {
                if l <= 0 || l >= pw - 1 {
                    continue;
                }
                let n = (k * pw + l) as usize;
                let Some(dst) = kernel.dst(k - ci, l - cj) else {
                    continue;
                };
                if self.flags[n] == INSIDE {
                    continue;
                }
                let lm = l - 1 + isize::from(l == 1);
                let lp = l - 1 - isize::from(l == pw - 2);
                let rx = (cj - l) as f32;
                let ry = (ci - k) as f32;
                let lev = (1.0 / (1.0 + f64::from((self.t[n] - t_i).abs()))) as f32;
                let mut dir = rx * grad_tx + ry * grad_ty;
                // A floor rather than zero keeps neighbours perpendicular to the
                // front from dropping out entirely (OpenCV's constant).
                if f64::from(dir.abs()) <= 0.01 {
                    dir = 0.000001;
                }
                let wgt = (dst * lev * dir).abs();

                // Image gradient stencils as (minuend, subtrahend, scale); the scale
                // of the central difference is OpenCV's 2 (where 1/2 was meant).
                let known = |m: usize| self.flags[m] != INSIDE;
                let grad_x = match (known(n - 1), known(n + 1)) {
                    (true, true) => Some((at(km, lp + 1), at(km, lm - 1), 2.0)),
                    (false, true) => Some((at(km, lp + 1), at(km, lm), 1.0)),
                    (true, false) => Some((at(km, lp), at(km, lm - 1), 1.0)),
                    (false, false) => None,
                };
                let grad_y = match (known(n - self.pw), known(n + self.pw)) {
                    (true, true) => Some((at(kp + 1, lm), at(km - 1, lm), 2.0)),
                    (false, true) => Some((at(kp + 1, lm), at(km, lm), 1.0)),
                    (true, false) => Some((at(kp, lm), at(km - 1, lm), 1.0)),
                    (false, false) => None,
                };
                let centre = at(k - 1, l - 1);
                let grad = |g: Option<(usize, usize, f32)>, c: usize| {
                    g.map_or(0.0, |(p, q, scale)| {
                        (f32::from(out[p + c]) - f32::from(out[q + c])) * scale
                    })
                };
                for c in 0..3 {
                    let gx = grad(grad_x, c);
                    let gy = grad(grad_y, c);
                    ia[c] += wgt * f32::from(out[centre + c]);
                    jx[c] -= wgt * (gx * rx);
                    jy[c] -= wgt * (gy * ry);
                    s[c] += wgt;
                }
            }
        }
        std::array::from_fn(|c| {
            let norm = (jx[c] * jx[c] + jy[c] * jy[c]).sqrt() + 1.0e-20;
            let sat = ia[c] / s[c] + (jx[c] + jy[c]) / norm;
            saturate_u8(f64::from(sat) + 0.5)
        })
    }
}

/// The geometric-distance factor 1/|r|³ for every offset in the disc of radius
/// `range`, precomputed because it is the same for every pixel.
struct Kernel {
    range: isize,
    /// Row-major over offsets -range..=range; `None` outside the disc and at the centre.
    dst: Vec<Option<f32>>,
}

impl Kernel {
    fn new(range: usize) -> Self {
        let r = range as isize;
        let mut dst = Vec::with_capacity((2 * range + 1).pow(2));
        for dy in -r..=r {
            for dx in -r..=r {
                let inside = dx * dx + dy * dy <= r * r && (dx, dy) != (0, 0);
                // Same mixed precision as OpenCV: |r|² in f32, the rest in f64.
                let (rx, ry) = (dx as f32, dy as f32);
                let len2 = f64::from(rx * rx + ry * ry);
                dst.push(inside.then(|| (1.0 / (len2 * len2.sqrt())) as f32));
            }
        }
        Self { range: r, dst }
    }

    fn dst(&self, dy: isize, dx: isize) -> Option<f32> {
        let side = 2 * self.range + 1;
        self.dst[((dy + self.range) * side + dx + self.range) as usize]
    }
}

/// OpenCV's `FastMarching_solve`: the upwind Eikonal update from two
/// neighbours, in double precision.
fn solve(flags: &[u8], t: &[f32], p1: usize, p2: usize) -> f32 {
    let a11 = f64::from(t[p1]);
    let a22 = f64::from(t[p2]);
    let m12 = if a11 > a22 { a22 } else { a11 };
    let sol = match (flags[p1] != INSIDE, flags[p2] != INSIDE) {
        (true, true) if (a11 - a22).abs() >= 1.0 => 1.0 + m12,
        (true, true) => (a11 + a22 + (2.0 - (a11 - a22) * (a11 - a22)).sqrt()) * 0.5,
        (true, false) => 1.0 + a11,
        (false, true) => 1.0 + a22,
        (false, false) => 1.0 + m12,
    };
    sol as f32
}

fn min_f32(a: f32, b: f32) -> f32 {
    if a > b {
        b
    } else {
        a
    }
}

/// `saturate_cast<uchar>(double)`: round half to even, then clamp.
fn saturate_u8(v: f64) -> u8 {
    v.round_ties_even().clamp(0.0, 255.0) as u8
}

/// Cells within Chebyshev distance `r` of an `INSIDE` cell (a square dilation).
fn dilate_square(flags: &[u8], pw: usize, ph: usize, r: usize) -> Vec<bool> {
    // Two 1-D passes with prefix counts keep this O(n) for any radius.
    let mut rows = vec![false; pw * ph];
    let mut prefix = vec![0u32; pw.max(ph) + 1];
    for y in 0..ph {
        for x in 0..pw {
            prefix[x + 1] = prefix[x] + u32::from(flags[y * pw + x] == INSIDE);
        }
        for x in 0..pw {
            rows[y * pw + x] = prefix[(x + r + 1).min(pw)] > prefix[x.saturating_sub(r)];
        }
    }
    let mut out = vec![false; pw * ph];
    for x in 0..pw {
        for y in 0..ph {
            prefix[y + 1] = prefix[y] + u32::from(rows[y * pw + x]);
        }
        for y in 0..ph {
            out[y * pw + x] = prefix[(y + r + 1).min(ph)] > prefix[y.saturating_sub(r)];
        }
    }
    out
}

fn clear_border(grid: &mut [u8], pw: usize, ph: usize) {
    for x in 0..pw {
        grid[x] = KNOWN;
        grid[(ph - 1) * pw + x] = KNOWN;
    }
    for y in 0..ph {
        grid[y * pw] = KNOWN;
        grid[y * pw + pw - 1] = KNOWN;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Luma, Rgb};

    fn textured(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            Rgb([
                (x * 9 + y * 2) as u8,
                (128.0 + 60.0 * ((x as f32) * 0.3).sin()) as u8,
                (y * 11 % 256) as u8,
            ])
        })
    }

    #[test]
    fn known_pixels_are_untouched() {
        let img = textured(30, 20);
        let mask = GrayImage::from_fn(30, 20, |x, y| {
            Luma([if (5..12).contains(&x) && (3..9).contains(&y) || x == 29 {
                255
            } else {
                0
            }])
        });
        let out = inpaint_telea(&img, &mask, 4.0);
        for (x, y, p) in out.enumerate_pixels() {
            if mask.get_pixel(x, y)[0] == 0 {
                assert_eq!(p, img.get_pixel(x, y));
            }
        }
        assert_ne!(out, img, "the hole must be filled");
    }

    #[test]
    fn constant_image_stays_nearly_constant() {
        // Not exactly constant: OpenCV's unit-length gradient term turns any
        // rounding difference into a +-1 step, and we reproduce that.
        let colour = [10u8, 200, 77];
        let mask = GrayImage::from_fn(24, 18, |x, y| {
            let disc = (x as i32 - 10).pow(2) + (y as i32 - 8).pow(2) < 30;
            Luma([u8::from(disc || y == 0)])
        });
        // Whatever lies under the hole must not leak into the result.
        let dirty = RgbImage::from_fn(24, 18, |x, y| {
            if mask.get_pixel(x, y)[0] != 0 {
                Rgb([255, 0, 255])
            } else {
                Rgb(colour)
            }
        });
        let out = inpaint_telea(&dirty, &mask, 3.0);
        for (x, y, p) in out.enumerate_pixels() {
            for c in 0..3 {
                assert!(p[c].abs_diff(colour[c]) <= 3, "at {x},{y}: {p:?}");
            }
        }
    }

    #[test]
    fn empty_and_full_masks_return_input() {
        let img = textured(9, 7);
        assert_eq!(inpaint_telea(&img, &GrayImage::new(9, 7), 4.0), img);
        let full = GrayImage::from_pixel(9, 7, Luma([255]));
        assert_eq!(inpaint_telea(&img, &full, 4.0), img);
    }

    #[test]
    fn degenerate_sizes_do_not_panic() {
        for (w, h) in [(1, 1), (1, 5), (5, 1), (2, 2), (0, 0)] {
            let img = textured(w, h);
            let mut mask = GrayImage::new(w, h);
            if w * h > 1 {
                mask.put_pixel(w - 1, h - 1, Luma([255]));
            }
            let _ = inpaint_telea(&img, &mask, 0.0);
            let _ = inpaint_telea(&img, &mask, f32::NAN);
            let _ = inpaint_telea(&img, &mask, 1000.0);
        }
    }

    #[test]
    fn ramp_is_extended() {
        // A horizontal ramp with a vertical slit: the fill must interpolate the ramp.
        let img = RgbImage::from_fn(40, 20, |x, _| Rgb([(x * 5) as u8; 3]));
        let mask = GrayImage::from_fn(40, 20, |x, y| {
            Luma([if (19..22).contains(&x) && (5..15).contains(&y) {
                255
            } else {
                0
            }])
        });
        let out = inpaint_telea(&img, &mask, 5.0);
        for y in 5..15 {
            for x in 19..22u32 {
                let got = i32::from(out.get_pixel(x, y)[0]);
                assert!((got - (x * 5) as i32).abs() <= 6, "{x},{y}: {got}");
            }
        }
    }

    #[test]
    fn queue_breaks_ties_first_in_first_out() {
        let mut q = Queue::default();
        q.push(7, 1.0);
        q.push(3, 0.0);
        q.push(5, 1.0);
        q.push(1, 0.0);
        let order: Vec<_> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(order, [3, 1, 7, 5]);
    }

    #[test]
    fn solve_matches_eikonal_cases() {
        let flags = [KNOWN, KNOWN, INSIDE];
        let t = [0.0f32, 0.0, FAR];
        assert!((solve(&flags, &t, 0, 1) - (0.5 * 2f32.sqrt())).abs() < 1e-7);
        assert_eq!(solve(&flags, &t, 0, 2), 1.0);
        assert_eq!(solve(&flags, &t, 2, 1), 1.0);
        let t = [0.0f32, 3.0, FAR];
        assert_eq!(solve(&flags, &t, 0, 1), 1.0);
    }

    #[test]
    fn rounding_matches_saturate_cast() {
        assert_eq!(saturate_u8(2.5), 2);
        assert_eq!(saturate_u8(3.5), 4);
        assert_eq!(saturate_u8(-3.0), 0);
        assert_eq!(saturate_u8(300.0), 255);
    }

    #[test]
    #[should_panic(expected = "same size")]
    fn size_mismatch_panics() {
        inpaint_telea(&textured(4, 4), &GrayImage::new(4, 5), 3.0);
    }
}
