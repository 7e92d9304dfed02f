//! User history for partialconv.
//!
//! - [`HistoryEvent`]: the versioned event (JSON on the wire, see `docs/history.md`);
//! - [`ImageStore`]: content-addressed storage of originals, masks and results;
//! - [`HistorySink`]: where events go — [`SqliteSink`] (default), `MySqlSink` (feature
//!   `mysql`), `KafkaSink` (feature `kafka`), [`FanoutSink`]; [`sink_from_url`] opens one
//!   from a URL;
//! - [`outbox`]: durable first, then sent — remote sinks (Kafka, MySQL) spool each event to
//!   local disk and deliver it in the background, so an outage neither loses events nor
//!   slows the caller;
//! - `service` (feature `service`): the `history-service` that moves Kafka events into MySQL.

#![warn(missing_docs)]

pub mod error;
pub mod event;
pub mod file_store;
pub mod image_store;
pub mod outbox;
pub mod sink;

#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(feature = "s3")]
pub mod s3;
#[cfg(all(feature = "kafka", feature = "mysql"))]
pub mod service;
#[cfg(feature = "sqlite")]
pub mod sqlite;

pub use error::{HistoryError, Result};
pub use event::{EventKind, EventStatus, HistoryEvent, SCHEMA_VERSION};
pub use file_store::FileStore;
pub use image_store::{ImageStore, LocalImageStore, StoredImage};
#[cfg(feature = "kafka")]
pub use kafka::{KafkaSink, KafkaSinkConfig};
#[cfg(feature = "mysql")]
pub use mysql::MySqlSink;
pub use outbox::{Outbox, OutboxConfig};
#[cfg(feature = "s3")]
pub use s3::{S3Config, S3Files, S3ImageStore};
pub use sink::{sink_from_url, FanoutSink, HistoryQuery, HistorySink, SpoolOptions, SpoolStats};
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteSink;
