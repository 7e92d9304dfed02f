//! Pixels between the forms the crate works in: images and masks to the tensors the network
//! reads and back, the composite of a fill into a photo, and the scaling photos get before
//! training and evaluation.

use image::{imageops, RgbImage};
use tch::{Kind, Tensor};

use crate::error::Result;
use crate::imaging::masks::HoleMask;

/// Original pixels outside the hole, `filled` inside.
pub fn composite(original: &RgbImage, filled: &RgbImage, mask: &HoleMask) -> RgbImage {
    let mut out = original.clone();
    for ((o, f), &hole) in out.pixels_mut().zip(filled.pixels()).zip(mask.as_slice()) {
        if hole {
            *o = *f;
        }
    }
    out
}

/// Scales so the short side is `side` (never upscaling past it), keeping the aspect.
pub fn scale_short_side(img: &RgbImage, side: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let short = w.min(h);
    if short == side {
        return img.clone();
    }
    let s = side as f64 / short as f64;
    let (nw, nh) = (
        ((w as f64 * s).round() as u32).max(side),
        ((h as f64 * s).round() as u32).max(side),
    );
    imageops::resize(img, nw, nh, imageops::FilterType::Lanczos3)
}

/// `3×H×W` floats in `[0, 1]`.
pub fn image_to_tensor(img: &RgbImage) -> Tensor {
    let (w, h) = img.dimensions();
    Tensor::from_slice(img.as_raw())
        .view([h as i64, w as i64, 3])
        .permute([2, 0, 1])
        .to_kind(Kind::Float)
        / 255.0
}

/// `1×H×W`, 1 where valid.
pub fn valid_tensor(mask: &HoleMask) -> Tensor {
    let valid: Vec<f32> = mask
        .as_slice()
        .iter()
        .map(|&hole| if hole { 0.0 } else { 1.0 })
        .collect();
    Tensor::from_slice(&valid).view([1, mask.height() as i64, mask.width() as i64])
}

/// `3×H×W` uint8 to an image.
pub(crate) fn tensor_to_image(t: &Tensor) -> Result<RgbImage> {
    let (h, w) = (t.size()[1], t.size()[2]);
    let hwc = t.permute([1, 2, 0]).contiguous();
    let mut buf = vec![0u8; (h * w * 3) as usize];
    let numel = buf.len();
    hwc.f_copy_data_u8(&mut buf, numel)?;
    Ok(RgbImage::from_raw(w as u32, h as u32, buf).expect("buffer matches dimensions"))
}
