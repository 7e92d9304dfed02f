//! Images and hole masks: decoding with limits ([`io`]), the mask convention, hole regions
//! and the irregular-hole generator ([`masks`]), a photo's ICC profile and EXIF
//! ([`metadata`]), the conversions between images, masks and the network's tensors
//! ([`convert`]), and ndarray views in and arrays out ([`array`](mod@array)).

pub mod array;
pub mod convert;
pub mod io;
pub mod masks;
pub mod metadata;

pub use convert::{composite, image_to_tensor, scale_short_side, valid_tensor};
