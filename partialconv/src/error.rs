//! The crate's one error type. Each message names the file or value at fault, because the
//! CLI, the server and the Python bindings print it to a user as it is. No message names a
//! CLI flag or a Python argument: each front end adds its own hint (`--resize-mask`,
//! `resize_mask=True`).

use std::path::PathBuf;

use torch_pickle::PthError;

/// Everything the library can fail with; see each variant.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system reported.
        source: std::io::Error,
    },

    /// A file (or upload) is not a decodable image, or is truncated.
    #[error("{what}: not a readable image ({source})")]
    Image {
        /// The file name or upload that failed.
        what: String,
        /// What the decoder reported.
        source: image::ImageError,
    },

    /// An image is larger than the caller allows; checked from the header, before decoding.
    #[error("{what}: {width}×{height} exceeds the limit of {limit} pixels")]
    TooLarge {
        /// The file name or upload.
        what: String,
        /// Its width in pixels, from the header.
        width: u32,
        /// Its height in pixels, from the header.
        height: u32,
        /// The caller's limit, in pixels.
        limit: u64,
    },

    /// Image and mask sizes differ.
    #[error("mask is {mask_w}×{mask_h} but the image is {image_w}×{image_h}")]
    MaskSize {
        /// The image's width.
        image_w: u32,
        /// The image's height.
        image_h: u32,
        /// The mask's width.
        mask_w: u32,
        /// The mask's height.
        mask_h: u32,
    },

    /// A model file is not a valid partialconv checkpoint.
    #[error("{what}: {reason}")]
    Checkpoint {
        /// The file, or `bundled model`.
        what: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A tensor the architecture needs is absent from the checkpoint.
    #[error("{what}: missing tensor `{name}` (wrong architecture?)")]
    MissingTensor {
        /// The file, or `bundled model`.
        what: String,
        /// The tensor's name, e.g. `enc_1.conv.weight`.
        name: String,
    },

    /// A tensor has the wrong shape for the architecture in the checkpoint's metadata.
    #[error("{what}: tensor `{name}` has shape {found:?}, the architecture needs {expected:?}")]
    ShapeMismatch {
        /// The file, or `bundled model`.
        what: String,
        /// The tensor's name.
        name: String,
        /// The shape the architecture needs.
        expected: Vec<i64>,
        /// The shape in the file.
        found: Vec<i64>,
    },

    /// A PyTorch checkpoint could not be imported.
    #[error("{}: {source}", path.display())]
    Pth {
        /// The checkpoint file.
        path: PathBuf,
        /// Why the unpickler refused it.
        source: PthError,
    },

    /// No bundled model was compiled in and none was given.
    #[error(
        "no model: this build has no bundled model; name a model file or set PARTIALCONV_MODEL"
    )]
    NoModel,

    /// An unknown or unavailable device.
    #[error("device `{0}`: {1}")]
    Device(String, String),

    /// A bad argument value (strategy name, size, ...).
    #[error("{0}")]
    InvalidArgument(String),

    /// Training data problems: too few usable images, unreadable VGG file, ...
    #[error("{0}")]
    Data(String),

    /// Training was interrupted (Ctrl-C or cancellation); the last checkpoint is kept.
    #[error("interrupted at step {step}")]
    Interrupted {
        /// The last step trained, which the checkpoint holds.
        step: u64,
    },

    /// An error inside libtorch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Whether the error is the caller's fault (bad input) rather than ours.
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, Error::Torch(_) | Error::Interrupted { .. })
    }
}

/// `Result` with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
