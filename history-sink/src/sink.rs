//! The `HistorySink` trait, queries, the fan-out sink and the URL factory.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::{HistoryError, Result};
use crate::event::{EventKind, HistoryEvent};

/// Default page size of [`HistoryQuery`].
pub const DEFAULT_LIMIT: u32 = 50;
/// Largest page size a query may ask for; larger limits are clamped.
pub const MAX_LIMIT: u32 = 1000;

/// A page of history, newest first (by `occurred_at`, then `event_id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Only this user's events.
    pub user_id: Option<String>,
    /// Only events with `occurred_at >= since`.
    pub since: Option<DateTime<Utc>>,
    /// Only events with `occurred_at < until`.
    pub until: Option<DateTime<Utc>>,
    /// Only this kind.
    pub kind: Option<EventKind>,
    /// Page size (1..=[`MAX_LIMIT`]; 0 means [`DEFAULT_LIMIT`]).
    pub limit: u32,
    /// Paging cursor: only events after this one in the newest-first order, i.e. pass the
    /// `event_id` of the last event of the previous page.
    pub before: Option<Uuid>,
}

impl Default for HistoryQuery {
    fn default() -> Self {
        Self {
            user_id: None,
            since: None,
            until: None,
            kind: None,
            limit: DEFAULT_LIMIT,
            before: None,
        }
    }
}

impl HistoryQuery {
    /// One user's latest events.
    pub fn for_user(user_id: impl Into<String>) -> Self {
        Self {
            user_id: Some(user_id.into()),
            ..Self::default()
        }
    }

    /// The limit clamped to `1..=MAX_LIMIT`.
    pub fn effective_limit(&self) -> u32 {
        match self.limit {
            0 => DEFAULT_LIMIT,
            n => n.min(MAX_LIMIT),
        }
    }
}

/// The state of a sink's local spool (see [`crate::outbox`]), for metrics and health.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SpoolStats {
    /// The sink the spool feeds (`kafka`, `mysql`).
    pub sink: &'static str,
    /// Events on disk that have not been delivered yet.
    pub pending_events: u64,
    /// Their size in bytes.
    pub pending_bytes: u64,
    /// The spool's bound in bytes.
    pub max_bytes: u64,
    /// When the oldest undelivered event happened.
    pub oldest_pending: Option<DateTime<Utc>>,
    /// Events delivered since the process started.
    pub delivered: u64,
    /// Failed delivery attempts since the process started (each is retried).
    pub delivery_failures: u64,
    /// Events refused because the spool was full.
    pub dropped: u64,
    /// Why the latest delivery attempt failed; `None` once one succeeds.
    pub last_error: Option<String>,
}

impl SpoolStats {
    /// How long the oldest undelivered event has waited at `now`, in seconds; `None` when
    /// nothing waits.
    pub fn oldest_age_seconds(&self, now: DateTime<Utc>) -> Option<f64> {
        self.oldest_pending
            .map(|t| (now - t).num_milliseconds().max(0) as f64 / 1000.0)
    }
}

/// Somewhere history events go.
///
/// `record` must be durable when it returns `Ok` (committed to a database, or fsynced to a
/// local spool that an [`Outbox`](crate::outbox::Outbox) delivers) and idempotent by
/// `event_id`.
#[async_trait]
pub trait HistorySink: Send + Sync {
    /// A short name for logs and errors.
    fn name(&self) -> &'static str;

    /// Stores one event. Recording the same `event_id` twice stores it once.
    async fn record(&self, event: &HistoryEvent) -> Result<()>;

    /// A page of events matching `q`. Sinks that cannot read return
    /// [`HistoryError::Unsupported`].
    async fn query(&self, q: &HistoryQuery) -> Result<Vec<HistoryEvent>> {
        let _ = q;
        Err(HistoryError::Unsupported {
            operation: "query",
            sink: self.name(),
        })
    }

