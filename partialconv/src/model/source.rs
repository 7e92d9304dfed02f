//! Where a model comes from: a path when the caller names one, else `$PARTIALCONV_MODEL`,
//! else the model compiled into the build. The CLI and Python resolve through here.

use std::path::Path;

use tch::Device;

use super::Model;
use crate::error::{Error, Result};

/// Environment variable naming a model file to use instead of the bundled one.
pub const MODEL_ENV: &str = "PARTIALCONV_MODEL";

/// The model compiled into this build, if any (`models/default.safetensors`).
pub fn bundled_model() -> Option<&'static [u8]> {
    #[cfg(all(feature = "bundled-model", bundled_model))]
    {
        Some(include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../models/default.safetensors"
        )))
    }
    #[cfg(not(all(feature = "bundled-model", bundled_model)))]
    {
        None
    }
}

/// Loads `path`, else `$PARTIALCONV_MODEL`, else the bundled model.
pub fn load_model(path: Option<&Path>, device: Device) -> Result<Model> {
    if let Some(p) = path {
        return Model::load(p, device);
    }
    if let Some(p) = std::env::var_os(MODEL_ENV).filter(|p| !p.is_empty()) {
        return Model::load(Path::new(&p), device);
    }
    let bytes = bundled_model().ok_or(Error::NoModel)?;
    Model::from_bytes(bytes, "bundled model", device)
}
