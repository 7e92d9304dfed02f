pub mod blend;
pub mod masks;
pub mod unet;