    /// One event by id. Sinks that cannot read return [`HistoryError::Unsupported`].
    async fn get(&self, event_id: Uuid) -> Result<Option<HistoryEvent>> {
        let _ = event_id;
        Err(HistoryError::Unsupported {
            operation: "get",
            sink: self.name(),
        })
    }

    /// Whether `query` and `get` work.
    fn can_query(&self) -> bool {
        false
    }

    /// Deletes every event of `user_id`, returning how many there were: a user's "delete my
    /// history". Sinks that cannot (an append-only log) return
    /// [`HistoryError::Unsupported`].
    async fn delete_user(&self, user_id: &str) -> Result<u64> {
        let _ = user_id;
        Err(HistoryError::Unsupported {
            operation: "delete",
            sink: self.name(),
        })
    }

    /// Waits until everything recorded so far has left local buffers (a spool).
    async fn flush(&self) -> Result<()> {
        Ok(())
    }

    /// The local spools behind this sink; empty for sinks that write directly.
    fn spool_stats(&self) -> Vec<SpoolStats> {
        Vec::new()
    }
}

#[async_trait]
impl<S: HistorySink + ?Sized> HistorySink for Arc<S> {
    fn name(&self) -> &'static str {
        (**self).name()
    }
    async fn record(&self, event: &HistoryEvent) -> Result<()> {
        (**self).record(event).await
    }
    async fn query(&self, q: &HistoryQuery) -> Result<Vec<HistoryEvent>> {
        (**self).query(q).await
    }
    async fn get(&self, event_id: Uuid) -> Result<Option<HistoryEvent>> {
        (**self).get(event_id).await
    }
    fn can_query(&self) -> bool {
        (**self).can_query()
    }
    async fn delete_user(&self, user_id: &str) -> Result<u64> {
        (**self).delete_user(user_id).await
    }
    async fn flush(&self) -> Result<()> {
        (**self).flush().await
    }
    fn spool_stats(&self) -> Vec<SpoolStats> {
        (**self).spool_stats()
    }
}

/// Writes every event to several sinks at once; reads from the first that can query.
pub struct FanoutSink {
    sinks: Vec<Arc<dyn HistorySink>>,
}

impl FanoutSink {
    /// A fan-out over `sinks` (in order; the first queryable one answers queries).
    pub fn new(sinks: Vec<Arc<dyn HistorySink>>) -> Self {
        Self { sinks }
    }

    /// The sinks.
    pub fn sinks(&self) -> &[Arc<dyn HistorySink>] {
        &self.sinks
    }

    fn reader(&self) -> Option<&Arc<dyn HistorySink>> {
        self.sinks.iter().find(|s| s.can_query())
    }
}

#[async_trait]
impl HistorySink for FanoutSink {
    fn name(&self) -> &'static str {
        "fanout"
    }

    /// Records in all sinks concurrently. Every sink is tried even when one fails; the error
    /// then says how many failed. Retrying is safe because sinks are idempotent.
    async fn record(&self, event: &HistoryEvent) -> Result<()> {
        let results = futures::future::join_all(self.sinks.iter().map(|s| s.record(event))).await;
        let total = results.len();
        let mut errors: Vec<HistoryError> = results.into_iter().filter_map(|r| r.err()).collect();
        if errors.is_empty() {
            return Ok(());
        }
        let failed = errors.len();
        Err(HistoryError::Fanout {
            failed,
            total,
            first: Box::new(errors.swap_remove(0)),
        })
    }

    async fn query(&self, q: &HistoryQuery) -> Result<Vec<HistoryEvent>> {
        match self.reader() {
            Some(s) => s.query(q).await,
            None => Err(HistoryError::Unsupported {
                operation: "query",
                sink: self.name(),
            }),
        }
    }

    async fn get(&self, event_id: Uuid) -> Result<Option<HistoryEvent>> {
        match self.reader() {
            Some(s) => s.get(event_id).await,
            None => Err(HistoryError::Unsupported {
                operation: "get",
                sink: self.name(),
            }),
        }
    }

    fn can_query(&self) -> bool {
        self.reader().is_some()
    }

    /// Deletes from every sink that can be asked (and so can delete); a log such as Kafka's
    /// keeps its copy until its retention ends, which the caller's docs must say.
    async fn delete_user(&self, user_id: &str) -> Result<u64> {
        let mut deleted = 0;
        for s in self.sinks.iter().filter(|s| s.can_query()) {
            deleted = deleted.max(s.delete_user(user_id).await?);
        }
        Ok(deleted)
    }

    async fn flush(&self) -> Result<()> {
        for s in &self.sinks {
            s.flush().await?;
        }
        Ok(())
    }

    fn spool_stats(&self) -> Vec<SpoolStats> {
        self.sinks.iter().flat_map(|s| s.spool_stats()).collect()
    }
}

