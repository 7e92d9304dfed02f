pub mod masks;
pub mod unet;
