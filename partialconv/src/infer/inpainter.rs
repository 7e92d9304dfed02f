//! Prediction: an image of any size plus a hole mask in, the same image with its holes
//! filled out. Pixels outside the hole are returned bit for bit.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use image::{imageops, DynamicImage, GenericImageView, RgbImage, RgbaImage};
use ndarray::{Array3, ArrayView3};
use tch::Device;

use crate::error::{Error, Result};
use crate::imaging::array::{self, MaskView};
use crate::imaging::masks::{merge_overlapping, HoleMask, Rect};
use crate::infer::blend::{telea_blend, Blend};
use crate::infer::ensemble::SelfEnsemble;
use crate::infer::precision::Precision;
use crate::model::Model;

// The paths these had before the layers, which the server, the bindings and the benches use.
#[doc(hidden)]
pub use crate::device::parse_device;
#[doc(hidden)]
pub use crate::imaging::convert::composite;
#[doc(hidden)]
pub use crate::model::source::{bundled_model, load_model, MODEL_ENV};

/// How an image is brought to the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Strategy {
    /// Picks one of the others from the image size, the holes and the model: see [`choose`].
    #[default]
    Auto,
    /// The whole image at native resolution, reflect-padded to a multiple of `2^layer_size`.
    Original,
    /// Long side scaled to `long_side`, the fill upscaled back and composited.
    Resize {
        /// The side the image's longer side is scaled to.
        long_side: u32,
    },
    /// One native-resolution crop per hole region (with context), pasted back.
    Crop,
}

impl FromStr for Strategy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Strategy::Auto),
            "original" => Ok(Strategy::Original),
            "crop" => Ok(Strategy::Crop),
            "resize" => Ok(Strategy::Resize { long_side: 512 }),
            _ => match s.strip_prefix("resize:").map(str::parse::<u32>) {
                Some(Ok(n)) if n >= 16 => Ok(Strategy::Resize { long_side: n }),
                _ => Err(Error::InvalidArgument(format!(
                    "unknown strategy `{s}`: expected auto, original, resize, resize:N or crop"
                ))),
            },
        }
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Strategy::Auto => f.write_str("auto"),
            Strategy::Original => f.write_str("original"),
            Strategy::Resize { long_side } => write!(f, "resize:{long_side}"),
            Strategy::Crop => f.write_str("crop"),
        }
    }
}

/// Context kept around each hole for `crop`: half the hole's long side, at least this.
pub const MIN_CROP_MARGIN: u32 = 32;

/// The longest side the model is run on at native resolution: twice its training size (the
/// network generalises to a few times its crop size, not to arbitrary resolutions), and never
/// below 512.
pub fn working_side(model_train_size: Option<u32>) -> u32 {
    (2 * model_train_size.unwrap_or(256)).max(512)
}

/// Hole regions as `crop` processes them: each component's box grown by a context margin of
/// `max(32, long side / 2)`, then overlapping boxes merged.
pub fn crop_regions(width: u32, height: u32, hole_boxes: &[Rect]) -> Vec<Rect> {
    let grown = hole_boxes
        .iter()
        .map(|b| {
            b.expand(
                MIN_CROP_MARGIN.max(b.width().max(b.height()) / 2),
                width,
                height,
            )
        })
        .collect();
    merge_overlapping(grown)
}

/// `auto`, as a pure function of the image size, the hole boxes and the model's working side
/// ([`working_side`]):
/// 1. `Crop` when the crop regions cover at most half of the image: big photos with small
///    holes cost what the holes cost (a region larger than the working side is itself
///    resized to it);
/// 2. otherwise `Original` when the image's long side fits the working side;
/// 3. otherwise `Resize` to the working side.
pub fn choose(width: u32, height: u32, hole_boxes: &[Rect], working_side: u32) -> Strategy {
    let regions = crop_regions(width, height, hole_boxes);
    let covered: u64 = regions.iter().map(Rect::area).sum();
    if !regions.is_empty() && covered * 2 <= width as u64 * height as u64 {
        Strategy::Crop
    } else if width.max(height) <= working_side {
        Strategy::Original
    } else {
        Strategy::Resize {
            long_side: working_side,
        }
    }
}