/// Where the sinks that spool (Kafka, MySQL) keep their spools, and how large each may grow.
#[derive(Debug, Clone)]
pub struct SpoolOptions {
    /// Each spooling sink gets a directory of its own under this one.
    pub root: PathBuf,
    /// Most undelivered bytes each spool holds; further events are dropped and counted.
    pub max_bytes: u64,
}

impl SpoolOptions {
    /// Spools under `root`, each bounded to [`DEFAULT_MAX_BYTES`](crate::outbox::DEFAULT_MAX_BYTES).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            max_bytes: crate::outbox::DEFAULT_MAX_BYTES,
        }
    }

    /// The spool directory of one sink: named by the scheme and a hash of what identifies
    /// the destination (brokers and topic, or host, port and database; never a password),
    /// so that the same destination finds its spool again after a restart.
    pub fn dir_for(&self, scheme: &str, destination: &str) -> PathBuf {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(destination.as_bytes());
        self.root
            .join(format!("{scheme}-{}", &hex::encode(digest)[..16]))
    }
}

/// Opens a sink from a URL:
///
/// - `sqlite:PATH` or `sqlite://PATH` (created if missing; `sqlite::memory:` for tests);
/// - `mysql://user:pass@host:port/db` (feature `mysql`; migrations run on open), behind an
///   [`Outbox`](crate::outbox::Outbox) spooling under `spool.root`;
/// - `kafka://HOST:PORT[,HOST:PORT…]/TOPIC[?spool=DIR]` (feature `kafka`; the topic
///   defaults to `image-history`, the spool directory to one under `spool.root`).
///
/// Several URLs separated by `|` give a [`FanoutSink`] over all of them.
pub async fn sink_from_url(url: &str, spool: &SpoolOptions) -> Result<Arc<dyn HistorySink>> {
    if url.contains('|') {
        let mut sinks = Vec::new();
        for part in url.split('|') {
            sinks.push(Box::pin(sink_from_url(part.trim(), spool)).await?);
        }
        return Ok(Arc::new(FanoutSink::new(sinks)));
    }
    let scheme = url.split(':').next().unwrap_or_default();
    match scheme {
        "sqlite" => open_sqlite(url).await,
        "mysql" | "mariadb" => open_mysql(url, spool).await,
        "kafka" => open_kafka(url, spool).await,
        _ => Err(HistoryError::InvalidUrl {
            url: url.to_owned(),
            reason: "expected sqlite:, mysql:// or kafka://".into(),
        }),
    }
}

#[cfg(feature = "sqlite")]
async fn open_sqlite(url: &str) -> Result<Arc<dyn HistorySink>> {
    Ok(Arc::new(crate::sqlite::SqliteSink::connect(url).await?))
}
#[cfg(not(feature = "sqlite"))]
async fn open_sqlite(_url: &str) -> Result<Arc<dyn HistorySink>> {
    Err(HistoryError::FeatureDisabled("sqlite"))
}

