//! Small PNG reports for training runs: a loss / validation-PSNR chart and sample grids.
//! Drawn directly with `image` (with a 3×5 pixel font for the labels), so training needs no
//! font files or plotting stack.

use std::path::Path;

use image::{imageops, Rgb, RgbImage};

use crate::error::{Error, Result};
use crate::imaging::masks::HoleMask;

const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
const GREY: Rgb<u8> = Rgb([200, 200, 200]);
const BLACK: Rgb<u8> = Rgb([0, 0, 0]);
const BLUE: Rgb<u8> = Rgb([31, 119, 180]);
const ORANGE: Rgb<u8> = Rgb([255, 127, 14]);

/// Loss (top panel, log scale) and mean validation PSNR (bottom) against step.
pub fn loss_and_psnr(history: &[(u64, f64, Option<f64>)], path: &Path) -> Result<()> {
    let (w, h) = (720u32, 480u32);
    let mut img = RgbImage::from_pixel(w, h, WHITE);
    let losses: Vec<(f64, f64)> = history
        .iter()
        .filter(|(_, l, _)| l.is_finite() && *l > 0.0)
        .map(|(s, l, _)| (*s as f64, l.log10()))
        .collect();
    let psnrs: Vec<(f64, f64)> = history
        .iter()
        .filter_map(|(s, _, p)| p.map(|p| (*s as f64, p)))
        .collect();
    panel(
        &mut img,
        (50, 20, w - 20, h / 2 - 20),
        &smooth(&losses, 25),
        BLUE,
        "LOSS LOG10",
    );
    panel(
        &mut img,
        (50, h / 2 + 20, w - 20, h - 30),
        &psnrs,
        ORANGE,
        "VAL PSNR DB",
    );
    if let Some(&(last, _, _)) = history.last() {
        text(
            &mut img,
            w - 20 - 4 * 8 * 6,
            h - 18,
            &format!("STEP {last}"),
            BLACK,
        );
    }
    save(&img, path)
}

/// Moving average over `k` points, so the chart shows the trend rather than batch noise.
fn smooth(points: &[(f64, f64)], k: usize) -> Vec<(f64, f64)> {
    (0..points.len())
        .map(|i| {
            let lo = i.saturating_sub(k - 1);
            let ys = &points[lo..=i];
            (
                points[i].0,
                ys.iter().map(|p| p.1).sum::<f64>() / ys.len() as f64,
            )
        })
        .collect()
}

fn panel(
    img: &mut RgbImage,
    (x0, y0, x1, y1): (u32, u32, u32, u32),
    points: &[(f64, f64)],
    color: Rgb<u8>,
    label: &str,
) {
    for x in x0..=x1 {
        img.put_pixel(x, y1, BLACK);
    }
    for y in y0..=y1 {
        img.put_pixel(x0, y, BLACK);
    }
    text(img, x0 + 6, y0, label, BLACK);
    if points.is_empty() {
        return;
    }
    let (mut xmin, mut xmax, mut ymin, mut ymax) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in points {
        (xmin, xmax, ymin, ymax) = (xmin.min(x), xmax.max(x), ymin.min(y), ymax.max(y));
    }
    if xmax - xmin < 1e-9 {
        xmax = xmin + 1.0;
    }
    if ymax - ymin < 1e-9 {
        (ymin, ymax) = (ymin - 0.5, ymax + 0.5);
    }
    for i in 0..=4 {
        let y = y1 - (i * (y1 - y0 - 12)) / 4;
        for x in (x0 + 1..=x1).step_by(4) {
            img.put_pixel(x, y, GREY);
        }
        let v = ymin + (ymax - ymin) * i as f64 / 4.0;
        text(img, 2, y.saturating_sub(4), &format!("{v:.2}"), BLACK);
    }
    let to_px = |(x, y): (f64, f64)| {
        let px = x0 as f64 + (x - xmin) / (xmax - xmin) * (x1 - x0) as f64;
        let py = y1 as f64 - (y - ymin) / (ymax - ymin) * (y1 - y0 - 12) as f64;
        (px, py)
    };
    let mut prev = to_px(points[0]);
    for &p in points {
        let cur = to_px(p);
        let steps = ((cur.0 - prev.0).abs().max((cur.1 - prev.1).abs()).ceil() as usize).max(1);
        for s in 0..=steps {
            let t = s as f64 / steps as f64;
            let (x, y) = (prev.0 + (cur.0 - prev.0) * t, prev.1 + (cur.1 - prev.1) * t);
            for dy in 0..2 {
                let (xi, yi) = (x as u32, y as u32 + dy);
                if xi < img.width() && yi < img.height() {
                    img.put_pixel(xi, yi, color);
                }
            }
        }
        prev = cur;
    }
}

/// 3×5 glyphs, one row per 3 bits, for the characters the charts use.
fn glyph(c: char) -> [u8; 5] {
    match c {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        '-' => [0, 0, 7, 0, 0],
        'A' => [2, 5, 7, 5, 5],
        'B' => [6, 5, 6, 5, 6],
        'D' => [6, 5, 5, 5, 6],
        'E' => [7, 4, 6, 4, 7],
        'G' => [7, 4, 5, 5, 7],
        'L' => [4, 4, 4, 4, 7],
        'N' => [5, 7, 7, 7, 5],
        'O' => [7, 5, 5, 5, 7],
        'P' => [7, 5, 7, 4, 4],
        'R' => [6, 5, 6, 5, 5],
        'S' => [7, 4, 7, 1, 7],
        'T' => [7, 2, 2, 2, 2],
        'V' => [5, 5, 5, 5, 2],
        _ => [0; 5],
    }
}

fn text(img: &mut RgbImage, x: u32, y: u32, s: &str, color: Rgb<u8>) {
    const SCALE: u32 = 2;
    for (i, c) in s.chars().enumerate() {
        for (row, bits) in glyph(c).iter().enumerate() {
            for col in 0..3 {
                if bits & (4 >> col) != 0 {
                    for dy in 0..SCALE {
                        for dx in 0..SCALE {
                            let px = x + i as u32 * 4 * SCALE + col * SCALE + dx;
                            let py = y + row as u32 * SCALE + dy;
                            if px < img.width() && py < img.height() {
                                img.put_pixel(px, py, color);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The photo with its holes painted white, as a user sees the brushed input.
pub fn show_holes(img: &RgbImage, mask: &HoleMask) -> RgbImage {
    let mut out = img.clone();
    for (p, &hole) in out.pixels_mut().zip(mask.as_slice()) {
        if hole {
            *p = WHITE;
        }
    }
    out
}

/// Rows of equally sized images side by side, with a 4-pixel gap.
pub fn grid<const N: usize>(rows: &[[RgbImage; N]], path: &Path) -> Result<()> {
    let Some(first) = rows.first() else {
        return Ok(());
    };
    let (cw, ch) = first[0].dimensions();
    let gap = 4;
    let mut img = RgbImage::from_pixel(
        N as u32 * (cw + gap) - gap,
        rows.len() as u32 * (ch + gap) - gap,
        WHITE,
    );
    for (r, row) in rows.iter().enumerate() {
        for (c, cell) in row.iter().enumerate() {
            imageops::replace(
                &mut img,
                cell,
                (c as u32 * (cw + gap)) as i64,
                (r as u32 * (ch + gap)) as i64,
            );
        }
    }
    save(&img, path)
}

fn save(img: &RgbImage, path: &Path) -> Result<()> {
    img.save(path).map_err(|source| Error::Image {
        what: path.display().to_string(),
        source,
    })
}
