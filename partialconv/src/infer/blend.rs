//! How the network's fill meets the photo.
//!
//! The network is weakest in the first pixels inside a hole, where the answer is mostly "what
//! is next to it" and Telea's fast marching (the classical baseline) is strongest; deep
//! inside it is the other way round (the model card splits the error by distance to the
//! edge). Iizuka et al. ("Globally and Locally Consistent Image Completion", SIGGRAPH 2017)
//! likewise finish their network's output with fast marching and blending. [`Blend::Telea`]
//! takes Telea's fill at the edge and fades it into the network's over [`FEATHER_PX`].
//!
//! Poisson blending of the fill (Pérez et al. 2003) was tried too and lost 0.38 dB against a
//! plain paste: the network's prediction of the known pixels, which sets the correction, is
//! no better than its prediction of the hole.

use std::str::FromStr;

use image::RgbImage;

use crate::classic::telea::{inpaint_telea_within, TELEA_RADIUS};
use crate::error::{Error, Result};
use crate::imaging::masks::HoleMask;

/// Where Telea's share of the fill reaches zero, in pixels from the nearest known pixel.
/// Chosen on stroke masks over the first 12 validation photos (4, 6, 8, 12 and 16 were
/// tried; 6 and 8 tied).
pub const FEATHER_PX: f32 = 6.0;

/// Where the Telea march may stop: its arrival time approximates the Euclidean distance
/// into the hole from above, by well under 2× on a grid, so twice the feather's reach covers
/// every pixel the blend reads (`telea_within_the_march_limit_is_the_full_telea`).
const TELEA_MAX_TIME: f32 = 2.0 * (1.0 + FEATHER_PX);

/// How the fill meets the photo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Blend {
    /// Telea's fast marching in the first pixel of the hole, fading linearly into the
    /// network's fill [`FEATHER_PX`] further in.
    #[default]
    Telea,
    /// The network's pixels pasted as they are.
    Paste,
}

impl FromStr for Blend {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "telea" => Ok(Blend::Telea),
            "paste" => Ok(Blend::Paste),
            _ => Err(Error::InvalidArgument(format!(
                "unknown blend `{s}`: expected telea or paste"
            ))),
        }
    }
}

impl std::fmt::Display for Blend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Blend::Telea => "telea",
            Blend::Paste => "paste",
        })
    }
}

/// Telea's weight at `distance` px from the nearest known pixel: 1 on the hole's first pixel
/// (distance 1), 0 from `1 + FEATHER_PX` on.
pub fn telea_weight(distance: f32) -> f32 {
    (1.0 - (distance - 1.0) / FEATHER_PX).clamp(0.0, 1.0)
}

/// `original` outside the hole; inside, Telea's fill of `original` feathered into `filled`
/// by [`telea_weight`].
pub fn telea_blend(original: &RgbImage, filled: &RgbImage, mask: &HoleMask) -> RgbImage {
    let telea = inpaint_telea_within(original, &mask.to_gray(), TELEA_RADIUS, TELEA_MAX_TIME);
    let distance = mask.distance_to_known();
    let mut out = original.clone();
    for (i, ((o, f), t)) in out
        .pixels_mut()
        .zip(filled.pixels())
        .zip(telea.pixels())
        .enumerate()
    {
        if mask.as_slice()[i] {
            let a = telea_weight(distance[i]);
            *o = image::Rgb(std::array::from_fn(|c| {
                (a * t[c] as f32 + (1.0 - a) * f[c] as f32).round() as u8
            }));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classic::telea::inpaint_telea;

    #[test]
    fn telea_owns_the_edge_and_the_network_the_inside() {
        let (w, h) = (64u32, 64u32);
        let photo = RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8 * 3, y as u8 * 3, 90]));
        let network = RgbImage::from_pixel(w, h, image::Rgb([250, 0, 250]));
        let holes = (0..w * h)
            .map(|p| (16..48).contains(&(p % w)) && (16..48).contains(&(p / w)))
            .collect();
        let mask = HoleMask::from_bools(w, h, holes);
        let telea = inpaint_telea(&photo, &mask.to_gray(), TELEA_RADIUS);
        let out = telea_blend(&photo, &network, &mask);
        // Outside: the photo, bit for bit.
        assert_eq!(out.get_pixel(5, 5), photo.get_pixel(5, 5));
        assert_eq!(out.get_pixel(15, 30), photo.get_pixel(15, 30));
        // The hole's first pixel: Telea's.
        assert_eq!(out.get_pixel(16, 30), telea.get_pixel(16, 30));
        // Deeper than the feather: the network's.
        assert_eq!(out.get_pixel(31, 31), network.get_pixel(31, 31));
        // Half way: half and half.
        let x = 16 + (FEATHER_PX / 2.0) as u32;
        let (t, n, o) = (
            telea.get_pixel(x, 30),
            network[(x, 30)],
            out.get_pixel(x, 30),
        );
        for c in 0..3 {
            let mid = (t[c] as f32 + n[c] as f32) / 2.0;
            assert!((o[c] as f32 - mid).abs() <= 1.0, "{o:?} vs {t:?} and {n:?}");
        }
    }

    #[test]
    fn telea_within_the_march_limit_is_the_full_telea() {
        use crate::imaging::masks::{HoleGenerator, RATIO_BUCKETS};
        let (w, h) = (160u32, 120u32);
        let photo = RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x * 7 + y) as u8, ((x * y) % 251) as u8, (y * 13) as u8])
        });
        for (seed, &bucket) in RATIO_BUCKETS.iter().enumerate() {
            let mask = HoleGenerator::default().generate(w, h, bucket, seed as u64);
            let gray = mask.to_gray();
            let full = inpaint_telea(&photo, &gray, TELEA_RADIUS);
            let within = inpaint_telea_within(&photo, &gray, TELEA_RADIUS, TELEA_MAX_TIME);
            let distance = mask.distance_to_known();
            let mut used = 0;
            for (i, (a, b)) in full.pixels().zip(within.pixels()).enumerate() {
                if telea_weight(distance[i]) > 0.0 && mask.as_slice()[i] {
                    assert_eq!(a, b, "seed {seed}, pixel {i} at distance {}", distance[i]);
                    used += 1;
                }
            }
            assert!(used > 100);
            // Large holes do have pixels the limited march never reaches.
            if bucket.0 >= 0.3 {
                assert_ne!(full, within);
            }
        }
    }

    #[test]
    fn the_weight_falls_from_one_to_zero_across_the_feather() {
        assert_eq!(telea_weight(1.0), 1.0);
        assert_eq!(telea_weight(1.0 + FEATHER_PX), 0.0);
        assert_eq!(telea_weight(100.0), 0.0);
        assert!((telea_weight(1.0 + FEATHER_PX / 2.0) - 0.5).abs() < 1e-6);
    }

    #[test]
    fn blend_names_parse_and_print() {
        for b in [Blend::Telea, Blend::Paste] {
            assert_eq!(b.to_string().parse::<Blend>().unwrap(), b);
        }
        let err = "soft".parse::<Blend>().unwrap_err().to_string();
        assert!(err.contains("soft") && err.contains("telea"), "{err}");
    }
}
