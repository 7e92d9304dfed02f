//! Prediction: [`Inpainter`](inpainter::Inpainter) and its strategies, the forward pass on
//! images ([`forward`]), how the fill meets the photo ([`blend`]) and the flipped views it
//! averages ([`ensemble`]).

pub mod blend;
pub mod ensemble;
pub mod forward;
pub mod inpainter;
