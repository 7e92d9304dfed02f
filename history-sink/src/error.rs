//! The crate's one error type.

use std::path::PathBuf;

/// Every fallible operation in this crate returns `Result<T, HistoryError>`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HistoryError {
    /// A file-system operation failed (image store, spool).
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// An event could not be encoded or decoded as JSON.
    #[error("JSON error: {0}")]
    Json(#[from] serde_json::Error),

    /// An event is well-formed JSON but breaks a rule of the schema.
    #[error("invalid event: {0}")]
    InvalidEvent(String),

    /// An image key is not `<64 lowercase hex>.<known extension>`.
    #[error("invalid image key {0:?}")]
    InvalidKey(String),

    /// The image store does not accept this content type.
    #[error("unsupported image content type {0:?}")]
    UnsupportedContentType(String),

    /// A sink URL could not be understood.
    #[error("invalid sink URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The URL or operation needs a cargo feature this build lacks.
    #[error("feature `{0}` of history-sink is not enabled in this build")]
    FeatureDisabled(&'static str),

    /// The backend cannot do this (e.g. `query` on a Kafka sink).
    #[error("{operation} is not supported by the {sink} sink")]
    Unsupported {
        /// The operation asked for.
        operation: &'static str,
        /// The sink's name.
        sink: &'static str,
    },

    /// The paging cursor (`HistoryQuery::before`) names no stored event.
    #[error("unknown paging cursor {0}")]
    UnknownCursor(uuid::Uuid),

    /// The durable spool is damaged beyond the torn tail that a crash can leave.
    #[error("spool {path} is corrupt: {reason}")]
    SpoolCorrupt {
        /// The spool file.
        path: PathBuf,
        /// What was found.
        reason: String,
    },

    /// Another process has this spool open; each process needs a spool directory of its own.
    #[error("spool {0} is in use by another process")]
    SpoolLocked(PathBuf),

    /// The spool holds its limit of undelivered events; this one was dropped and counted.
    #[error("the {sink} history spool is full ({max_bytes} bytes undelivered); event dropped")]
    SpoolFull {
        /// The sink whose spool is full.
        sink: &'static str,
        /// The spool's bound.
        max_bytes: u64,
    },

    /// Waiting for a spool to drain took longer than allowed.
    #[error("timed out after {0:?} waiting for the spool to drain")]
    FlushTimeout(std::time::Duration),

    /// Some sinks of a fan-out failed; the others recorded the event.
    #[error("{failed} of {total} fan-out sinks failed; first error: {first}")]
    Fanout {
        /// How many sinks failed.
        failed: usize,
        /// How many sinks there are.
        total: usize,
        /// The first failure.
        first: Box<HistoryError>,
    },

    /// A database error from sqlx (SQLite or MySQL).
    #[cfg(any(feature = "sqlite", feature = "mysql"))]
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),

    /// Applying the embedded migrations failed.
    #[cfg(any(feature = "sqlite", feature = "mysql"))]
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),

    /// A Kafka client error from rdkafka.
    #[cfg(feature = "kafka")]
    #[error("kafka error: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),

    /// An S3 / object store error.
    #[cfg(feature = "s3")]
    #[error("object store error: {0}")]
    ObjectStore(#[from] object_store::Error),
}

impl HistoryError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// Shorthand used throughout the crate.
pub type Result<T, E = HistoryError> = std::result::Result<T, E>;