/// Runs a [`Model`] on images.
///
/// Cloning is cheap: clones share the weights, so a clone with another
/// [`with_ensemble`](Self::with_ensemble) or [`with_blend`](Self::with_blend) serves a
/// request that asks for it without a second copy of the model.
#[derive(Debug, Clone)]
pub struct Inpainter {
    model: Arc<Weights>,
    blend: Blend,
    ensemble: SelfEnsemble,
    precision: Precision,
}

/// The model that an [`Inpainter`] and its clones share, read-only.
#[derive(Debug)]
struct Weights(Model);

// SAFETY: `tch::Tensor` is not `Sync` because a tensor handle can be mutated through `&self`
// by libtorch calls in general. The weights are only ever used for inference: `forward_t(..,
// false)` inside `no_grad`, which reads the weights and batch-norm statistics and writes
// nothing but fresh output tensors, and libtorch's reads of shared tensors are thread-safe.
// `Weights` is private and no method of `Inpainter` hands out its tensors, so concurrent
// `predict` calls from several threads or clones (the server's workers, Python threads)
// never race.
unsafe impl Sync for Weights {}

impl Inpainter {
    /// Wraps a loaded model, with batch norm folded into the convolutions for inference. Its
    /// convolutions run in fp32 until [`with_precision`](Self::with_precision).
    pub fn new(mut model: Model) -> Self {
        // The weights never change from here on.
        model.net.absorb_bn();
        Self {
            model: Arc::new(Weights(model)),
            blend: Blend::default(),
            ensemble: SelfEnsemble::default(),
            precision: Precision::Fp32,
        }
    }

    /// Computes the network's convolutions in `precision` (resolved for this device: see
    /// [`crate::infer::precision`]), converting the weights once, here. Fails on a clone
    /// (the weights are shared) and once a precision other than fp32 is set, since the
    /// fp32 weights are gone: set it right after loading.
    pub fn with_precision(mut self, precision: Precision) -> Result<Self> {
        let resolved = precision.resolve(self.device());
        if resolved == self.precision {
            return Ok(self);
        }
        if self.precision != Precision::Fp32 {
            return Err(Error::InvalidArgument(format!(
                "the precision is already {}; load the model again for {resolved}",
                self.precision
            )));
        }
        let weights = Arc::get_mut(&mut self.model).ok_or_else(|| {
            Error::InvalidArgument("set the precision before cloning the Inpainter".into())
        })?;
        weights.0.net.set_conv_kind(resolved.kind());
        self.precision = resolved;
        Ok(self)
    }

    /// The kind the convolutions compute in (never `Auto`).
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Which flipped views each fill averages ([`crate::infer::ensemble`]): [`SelfEnsemble::Flips`]
    /// unless set. Each view is another forward pass; the model card weighs the dB against
    /// the time.
    pub fn with_ensemble(mut self, ensemble: SelfEnsemble) -> Self {
        self.ensemble = ensemble;
        self
    }

    /// The flipped views each fill averages.
    pub fn ensemble(&self) -> SelfEnsemble {
        self.ensemble
    }

    /// How fills meet the photo; [`Blend::Telea`] unless set.
    pub fn with_blend(mut self, blend: Blend) -> Self {
        self.blend = blend;
        self
    }

    /// How fills meet the photo.
    pub fn blend(&self) -> Blend {
        self.blend
    }

    /// Loads a model with its convolutions in [`Precision::Auto`]: bf16 on a CPU with
    /// native bf16, fp16 on CUDA, else fp32 ([`crate::infer::precision`]). See
    /// [`load_model`] for how `path = None` resolves.
    pub fn load(path: Option<&Path>, device: Device) -> Result<Self> {
        Self::load_with(path, device, Precision::Auto)
    }