#[cfg(feature = "mysql")]
async fn open_mysql(url: &str, spool: &SpoolOptions) -> Result<Arc<dyn HistorySink>> {
    let url = url.replacen("mariadb://", "mysql://", 1);
    let parsed = url::Url::parse(&url).map_err(|e| HistoryError::InvalidUrl {
        url: url.clone(),
        reason: e.to_string(),
    })?;
    let destination = format!(
        "{}:{}{}",
        parsed.host_str().unwrap_or_default(),
        parsed.port().unwrap_or(3306),
        parsed.path()
    );
    let mut cfg = crate::outbox::OutboxConfig::new(spool.dir_for("mysql", &destination));
    cfg.max_bytes = spool.max_bytes;
    // The pool connects lazily, so a database that is down at start does not stop the
    // server: its events wait in the spool, and migrations run on the first delivery.
    let sink = crate::mysql::MySqlSink::connect_lazy(&url)?;
    Ok(Arc::new(crate::outbox::Outbox::open(sink, cfg).await?))
}
#[cfg(not(feature = "mysql"))]
async fn open_mysql(_url: &str, _spool: &SpoolOptions) -> Result<Arc<dyn HistorySink>> {
    Err(HistoryError::FeatureDisabled("mysql"))
}

#[cfg(feature = "kafka")]
async fn open_kafka(url: &str, spool: &SpoolOptions) -> Result<Arc<dyn HistorySink>> {
    let base = url.split('?').next().unwrap_or(url);
    let mut cfg = crate::kafka::KafkaSinkConfig::from_url(url, &spool.dir_for("kafka", base))?;
    cfg.spool_max_bytes = spool.max_bytes;
    Ok(Arc::new(crate::kafka::KafkaSink::new(cfg).await?))
}
#[cfg(not(feature = "kafka"))]
async fn open_kafka(_url: &str, _spool: &SpoolOptions) -> Result<Arc<dyn HistorySink>> {
    Err(HistoryError::FeatureDisabled("kafka"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A sink that keeps events in memory, optionally failing.
    struct Memory {
        events: Mutex<Vec<HistoryEvent>>,
        fail: bool,
    }

    #[async_trait]
    impl HistorySink for Memory {
        fn name(&self) -> &'static str {
            "memory"
        }
        async fn record(&self, event: &HistoryEvent) -> Result<()> {
            if self.fail {
                return Err(HistoryError::InvalidEvent("fail".into()));
            }
            self.events.lock().unwrap().push(event.clone());
            Ok(())
        }
    }

    #[tokio::test]
    async fn fanout_tries_all_and_reports_failures() {
        let ok = Arc::new(Memory {
            events: Mutex::default(),
            fail: false,
        });
        let bad = Arc::new(Memory {
            events: Mutex::default(),
            fail: true,
        });
        let f = FanoutSink::new(vec![bad.clone(), ok.clone()]);
        let ev = HistoryEvent::upload("u");
        match f.record(&ev).await {
            Err(HistoryError::Fanout { failed, total, .. }) => {
                assert_eq!((failed, total), (1, 2))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(ok.events.lock().unwrap().len(), 1);
        assert!(!f.can_query());
        assert!(matches!(
            f.query(&HistoryQuery::default()).await,
            Err(HistoryError::Unsupported { .. })
        ));
    }

    #[tokio::test]
    async fn bad_urls_are_rejected() {
        for u in ["", "postgres://x", "file:/tmp/x"] {
            assert!(matches!(
                sink_from_url(u, &SpoolOptions::new("/nonexistent")).await,
                Err(HistoryError::InvalidUrl { .. })
            ));
        }
    }

    #[test]
    fn limits_are_clamped() {
        let mut q = HistoryQuery::default();
        assert_eq!(q.effective_limit(), DEFAULT_LIMIT);
        q.limit = 0;
        assert_eq!(q.effective_limit(), DEFAULT_LIMIT);
        q.limit = 1_000_000;
        assert_eq!(q.effective_limit(), MAX_LIMIT);
    }
}
