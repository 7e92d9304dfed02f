//! Image inpainting with partial convolutions (Liu et al., "Image Inpainting for Irregular
//! Holes Using Partial Convolutions", ECCV 2018) on libtorch.
//!
//! ```no_run
//! use partialconv::{io, Inpainter, Strategy};
//! # fn main() -> partialconv::Result<()> {
//! let inpainter = Inpainter::load(None, tch::Device::Cpu)?; // the bundled model
//! let image = io::read_image("photo.jpg".as_ref())?;
//! let mask = io::read_mask("mask.png".as_ref())?; // white = fill
//! let filled = inpainter.predict(&image, &mask, Strategy::Auto)?;
//! io::write_image(&filled, "filled.png".as_ref())?;
//! # Ok(()) }
//! ```
//!
//! The crate root re-exports what most programs need. The modules are layers, each using
//! only those listed before it:
//!
//! - [`error`] and [`device`]: the error type, and device names;
//! - [`nn`]: the partial convolution, the U-Net and the VGG features of the loss;
//! - [`model`]: model files, their header and normalisation, the `.pth` import and where a
//!   model comes from when none is named;
//! - [`imaging`]: decoding with limits, hole masks and their generator, image ↔ tensor;
//! - [`classic`]: Telea's fast-marching inpainting, the baseline and the blend's edge;
//! - [`infer`]: [`Inpainter`], its strategies, the blend and the self-ensemble;
//! - [`eval`]: the evaluation protocol and its metrics;
//! - [`train`]: [`FineTuner`], its loss, plots and weight averaging.

#![warn(missing_docs)]

pub mod error;

pub mod device;

pub mod nn;

pub mod model;

pub mod imaging;

pub mod classic;

pub mod infer;

pub mod eval;

pub mod train;

// Timing helpers for the CLI's `bench` and the criterion benches, not a supported API.
#[doc(hidden)]
pub mod bench;

pub use device::parse_device;
pub use error::{Error, Result};
pub use imaging::array::MaskView;
pub use imaging::io;
pub use imaging::masks::HoleMask;
pub use infer::blend::Blend;
pub use infer::ensemble::SelfEnsemble;
pub use infer::inpainter::{Inpainter, Strategy};
pub use infer::precision::Precision;
pub use model::{Model, ModelMeta, ModelSource, Normalization, Storage};
pub use nn::layer::{partial_conv2d, Convention, Mask, PartialConv2d, PartialConvConfig};
pub use nn::unet::{PConvUNet, PConvUNetConfig};
pub use train::{CancelToken, FineTuner, TrainConfig};

/// The ndarray version of [`Inpainter::predict_array`] and [`MaskView`], so that callers
/// build their views with the same crate.
pub use ndarray;
/// The tch (libtorch) version this crate is built on, so that callers name devices and
/// tensors with the same crate without pinning it themselves.
pub use tch;

// The module paths of the flat layout before the layers, for code written against them.
#[doc(hidden)]
pub use classic::telea;
#[doc(hidden)]
pub use eval::metrics;
#[doc(hidden)]
pub use imaging::masks;
#[doc(hidden)]
pub use infer::{blend, ensemble, inpainter};
#[doc(hidden)]
pub use model as checkpoint;
#[doc(hidden)]
pub use nn::{layer, unet, vgg};
#[doc(hidden)]
pub use train::{average, loss, plot};