    /// [`load`](Self::load) with the convolutions in `precision`; `Precision::Fp32` matches
    /// the PyTorch reference exactly.
    pub fn load_with(path: Option<&Path>, device: Device, precision: Precision) -> Result<Self> {
        Self::new(load_model(path, device)?).with_precision(precision)
    }

    /// The model's header. (The weights stay private: see the `Sync` impl of `Weights`.)
    pub fn meta(&self) -> &crate::model::ModelMeta {
        &self.model.0.meta
    }

    /// Trainable weights of the network, for reports.
    pub fn parameter_count(&self) -> usize {
        self.model.0.parameter_count()
    }

    /// Where the network runs.
    pub fn device(&self) -> Device {
        self.model.0.vs.device()
    }

    /// What `auto` resolves to for this image and mask.
    pub fn resolve(
        &self,
        strategy: Strategy,
        width: u32,
        height: u32,
        mask: &HoleMask,
    ) -> Strategy {
        match strategy {
            Strategy::Auto => choose(
                width,
                height,
                &mask.component_boxes(),
                working_side(self.model.0.meta.train_size),
            ),
            s => s,
        }
    }

    /// Fills the holes of `image`. Alpha is kept; 16-bit images come back as 8-bit.
    pub fn predict(
        &self,
        image: &DynamicImage,
        mask: &HoleMask,
        strategy: Strategy,
    ) -> Result<DynamicImage> {
        let (w, h) = image.dimensions();
        check_mask_size(w, h, mask)?;
        if mask.is_empty() {
            return Ok(image.clone());
        }
        let rgb = image.to_rgb8();
        let filled = match self.resolve(strategy, w, h, mask) {
            Strategy::Original | Strategy::Auto => self.fill_native(&[&rgb], &[mask])?.remove(0),
            Strategy::Resize { long_side } => self.fill_resized(&rgb, mask, long_side)?,
            Strategy::Crop => self.fill_crops(&rgb, mask)?,
        };
        Ok(finish(image, self.merge(&rgb, &filled, mask)))
    }

