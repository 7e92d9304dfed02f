//! Inpainting without a network: the baseline the model is scored against, and the fill the
//! blend uses at a hole's edge.

pub mod telea;
