//! Hole masks: the one rule that turns a user's mask image into holes, and the hole regions
//! the `crop` strategy works on.
//!
//! **Convention.** A pixel is a hole when its 8-bit luma (PIL's `L`) is ≥ 128, i.e. white
//! means "fill this". For an image with an alpha channel that is not fully opaque (a brush
//! layer painted over a transparent canvas), a pixel is a hole when its alpha is ≥ 1 instead.
//! A `bool` `true` means hole; a `u8` follows the luma rule. [`HoleMask::from_image`] is the
//! single implementation that the CLI, the server and the Python bindings all call.

use image::{DynamicImage, GenericImageView, GrayImage, Luma};

/// Luma threshold of the mask convention.
pub const HOLE_LUMA: u8 = 128;

/// PIL's ITU-R 601-2 luma transform (`L = R·299/1000 + G·587/1000 + B·114/1000`), computed
/// as PIL does in fixed point so that Python and Rust agree on every pixel.
pub fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((r as u32 * 19595 + g as u32 * 38470 + b as u32 * 7471 + 0x8000) >> 16) as u8
}

/// Whether an 8-bit mask value marks a hole.
pub fn is_hole(value: u8) -> bool {
    value >= HOLE_LUMA
}

/// The largest `mask_grow`, in pixels, either way.
pub const MAX_MASK_GROW: u32 = 16;

/// A binary hole map, row-major, `true` = hole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoleMask {
    width: u32,
    height: u32,
    holes: Vec<bool>,
}

/// An axis-aligned box, `x0..x1` × `y0..y1` (exclusive ends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    /// Left edge (inclusive).
    pub x0: u32,
    /// Top edge (inclusive).
    pub y0: u32,
    /// Right edge (exclusive).
    pub x1: u32,
    /// Bottom edge (exclusive).
    pub y1: u32,
}

impl Rect {
    /// `x1 − x0`.
    pub fn width(&self) -> u32 {
        self.x1 - self.x0
    }
    /// `y1 − y0`.
    pub fn height(&self) -> u32 {
        self.y1 - self.y0
    }
    /// Pixels covered.
    pub fn area(&self) -> u64 {
        self.width() as u64 * self.height() as u64
    }
    fn intersects(&self, o: &Rect) -> bool {
        self.x0 < o.x1 && o.x0 < self.x1 && self.y0 < o.y1 && o.y0 < self.y1
    }
    fn union(&self, o: &Rect) -> Rect {
        Rect {
            x0: self.x0.min(o.x0),
            y0: self.y0.min(o.y0),
            x1: self.x1.max(o.x1),
            y1: self.y1.max(o.y1),
        }
    }
    /// Grown by `margin` on each side, clipped to `width × height`.
    pub fn expand(&self, margin: u32, width: u32, height: u32) -> Rect {
        Rect {
            x0: self.x0.saturating_sub(margin),
            y0: self.y0.saturating_sub(margin),
            x1: (self.x1 + margin).min(width),
            y1: (self.y1 + margin).min(height),
        }
    }
}

impl HoleMask {
    /// A mask with no hole.
    pub fn empty(width: u32, height: u32) -> Self {
        Self {
            width,
            height,
            holes: vec![false; (width * height) as usize],
        }
    }

    /// # Panics
    /// If `holes.len() != width·height`.
    pub fn from_bools(width: u32, height: u32, holes: Vec<bool>) -> Self {
        assert_eq!(
            holes.len(),
            (width as usize) * (height as usize),
            "mask buffer size"
        );
        Self {
            width,
            height,
            holes,
        }
    }

    /// 8-bit values, hole where ≥ 128.
    ///
    /// # Panics
    /// If `values.len() != width·height`.
    pub fn from_u8(width: u32, height: u32, values: &[u8]) -> Self {
        Self::from_bools(width, height, values.iter().map(|&v| is_hole(v)).collect())
    }

    /// An `H×W` array of 8-bit values (hole where ≥ 128), in any memory order: a numpy
    /// array from the bindings or a slice of a larger array.
    pub fn from_array(values: ndarray::ArrayView2<u8>) -> Self {
        let (height, width) = values.dim();
        let holes = values.iter().map(|&v| is_hole(v)).collect();
        Self::from_bools(width as u32, height as u32, holes)
    }

