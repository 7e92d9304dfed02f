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
//! The crate root re-exports what most programs need; the modules hold the rest, from the
//! network's layers ([`layer`], [`unet`]) through model files ([`checkpoint`]) and images
//! ([`io`], [`masks`], [`imaging`]) to prediction ([`inpainter`], [`blend`], [`ensemble`]),
//! training ([`train`], [`loss`], [`vgg`], [`average`]) and evaluation ([`eval`],
//! [`metrics`], [`telea`]).

#![warn(missing_docs)]

pub mod average;
// Timing helpers for the CLI's `bench` and the criterion benches, not a supported API.
#[doc(hidden)]
pub mod bench;
pub mod blend;
pub mod checkpoint;
pub mod ensemble;
pub mod error;
pub mod eval;
pub mod imaging;
pub mod inpainter;
pub mod io;
pub mod layer;
pub mod loss;
pub mod masks;
pub mod metrics;
pub mod plot;
pub mod telea;
pub mod train;
pub mod unet;
pub mod vgg;

pub use blend::Blend;
pub use checkpoint::{Model, ModelMeta, Normalization, Storage};
pub use ensemble::SelfEnsemble;
pub use error::{Error, Result};
pub use inpainter::{parse_device, Inpainter, Strategy};
pub use layer::{partial_conv2d, Convention, Mask, PartialConv2d, PartialConvConfig};
pub use masks::HoleMask;
pub use train::{CancelToken, FineTuner, TrainConfig};
pub use unet::{PConvUNet, PConvUNetConfig};
