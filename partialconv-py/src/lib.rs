//! `partialconv._partialconv`: the Python face of the `partialconv` crate.
//!
//! A thin layer: arguments become core types in [`convert`], the core does the work with
//! the GIL released, and every core error becomes a Python exception in [`py_err`].

use pyo3::exceptions::{PyFileNotFoundError, PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;

use partialconv::Error;

mod convert;
mod inpainter;
mod train;

/// What a Python caller does about a mask of another size; the core's message names no
/// argument, since the CLI and the server have their own.
pub(crate) const RESIZE_MASK_HINT: &str = "(pass resize_mask=True to scale it)";

/// The one place core errors cross into Python. The message is the one the CLI prints after
/// `error: `, with Python's hint where the CLI gives its flag. `Error` is
/// `#[non_exhaustive]`: a variant added to the core is a RuntimeError until it is named here.
pub(crate) fn py_err(e: Error) -> PyErr {
    let msg = e.to_string();
    match &e {
        Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            PyFileNotFoundError::new_err(msg)
        }
        // Permission denied, a full disk, ...: Python reports those as OSError too.
        Error::Io { .. } => PyOSError::new_err(msg),
        Error::MaskSize { .. } => PyValueError::new_err(format!("{msg} {RESIZE_MASK_HINT}")),
        Error::Image { .. }
        | Error::TooLarge { .. }
        | Error::Checkpoint { .. }
        | Error::MissingTensor { .. }
        | Error::ShapeMismatch { .. }
        | Error::Pth { .. }
        | Error::Device(..)
        | Error::InvalidArgument(_)
        | Error::Data(_) => PyValueError::new_err(msg),
        // Not the arguments' fault: the build has no model, or libtorch failed.
        Error::NoModel | Error::Interrupted { .. } | Error::Torch(_) => {
            PyRuntimeError::new_err(msg)
        }
        _ => PyRuntimeError::new_err(msg),
    }
}

/// Converts a PyTorch checkpoint of the public reimplementation to safetensors (the CLI's
/// `partialconv import`).
#[pyfunction]
#[pyo3(signature = (src, dst, half = false))]
fn import_checkpoint(
    py: Python<'_>,
    src: std::path::PathBuf,
    dst: std::path::PathBuf,
    half: bool,
) -> PyResult<()> {
    py.detach(|| {
        let model = partialconv::checkpoint::import_pth(&src)?;
        let storage = if half {
            partialconv::Storage::F16
        } else {
            partialconv::Storage::F32
        };
        model.save(&dst, storage)
    })
    .map_err(py_err)
}

/// The native half of `partialconv`; import `partialconv` itself, which loads torch first.
#[pymodule]
fn _partialconv(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<inpainter::Inpainter>()?;
    m.add_class::<train::FineTuner>()?;
    m.add_class::<train::Progress>()?;
    m.add_function(wrap_pyfunction!(import_checkpoint, m)?)?;
    Ok(())
}