    /// The mask convention, applied to any decoded image.
    pub fn from_image(img: &DynamicImage) -> Self {
        let (width, height) = img.dimensions();
        let holes = if img.color().has_alpha() {
            let rgba = img.to_rgba8();
            let brush_layer = rgba.pixels().any(|p| p[3] != 255);
            if brush_layer {
                rgba.pixels().map(|p| p[3] >= 1).collect()
            } else {
                rgba.pixels()
                    .map(|p| is_hole(luma(p[0], p[1], p[2])))
                    .collect()
            }
        } else if let DynamicImage::ImageLuma8(gray) = img {
            gray.pixels().map(|p| is_hole(p[0])).collect()
        } else {
            img.to_rgb8()
                .pixels()
                .map(|p| is_hole(luma(p[0], p[1], p[2])))
                .collect()
        };
        Self {
            width,
            height,
            holes,
        }
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }
    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }
    /// `(width, height)`, as `image`'s `dimensions()`.
    pub fn dimensions(&self) -> (u32, u32) {
        (self.width, self.height)
    }
    /// Row-major, `true` = hole.
    pub fn as_slice(&self) -> &[bool] {
        &self.holes
    }
    /// Whether pixel `(x, y)` is a hole.
    pub fn get(&self, x: u32, y: u32) -> bool {
        self.holes[(y * self.width + x) as usize]
    }

    /// Hole pixels.
    pub fn hole_count(&self) -> usize {
        self.holes.iter().filter(|&&h| h).count()
    }

    /// Share of the image that is hole, in `[0, 1]`.
    pub fn hole_ratio(&self) -> f64 {
        self.hole_count() as f64 / self.holes.len().max(1) as f64
    }

    /// Whether there is no hole at all (prediction returns the input unchanged).
    pub fn is_empty(&self) -> bool {
        !self.holes.iter().any(|&h| h)
    }

    /// The exact Euclidean distance from each pixel to the nearest known pixel: 0 outside the
    /// hole, 1 on its first pixels; infinite everywhere when nothing is known. Felzenszwalb and
    /// Huttenlocher's separable transform ("Distance Transforms of Sampled Functions", 2012),
    /// linear in the pixel count.
    pub fn distance_to_known(&self) -> Vec<f32> {
        self.squared_distance_to(false)
            .into_iter()
            .map(|d| d.sqrt() as f32)
            .collect()
    }

    /// The mask grown by `px` pixels (a dilation with a disk of that radius), or shrunk by
    /// `-px` (an erosion): what `mask_grow` asks for. Growing covers the halo that a brush
    /// leaves around a hard edge; shrinking keeps more of the photo. `0` is the mask itself,
    /// bit for bit. A disk, not a square, so that corners grow as much as edges.
    pub fn grown(&self, px: i32) -> crate::error::Result<HoleMask> {
        if px.unsigned_abs() > MAX_MASK_GROW {
            return Err(crate::error::Error::InvalidArgument(format!(
                "mask_grow must be between -{MAX_MASK_GROW} and {MAX_MASK_GROW} pixels, not {px}"
            )));
        }
        let r2 = f64::from(px) * f64::from(px);
        let holes = match px {
            0 => self.holes.clone(),
            // Within the radius of some hole pixel.
            1.. => self
                .squared_distance_to(true)
                .into_iter()
                .map(|d| d <= r2)
                .collect(),
            // No known pixel within the radius.
            _ => self
                .squared_distance_to(false)
                .into_iter()
                .map(|d| d > r2)
                .collect(),
        };
        Ok(HoleMask::from_bools(self.width, self.height, holes))
    }

    /// The squared Euclidean distance from each pixel to the nearest pixel that is a hole
    /// (`to_hole`) or known; infinite when there is none. Felzenszwalb and Huttenlocher's
    /// separable transform, linear in the pixel count.
    fn squared_distance_to(&self, to_hole: bool) -> Vec<f64> {
        let (w, h) = (self.width as usize, self.height as usize);
        let far = f64::INFINITY;
        let mut sq: Vec<f64> = self
            .holes
            .iter()
            .map(|&hole| if hole == to_hole { 0.0 } else { far })
            .collect();
        let mut line = Vec::new();
        for x in 0..w {
            line.clear();
            line.extend((0..h).map(|y| sq[y * w + x]));
            for (y, d) in squared_distance_1d(&line).into_iter().enumerate() {
                sq[y * w + x] = d;
            }
        }
        for row in sq.chunks_mut(w.max(1)) {
            let d = squared_distance_1d(row);
            row.copy_from_slice(&d);
        }
        sq
    }

    /// 255 = hole, 0 = valid.
    pub fn to_gray(&self) -> GrayImage {
        GrayImage::from_fn(self.width, self.height, |x, y| {
            Luma([if self.get(x, y) { 255 } else { 0 }])
        })
    }

    /// The part of the mask inside `r`.
    pub fn crop(&self, r: Rect) -> HoleMask {
        let mut holes = Vec::with_capacity(r.area() as usize);
        for y in r.y0..r.y1 {
            let row = (y * self.width) as usize;
            holes.extend_from_slice(&self.holes[row + r.x0 as usize..row + r.x1 as usize]);
        }
        HoleMask {
            width: r.width(),
            height: r.height(),
            holes,
        }
    }

    /// Nearest-neighbour resampling where a target pixel is a hole if any source pixel it
    /// covers is, so that shrinking never loses a thin stroke.
    pub fn resize_conservative(&self, width: u32, height: u32) -> HoleMask {
        let mut holes = vec![false; (width as usize) * (height as usize)];
        for y in 0..self.height {
            let ty = (y as u64 * height as u64 / self.height as u64) as u32;
            for x in 0..self.width {
                if self.get(x, y) {
                    let tx = (x as u64 * width as u64 / self.width as u64) as u32;
                    holes[(ty * width + tx) as usize] = true;
                }
            }
        }
        // Upscaling leaves target pixels no source pixel maps to; fill them by nearest.
        if width > self.width || height > self.height {
            for ty in 0..height {
                let sy = ((ty as u64 * self.height as u64) / height as u64) as u32;
                for tx in 0..width {
                    let sx = ((tx as u64 * self.width as u64) / width as u64) as u32;
                    if self.get(sx, sy) {
                        holes[(ty * width + tx) as usize] = true;
                    }
                }
            }
        }
        HoleMask {
            width,
            height,
            holes,
        }
    }

    /// Bounding boxes of the 8-connected hole components.
    pub fn component_boxes(&self) -> Vec<Rect> {
        let (w, h) = (self.width as usize, self.height as usize);
        let mut seen = vec![false; w * h];
        let mut boxes = Vec::new();
        let mut stack = Vec::new();
        for start in 0..w * h {
            if !self.holes[start] || seen[start] {
                continue;
            }
            seen[start] = true;
            stack.push(start);
            let mut r = Rect {
                x0: u32::MAX,
                y0: u32::MAX,
                x1: 0,
                y1: 0,
            };
            while let Some(i) = stack.pop() {
                let (x, y) = (i % w, i / w);
                r.x0 = r.x0.min(x as u32);
                r.y0 = r.y0.min(y as u32);
                r.x1 = r.x1.max(x as u32 + 1);
                r.y1 = r.y1.max(y as u32 + 1);
                for dy in -1i64..=1 {
                    for dx in -1i64..=1 {
                        let (nx, ny) = (x as i64 + dx, y as i64 + dy);
                        if nx < 0 || ny < 0 || nx >= w as i64 || ny >= h as i64 {
                            continue;
                        }
                        let j = ny as usize * w + nx as usize;
                        if self.holes[j] && !seen[j] {
                            seen[j] = true;
                            stack.push(j);
                        }
                    }
                }
            }
            boxes.push(r);
        }
        boxes
    }
}

