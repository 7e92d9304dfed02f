//! Stopping a run from outside it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Asks a [`FineTuner`](super::FineTuner) to stop after the step in progress, saving a
/// checkpoint first, as a `Break` from the progress callback does. Clones share one flag, so
/// that a signal handler (the CLI's Ctrl-C) or another thread (the server's job cancel) can
/// hold one while the trainer runs with another; the library itself installs no handler.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token not yet cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every holder's [`CancelToken::is_cancelled`] true, for good.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether [`CancelToken::cancel`] was called on this token or a clone.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Shares a flag the caller already has, such as a job table's cancel flag.
impl From<Arc<AtomicBool>> for CancelToken {
    fn from(flag: Arc<AtomicBool>) -> Self {
        Self(flag)
    }
}
