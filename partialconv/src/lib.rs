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

pub mod average;
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
pub use inpainter::{Inpainter, Strategy};
pub use layer::{partial_conv2d, Convention, Mask, PartialConv2d, PartialConvConfig};
pub use masks::HoleMask;
pub use unet::{PConvUNet, PConvUNetConfig};