    /// [`predict`](Self::predict) on arrays: `image` is `H×W×3` (RGB) or `H×W×4` (RGBA,
    /// alpha kept) `u8`, `mask` an `H×W` view of `bool` or `u8` (see [`MaskView`]). Returns
    /// the filled image in the image's layout. Views may have any strides.
    pub fn predict_array<'a>(
        &self,
        image: ArrayView3<'_, u8>,
        mask: impl Into<MaskView<'a>>,
        strategy: Strategy,
    ) -> Result<Array3<u8>> {
        let image = array::image_from_array(image)?;
        let mask = HoleMask::from(mask.into());
        Ok(array::image_to_array(
            self.predict(&image, &mask, strategy)?,
        ))
    }

    /// Predicts many images; same-size items under `original` share one forward pass.
    pub fn predict_batch(
        &self,
        items: &[(DynamicImage, HoleMask)],
        strategy: Strategy,
    ) -> Result<Vec<DynamicImage>> {
        let mut out: Vec<Option<DynamicImage>> = vec![None; items.len()];
        let mut native: Vec<usize> = Vec::new();
        for (i, (img, mask)) in items.iter().enumerate() {
            let (w, h) = img.dimensions();
            check_mask_size(w, h, mask)?;
            if !mask.is_empty() && self.resolve(strategy, w, h, mask) == Strategy::Original {
                native.push(i);
            } else {
                out[i] = Some(self.predict(img, mask, strategy)?);
            }
        }
        // Group the native-resolution items by size, so each group is one batched forward.
        native.sort_by_key(|&i| items[i].0.dimensions());
        for group in native.chunk_by(|&a, &b| items[a].0.dimensions() == items[b].0.dimensions()) {
            let rgbs: Vec<RgbImage> = group.iter().map(|&i| items[i].0.to_rgb8()).collect();
            let masks: Vec<&HoleMask> = group.iter().map(|&i| &items[i].1).collect();
            let filled = self.fill_native(&rgbs.iter().collect::<Vec<_>>(), &masks)?;
            for ((&i, rgb), f) in group.iter().zip(&rgbs).zip(filled) {
                out[i] = Some(finish(&items[i].0, self.merge(rgb, &f, &items[i].1)));
            }
        }
        Ok(out
            .into_iter()
            .map(|o| o.expect("every item predicted"))
            .collect())
    }

    /// The network's raw prediction for same-size images at native resolution (no composite),
    /// averaged over the views of [`Inpainter::with_ensemble`].
    pub fn fill_native(&self, images: &[&RgbImage], masks: &[&HoleMask]) -> Result<Vec<RgbImage>> {
        self.model.0.fill_native_with(images, masks, self.ensemble)
    }

    /// The photo with `filled`'s hole pixels, by this inpainter's [`Blend`].
    pub fn merge(&self, original: &RgbImage, filled: &RgbImage, mask: &HoleMask) -> RgbImage {
        match self.blend {
            Blend::Telea => telea_blend(original, filled, mask),
            Blend::Paste => composite(original, filled, mask),
        }
    }

    fn fill_resized(&self, rgb: &RgbImage, mask: &HoleMask, long_side: u32) -> Result<RgbImage> {
        let (w, h) = rgb.dimensions();
        if w.max(h) <= long_side {
            return Ok(self.fill_native(&[rgb], &[mask])?.remove(0));
        }
        let scale = long_side as f64 / w.max(h) as f64;
        let (sw, sh) = (
            ((w as f64 * scale).round() as u32).max(1),
            ((h as f64 * scale).round() as u32).max(1),
        );
        let small = imageops::resize(rgb, sw, sh, imageops::FilterType::Lanczos3);
        let small_mask = mask.resize_conservative(sw, sh);
        let filled = self.fill_native(&[&small], &[&small_mask])?.remove(0);
        Ok(imageops::resize(
            &filled,
            w,
            h,
            imageops::FilterType::CatmullRom,
        ))
    }

    fn fill_crops(&self, rgb: &RgbImage, mask: &HoleMask) -> Result<RgbImage> {
        let (w, h) = rgb.dimensions();
        let side = working_side(self.model.0.meta.train_size);
        let mut out = rgb.clone();
        for r in crop_regions(w, h, &mask.component_boxes()) {
            let crop = imageops::crop_imm(rgb, r.x0, r.y0, r.width(), r.height()).to_image();
            let crop_mask = mask.crop(r);
            let filled = self.fill_resized(&crop, &crop_mask, side)?;
            let filled = composite(&crop, &filled, &crop_mask);
            imageops::replace(&mut out, &filled, r.x0 as i64, r.y0 as i64);
        }
        Ok(out)
    }
}

fn check_mask_size(w: u32, h: u32, mask: &HoleMask) -> Result<()> {
    if mask.dimensions() != (w, h) {
        let (mask_w, mask_h) = mask.dimensions();
        return Err(Error::MaskSize {
            image_w: w,
            image_h: h,
            mask_w,
            mask_h,
        });
    }
    Ok(())
}

/// Restores the input's alpha channel, if it had one.
fn finish(input: &DynamicImage, rgb: RgbImage) -> DynamicImage {
    if !input.color().has_alpha() {
        return DynamicImage::ImageRgb8(rgb);
    }
    let alpha = input.to_rgba8();
    let rgba = RgbaImage::from_fn(rgb.width(), rgb.height(), |x, y| {
        let [r, g, b] = rgb.get_pixel(x, y).0;
        image::Rgba([r, g, b, alpha.get_pixel(x, y)[3]])
    });
    DynamicImage::ImageRgba8(rgba)
}
