//! Where a model comes from: a path when the caller names one, else `$PARTIALCONV_MODEL`,
//! else the model compiled into the build. The CLI, Python and the server resolve through
//! here.

use std::path::{Path, PathBuf};

use tch::Device;

use super::Model;
use crate::error::{Error, Result};

/// Environment variable naming a model file to use instead of the bundled one.
pub const MODEL_ENV: &str = "PARTIALCONV_MODEL";

/// The model compiled into this build, if any: the `partialconv-model` crate's, with the
/// default `bundled-model` feature.
pub fn bundled_model() -> Option<&'static [u8]> {
    #[cfg(feature = "bundled-model")]
    {
        Some(partialconv_model::SAFETENSORS)
    }
    #[cfg(not(feature = "bundled-model"))]
    {
        None
    }
}

/// Where a model comes from, resolved but not loaded: for callers that need to know which
/// model they run (a server naming it in its responses) or need it as a file (a trainer).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ModelSource {
    /// A model file: the caller's, or `$PARTIALCONV_MODEL`'s.
    File(PathBuf),
    /// The model compiled into this build ([`bundled_model`]).
    Bundled,
}

impl ModelSource {
    /// `path`, else `$PARTIALCONV_MODEL`, else the bundled model; [`Error::NoModel`] when
    /// none of them is there.
    pub fn resolve(path: Option<&Path>) -> Result<Self> {
        if let Some(p) = path {
            return Ok(Self::File(p.to_owned()));
        }
        if let Some(p) = std::env::var_os(MODEL_ENV).filter(|p| !p.is_empty()) {
            return Ok(Self::File(PathBuf::from(p)));
        }
        bundled_model().ok_or(Error::NoModel)?;
        Ok(Self::Bundled)
    }

    /// `bundled` for the bundled model, any other name for that file: how the CLI's and
    /// Python's `base` arguments name a model.
    pub fn from_name(name: impl Into<PathBuf>) -> Self {
        let name = name.into();
        if name.as_os_str() == "bundled" {
            Self::Bundled
        } else {
            Self::File(name)
        }
    }

    /// A short name for logs and responses: the file's stem, or `bundled`.
    pub fn id(&self) -> String {
        match self {
            Self::File(p) => p
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| p.display().to_string()),
            Self::Bundled => "bundled".to_owned(),
        }
    }

    /// Loads the model onto `device`.
    pub fn load(&self, device: Device) -> Result<Model> {
        match self {
            Self::File(p) => Model::load(p, device),
            Self::Bundled => {
                let bytes = bundled_model().ok_or(Error::NoModel)?;
                Model::from_bytes(bytes, "bundled model", device)
            }
        }
    }
}

/// Loads `path`, else `$PARTIALCONV_MODEL`, else the bundled model (see [`ModelSource`]).
pub fn load_model(path: Option<&Path>, device: Device) -> Result<Model> {
    ModelSource::resolve(path)?.load(device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_file_wins_and_is_named_by_its_stem() {
        let s = ModelSource::resolve(Some(Path::new("/models/run13.safetensors"))).unwrap();
        assert_eq!(
            s,
            ModelSource::File(PathBuf::from("/models/run13.safetensors"))
        );
        assert_eq!(s.id(), "run13");
        assert_eq!(ModelSource::Bundled.id(), "bundled");
        assert!(matches!(
            s.load(Device::Cpu),
            Err(e) if e.to_string().contains("run13")
        ));
    }
}
