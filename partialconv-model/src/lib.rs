//! The model that [partialconv](https://crates.io/crates/partialconv) bundles, as the bytes
//! of a safetensors file.
//!
//! A partial-convolution U-Net (Liu et al., ECCV 2018), 7 levels, width 48, trained on natural
//! photos; its card, with how it was trained and how it scores, is `MODEL_CARD.md` beside this
//! crate. The convolution weights are stored as per-output-channel symmetric int8 (biases and
//! batch norm as fp16), which keeps the crate under crates.io's size limit;
//! `partialconv::Model::from_bytes` dequantises them once, on load.
//!
//! Most users never name this crate: `partialconv`'s default `bundled-model` feature depends
//! on it, and `Inpainter::load(None, ..)` loads it.

#![warn(missing_docs)]

/// The bundled model file: safetensors with partialconv's `partialconv` header.
pub const SAFETENSORS: &[u8] = include_bytes!("../default.int8.safetensors");
