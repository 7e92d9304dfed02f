//! What can go wrong with an inference job, in the pool's terms; `crate::error` says what
//! each means over HTTP.

/// Why the pool did not return a result.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The queue is full; the job was refused at once, and the caller may retry later.
    #[error("the inference queue is full")]
    Overloaded,

    /// The model failed to load, so no job can run (the message says why).
    #[error("model not ready: {0}")]
    NotReady(String),

    /// No fine-tuned model has this id (its file is gone).
    #[error("no model `{0}`")]
    UnknownModel(String),

    /// The image or mask is unusable: not an image, too many pixels, sizes differ, or an
    /// input the model refuses.
    #[error(transparent)]
    Input(partialconv::Error),

    /// A failure of the pool or the model, not of the input; the message is for the log.
    #[error("{0}")]
    Internal(String),
}

impl PoolError {
    /// An [`Internal`](Self::Internal) error from anything displayable.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        Self::Internal(e.to_string())
    }
}
