//! ndarray views in, arrays out: the interface for programs that hold pixels as arrays
//! (numpy through the bindings, or Rust code that already computes on ndarray).
//!
//! Images are `H×W×3` (RGB) or `H×W×4` (RGBA; alpha is kept) `u8`, masks `H×W` of `bool`
//! (true = hole) or `u8` (hole where ≥ 128, the file convention). Views may have any
//! strides: a slice of a larger array or a transposed one works as it is. The pixels are
//! copied once, into the image the network reads; nothing else is.

use image::{DynamicImage, ImageBuffer};
use ndarray::{Array3, ArrayView2, ArrayView3};

use crate::error::{Error, Result};
use crate::imaging::masks::HoleMask;

/// A hole mask as an array view: either form the crate accepts.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum MaskView<'a> {
    /// `true` where a pixel is a hole.
    Bool(ArrayView2<'a, bool>),
    /// 8-bit values, hole where ≥ 128 (white = fill), as in a mask file.
    Luma(ArrayView2<'a, u8>),
}

impl<'a> From<ArrayView2<'a, bool>> for MaskView<'a> {
    fn from(v: ArrayView2<'a, bool>) -> Self {
        Self::Bool(v)
    }
}

impl<'a> From<ArrayView2<'a, u8>> for MaskView<'a> {
    fn from(v: ArrayView2<'a, u8>) -> Self {
        Self::Luma(v)
    }
}

impl From<MaskView<'_>> for HoleMask {
    fn from(view: MaskView<'_>) -> Self {
        match view {
            MaskView::Bool(v) => {
                let (h, w) = v.dim();
                HoleMask::from_bools(w as u32, h as u32, v.iter().copied().collect())
            }
            MaskView::Luma(v) => HoleMask::from_array(v),
        }
    }
}

/// The side lengths of an array, as the `u32`s images use.
fn sides(h: usize, w: usize) -> Result<(u32, u32)> {
    match (u32::try_from(w), u32::try_from(h)) {
        (Ok(w), Ok(h)) => Ok((w, h)),
        _ => Err(Error::InvalidArgument(format!(
            "an image of {h}×{w} pixels is too large"
        ))),
    }
}

/// An `H×W×3` or `H×W×4` `u8` view as an image (RGB, or RGBA with its alpha).
pub fn image_from_array(view: ArrayView3<'_, u8>) -> Result<DynamicImage> {
    let (h, w, c) = view.dim();
    let (width, height) = sides(h, w)?;
    // Row-major with channels last is the image crate's layout; `iter` walks in that order
    // whatever the view's strides.
    let data: Vec<u8> = match view.as_slice() {
        Some(s) => s.to_vec(),
        None => view.iter().copied().collect(),
    };
    let shape_error = || {
        Error::InvalidArgument(format!(
            "an image array must be H×W×3 (RGB) or H×W×4 (RGBA), got {h}×{w}×{c}"
        ))
    };
    Ok(match c {
        3 => DynamicImage::ImageRgb8(
            ImageBuffer::from_raw(width, height, data).ok_or_else(shape_error)?,
        ),
        4 => DynamicImage::ImageRgba8(
            ImageBuffer::from_raw(width, height, data).ok_or_else(shape_error)?,
        ),
        _ => return Err(shape_error()),
    })
}

/// An image as an `H×W×3` array, or `H×W×4` when it has alpha; the buffer moves, nothing
/// is copied for 8-bit RGB(A).
pub fn image_to_array(img: DynamicImage) -> Array3<u8> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (data, c) = if img.color().has_alpha() {
        (img.into_rgba8().into_raw(), 4)
    } else {
        (img.into_rgb8().into_raw(), 3)
    };
    Array3::from_shape_vec((h, w, c), data).expect("an image buffer matches its dimensions")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{s, Array2, Array3};

    #[test]
    fn arrays_round_trip_through_images_in_any_layout() {
        let a = Array3::from_shape_fn((5, 7, 3), |(y, x, c)| (y * 50 + x * 7 + c) as u8);
        let img = image_from_array(a.view()).unwrap();
        assert_eq!(img.to_rgb8().get_pixel(6, 4).0, [242, 243, 244]); // 4·50 + 6·7
        assert_eq!(image_to_array(img), a);
        // A strided slice of a larger array reads as the pixels it shows.
        let big = Array3::from_shape_fn((10, 14, 3), |(y, x, c)| (y * 25 + x * 3 + c) as u8);
        let part = big.slice(s![..;2, 1..;2, ..]);
        assert_eq!(image_to_array(image_from_array(part).unwrap()), part);
    }

    #[test]
    fn alpha_is_kept_and_other_shapes_are_named() {
        let a = Array3::from_shape_fn((2, 3, 4), |(y, x, c)| (y + x + c * 60) as u8);
        let img = image_from_array(a.view()).unwrap();
        assert!(img.color().has_alpha());
        assert_eq!(image_to_array(img), a);
        let grey = Array3::<u8>::zeros((2, 3, 1));
        let e = image_from_array(grey.view()).unwrap_err().to_string();
        assert!(e.contains("H×W×3") && e.contains("2×3×1"), "{e}");
    }

    #[test]
    fn both_mask_forms_follow_the_convention() {
        let bools = Array2::from_shape_fn((3, 4), |(y, x)| (x + y) % 3 == 0);
        let luma = bools.mapv(|b| if b { 200u8 } else { 100 });
        let a = HoleMask::from(MaskView::from(bools.view()));
        let b = HoleMask::from(MaskView::from(luma.view()));
        assert_eq!(a, b);
        assert_eq!(a.dimensions(), (4, 3));
        assert_eq!(a.as_slice().iter().filter(|&&h| h).count(), 4);
    }
}
