//! The networks: the partial convolution ([`layer`]), the U-Net built from it ([`unet`]) and
//! the VGG19 features the training loss compares ([`vgg`]).

pub mod layer;
pub mod unet;
pub mod vgg;