/// Merges boxes until none overlap: neighbours whose margins touch share one crop.
pub fn merge_overlapping(mut boxes: Vec<Rect>) -> Vec<Rect> {
    loop {
        let mut merged = false;
        'outer: for i in 0..boxes.len() {
            for j in i + 1..boxes.len() {
                if boxes[i].intersects(&boxes[j]) {
                    let u = boxes[i].union(&boxes[j]);
                    boxes[i] = u;
                    boxes.swap_remove(j);
                    merged = true;
                    break 'outer;
                }
            }
        }
        if !merged {
            return boxes;
        }
    }
}

/// SplitMix64: tiny, fast, and the same on every platform, so masks are reproducible by seed.
/// Public for the trainer's data loader and the benches; not part of the supported API.
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A stream determined by `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `[0, 1)`.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }
    /// Uniform integer in `lo..hi`.
    pub fn below(&mut self, lo: u32, hi: u32) -> u32 {
        lo + (self.next_u64() % (hi - lo).max(1) as u64) as u32
    }
}

/// Hole-ratio buckets of the evaluation protocol: (0.01, 0.1], (0.1, 0.2], ... (0.4, 0.5].
pub const RATIO_BUCKETS: [(f64, f64); 5] =
    [(0.01, 0.1), (0.1, 0.2), (0.2, 0.3), (0.3, 0.4), (0.4, 0.5)];

/// Irregular holes like a user's brush: free-form strokes, ellipses and straight lines.
///
/// Sizes are in pixels, independent of the canvas: a user brushes the same width on a
/// 256-pixel training crop as on a 512-pixel photo, and training must see holes of the size
/// the model meets in use.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HoleGenerator {
    /// Brush diameter range, pixels.
    pub brush: (f64, f64),
    /// Length of one stroke segment, pixels.
    pub segment: (f64, f64),
    /// Ellipse semi-axis range, pixels.
    pub ellipse: (f64, f64),
}

impl Default for HoleGenerator {
    fn default() -> Self {
        Self {
            brush: (9.0, 40.0),
            segment: (15.0, 70.0),
            ellipse: (8.0, 60.0),
        }
    }
}

impl HoleGenerator {
    /// A mask whose hole ratio lies in `(lo, hi]`, drawn deterministically from `seed`.
    /// Shapes are added until the ratio passes `lo`; a draw that overshoots `hi` is retried.
    pub fn generate(&self, width: u32, height: u32, (lo, hi): (f64, f64), seed: u64) -> HoleMask {
        let mut rng = Rng::new(seed);
        let mut best = HoleMask::empty(width, height);
        for _ in 0..64 {
            let target = rng.range(lo, hi);
            let mut canvas = Canvas::new(width, height);
            while (canvas.count as f64) <= target * (width as f64 * height as f64) {
                match rng.below(0, 10) {
                    0..=5 => self.stroke(&mut canvas, &mut rng),
                    6..=7 => self.ellipse(&mut canvas, &mut rng),
                    _ => self.line(&mut canvas, &mut rng),
                }
            }
            let mask = canvas.into_mask();
            let r = mask.hole_ratio();
            if r > lo && r <= hi {
                return mask;
            }
            if (r - (lo + hi) / 2.0).abs() < (best.hole_ratio() - (lo + hi) / 2.0).abs() {
                best = mask;
            }
        }
        best
    }

    /// A mask for training: the bucket is drawn uniformly, then the ratio within it.
    pub fn generate_any(&self, width: u32, height: u32, seed: u64) -> HoleMask {
        let bucket = RATIO_BUCKETS[(Rng::new(seed ^ 0xB0C4).next_u64() % 5) as usize];
        self.generate(width, height, bucket, seed)
    }

    fn stroke(&self, c: &mut Canvas, rng: &mut Rng) {
        let mut x = rng.range(0.0, c.w as f64);
        let mut y = rng.range(0.0, c.h as f64);
        let width = rng.range(self.brush.0, self.brush.1);
        let mut angle = rng.range(0.0, std::f64::consts::TAU);
        for _ in 0..rng.below(2, 9) {
            angle += rng.range(-1.2, 1.2);
            let len = rng.range(self.segment.0, self.segment.1);
            let (nx, ny) = (x + len * angle.cos(), y + len * angle.sin());
            c.thick_line(x, y, nx, ny, width);
            (x, y) = (nx, ny);
        }
    }

    fn ellipse(&self, c: &mut Canvas, rng: &mut Rng) {
        let (cx, cy) = (rng.range(0.0, c.w as f64), rng.range(0.0, c.h as f64));
        let (a, b) = (
            rng.range(self.ellipse.0, self.ellipse.1),
            rng.range(self.ellipse.0, self.ellipse.1),
        );
        let theta = rng.range(0.0, std::f64::consts::PI);
        let (cos, sin) = (theta.cos(), theta.sin());
        let r = a.max(b);
        for y in (cy - r).floor().max(0.0) as u32..((cy + r).ceil() as u32).min(c.h) {
            for x in (cx - r).floor().max(0.0) as u32..((cx + r).ceil() as u32).min(c.w) {
                let (dx, dy) = (x as f64 + 0.5 - cx, y as f64 + 0.5 - cy);
                let (u, v) = (dx * cos + dy * sin, -dx * sin + dy * cos);
                if (u / a).powi(2) + (v / b).powi(2) <= 1.0 {
                    c.set(x, y);
                }
            }
        }
    }

    fn line(&self, c: &mut Canvas, rng: &mut Rng) {
        let (x0, y0) = (rng.range(0.0, c.w as f64), rng.range(0.0, c.h as f64));
        let angle = rng.range(0.0, std::f64::consts::TAU);
        let len = rng.range(0.2, 0.8) * c.w.max(c.h) as f64;
        let width = rng.range(self.brush.0 * 0.5, self.brush.1 * 0.6);
        c.thick_line(
            x0,
            y0,
            x0 + len * angle.cos(),
            y0 + len * angle.sin(),
            width,
        );
    }
}

struct Canvas {
    w: u32,
    h: u32,
    holes: Vec<bool>,
    count: usize,
}

impl Canvas {
    fn new(w: u32, h: u32) -> Self {
        Canvas {
            w,
            h,
            holes: vec![false; (w * h) as usize],
            count: 0,
        }
    }
    fn set(&mut self, x: u32, y: u32) {
        let i = (y * self.w + x) as usize;
        if !self.holes[i] {
            self.holes[i] = true;
            self.count += 1;
        }
    }
    /// A segment with round caps: every pixel within `width/2` of it.
    fn thick_line(&mut self, x0: f64, y0: f64, x1: f64, y1: f64, width: f64) {
        let r = width / 2.0;
        let (dx, dy) = (x1 - x0, y1 - y0);
        let len2 = (dx * dx + dy * dy).max(1e-9);
        let ys = (y0.min(y1) - r).floor().max(0.0) as u32
            ..((y0.max(y1) + r).ceil().max(0.0) as u32).min(self.h);
        for y in ys {
            let xs = (x0.min(x1) - r).floor().max(0.0) as u32
                ..((x0.max(x1) + r).ceil().max(0.0) as u32).min(self.w);
            for x in xs {
                let (px, py) = (x as f64 + 0.5, y as f64 + 0.5);
                let t = (((px - x0) * dx + (py - y0) * dy) / len2).clamp(0.0, 1.0);
                let (qx, qy) = (x0 + t * dx - px, y0 + t * dy - py);
                if qx * qx + qy * qy <= r * r {
                    self.set(x, y);
                }
            }
        }
    }
    fn into_mask(self) -> HoleMask {
        HoleMask {
            width: self.w,
            height: self.h,
            holes: self.holes,
        }
    }
}

/// `min_q (p − q)² + f(q)` for every `p`: the lower envelope of the parabolas rooted at the
/// finite samples of `f`.
fn squared_distance_1d(f: &[f64]) -> Vec<f64> {
    let roots: Vec<usize> = (0..f.len()).filter(|&q| f[q].is_finite()).collect();
    if roots.is_empty() {
        return f.to_vec();
    }
    let meet = |q: usize, r: usize| {
        let (q, r) = (q as f64, r as f64);
        ((f[q as usize] + q * q) - (f[r as usize] + r * r)) / (2.0 * (q - r))
    };
    // `envelope[k]` is a parabola of the envelope; `from[k]` where it starts to be lowest.
    let mut envelope: Vec<usize> = Vec::with_capacity(roots.len());
    let mut from: Vec<f64> = Vec::with_capacity(roots.len());
    for &q in &roots {
        let mut start = f64::NEG_INFINITY;
        while let Some(&top) = envelope.last() {
            start = meet(q, top);
            if start <= *from.last().expect("one start per parabola") {
                envelope.pop();
                from.pop();
                start = f64::NEG_INFINITY;
            } else {
                break;
            }
        }
        envelope.push(q);
        from.push(start);
    }
    let mut k = 0;
    (0..f.len())
        .map(|p| {
            while k + 1 < envelope.len() && from[k + 1] < p as f64 {
                k += 1;
            }
            let q = envelope[k];
            (p as f64 - q as f64).powi(2) + f[q]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgba, RgbaImage};

    /// Dilation or erosion by checking every pixel within the radius: slow, and obviously right.
    fn grown_brute(m: &HoleMask, px: i32) -> HoleMask {
        let (w, h) = (m.width() as i64, m.height() as i64);
        let r = i64::from(px.unsigned_abs());
        let near = |x: i64, y: i64, want: bool| {
            (-r..=r).any(|dy| {
                (-r..=r).any(|dx| {
                    let (nx, ny) = (x + dx, y + dy);
                    dx * dx + dy * dy <= r * r
                        && (0..w).contains(&nx)
                        && (0..h).contains(&ny)
                        && m.get(nx as u32, ny as u32) == want
                })
            })
        };
        let holes = (0..h)
            .flat_map(|y| (0..w).map(move |x| (x, y)))
            .map(|(x, y)| {
                let hole = m.get(x as u32, y as u32);
                if px >= 0 {
                    hole || near(x, y, true)
                } else {
                    hole && !near(x, y, false)
                }
            })
            .collect();
        HoleMask::from_bools(m.width(), m.height(), holes)
    }

    #[test]
    fn grown_is_a_disk_dilation_or_erosion_and_zero_is_identity() {
        for seed in 0..6 {
            let m = HoleGenerator::default().generate(37, 29, (0.05, 0.4), seed);
            assert_eq!(m.grown(0).unwrap(), m);
            for px in [-16, -5, -3, -2, -1, 1, 2, 3, 5, 16] {
                assert_eq!(
                    m.grown(px).unwrap(),
                    grown_brute(&m, px),
                    "seed {seed}, {px} px"
                );
            }
            assert!(m.grown(3).unwrap().hole_count() >= m.hole_count());
            assert!(m.grown(-3).unwrap().hole_count() <= m.hole_count());
        }
        // A single hole pixel grows into a disk of radius 2: 13 pixels, not a 5×5 square.
        let mut one = vec![false; 49];
        one[24] = true;
        let dot = HoleMask::from_bools(7, 7, one);
        assert_eq!(dot.grown(2).unwrap().hole_count(), 13);
        assert_eq!(dot.grown(-1).unwrap().hole_count(), 0);
        let err = dot.grown(17).unwrap_err().to_string();
        assert!(err.contains("mask_grow") && err.contains("17"), "{err}");
        assert!(dot.grown(-17).is_err());
    }

    #[test]
    fn luma_matches_pil_on_primaries() {
        // Values from PIL: Image.new('RGB',(1,1),c).convert('L').getpixel((0,0)).
        assert_eq!(luma(255, 0, 0), 76);
        assert_eq!(luma(0, 255, 0), 150);
        assert_eq!(luma(0, 0, 255), 29);
        assert_eq!(luma(255, 255, 255), 255);
        assert_eq!(luma(128, 128, 128), 128);
    }

    #[test]
    fn distance_to_known_is_the_exact_euclidean_distance() {
        let g = HoleGenerator::default();
        for (seed, (w, h)) in [(1u64, (37u32, 23u32)), (2, (16, 40)), (3, (50, 50))] {
            let mask = g.generate(w, h, (0.3, 0.5), seed);
            let known: Vec<(i64, i64)> = (0..w * h)
                .filter(|&p| !mask.as_slice()[p as usize])
                .map(|p| ((p % w) as i64, (p / w) as i64))
                .collect();
            for (p, d) in mask.distance_to_known().into_iter().enumerate() {
                let (x, y) = ((p as u32 % w) as i64, (p as u32 / w) as i64);
                let brute = known
                    .iter()
                    .map(|&(a, b)| (((x - a).pow(2) + (y - b).pow(2)) as f64).sqrt())
                    .fold(f64::INFINITY, f64::min);
                assert!(
                    (d as f64 - brute).abs() < 1e-4,
                    "{seed} ({x},{y}): {d} vs {brute}"
                );
            }
        }
        let all = HoleMask::from_bools(3, 2, vec![true; 6]);
        assert!(all.distance_to_known().iter().all(|d| d.is_infinite()));
    }

    #[test]
    fn threshold_is_128() {
        let m = HoleMask::from_u8(3, 1, &[127, 128, 255]);
        assert_eq!(m.as_slice(), &[false, true, true]);
    }

    #[test]
    fn brush_layer_uses_alpha() {
        let mut img = RgbaImage::from_pixel(2, 1, Rgba([0, 0, 0, 0]));
        img.put_pixel(1, 0, Rgba([0, 0, 0, 1])); // faint black stroke still counts
        let m = HoleMask::from_image(&DynamicImage::ImageRgba8(img));
        assert_eq!(m.as_slice(), &[false, true]);
    }

    #[test]
    fn opaque_rgba_uses_luma() {
        let mut img = RgbaImage::from_pixel(2, 1, Rgba([0, 0, 0, 255]));
        img.put_pixel(1, 0, Rgba([255, 255, 255, 255]));
        let m = HoleMask::from_image(&DynamicImage::ImageRgba8(img));
        assert_eq!(m.as_slice(), &[false, true]);
    }

    #[test]
    fn components_and_merge() {
        let mut holes = vec![false; 100];
        holes[11] = true; // (1,1)
        holes[22] = true; // (2,2): diagonal neighbour, same component
        holes[88] = true; // (8,8)
        let m = HoleMask::from_bools(10, 10, holes);
        let boxes = m.component_boxes();
        assert_eq!(boxes.len(), 2);
        assert!(boxes.contains(&Rect {
            x0: 1,
            y0: 1,
            x1: 3,
            y1: 3
        }));
        let grown: Vec<Rect> = boxes.iter().map(|b| b.expand(3, 10, 10)).collect();
        assert_eq!(
            merge_overlapping(grown),
            vec![Rect {
                x0: 0,
                y0: 0,
                x1: 10,
                y1: 10
            }]
        );
    }

    #[test]
    fn conservative_resize_keeps_thin_strokes() {
        let mut holes = vec![false; 64 * 64];
        for y in 0..64 {
            holes[y * 64 + 33] = true; // one-pixel vertical line
        }
        let small = HoleMask::from_bools(64, 64, holes).resize_conservative(16, 16);
        assert_eq!(small.hole_count(), 16);
    }

    #[test]
    fn generator_hits_every_bucket_and_is_deterministic() {
        let g = HoleGenerator::default();
        for (i, &(lo, hi)) in RATIO_BUCKETS.iter().enumerate() {
            for seed in 0..5u64 {
                let m = g.generate(256, 256, (lo, hi), seed * 31 + i as u64);
                let r = m.hole_ratio();
                assert!(r > lo && r <= hi, "bucket ({lo},{hi}] got {r}");
                assert_eq!(m, g.generate(256, 256, (lo, hi), seed * 31 + i as u64));
            }
        }
        assert_ne!(
            g.generate(64, 64, (0.1, 0.2), 1),
            g.generate(64, 64, (0.1, 0.2), 2)
        );
    }

    #[test]
    fn from_array_reads_rows_in_order_whatever_the_layout() {
        let a = ndarray::arr2(&[[0u8, 255, 0], [128, 127, 200]]);
        let m = HoleMask::from_array(a.view());
        assert_eq!(m.dimensions(), (3, 2));
        assert_eq!(m.as_slice(), &[false, true, false, true, false, true]);
        // A transposed (column-major) view is read in logical order too.
        let t = a.t();
        let mt = HoleMask::from_array(t);
        assert_eq!(mt.dimensions(), (2, 3));
        assert_eq!(mt.as_slice(), &[false, true, true, false, false, true]);
    }
}
