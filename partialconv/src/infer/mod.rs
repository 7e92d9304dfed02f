//! Prediction: [`Inpainter`](inpainter::Inpainter) and its strategies, the forward pass on
//! images ([`forward`]), how the fill meets the photo ([`blend`]), the flipped views it
//! averages ([`ensemble`]) and the number format its convolutions compute in
//! ([`precision`]).

pub mod blend;
pub mod ensemble;
pub mod forward;
pub mod inpainter;
pub mod precision;
