//! `KafkaSink` (feature `kafka`): an idempotent `acks=all` producer with a durable spool.
//!
//! `record` sends the event keyed by `user_id` and waits for the broker's acknowledgement.
//! If the broker cannot be reached within `message_timeout`, the event is appended to the
//! spool (fsynced) instead, and from then on new events queue behind it in the spool until
//! a background task has sent every spooled event, in order. Either way `record` returns
//! `Ok` only once the event is durable: acknowledged by the broker, or on local disk.
//!
//! After any failed send the producer is replaced by a fresh one. An idempotent producer
//! whose messages timed out bumps its epoch or asks for a new producer id, and a broker that
//! restarted meanwhile may not know that state: tansu 0.6 on `sqlite://` storage even
//! panics its storage task on such a produce request. A fresh producer starts with a
//! clean `InitProducerId` against whatever broker comes back. Order is still kept: spooled
//! events are only sent by the drain task, one batch at a time.

pub mod spool;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use tokio::sync::{mpsc, oneshot, Notify};

use crate::error::{HistoryError, Result};
use crate::event::HistoryEvent;
use crate::sink::HistorySink;
pub use spool::{Spool, SpoolRecord};

/// The topic used when none is given.
pub const DEFAULT_TOPIC: &str = "image-history";

/// How to reach the broker and where to spool.
#[derive(Debug, Clone)]
pub struct KafkaSinkConfig {
    /// `host:port[,host:port…]`.
    pub brokers: String,
    /// Topic name (default [`DEFAULT_TOPIC`]).
    pub topic: String,
    /// Directory of the durable spool; one producer process per directory.
    pub spool_dir: PathBuf,
    /// How long a send may wait for the broker before the event is spooled instead.
    pub message_timeout: Duration,
    /// Partitions for the topic if the sink has to create it.
    pub partitions: i32,
    /// Extra librdkafka settings, applied last.
    pub extra: Vec<(String, String)>,
}

impl KafkaSinkConfig {
    /// Defaults for `brokers`: topic `image-history`, spool `./history-spool`, 5 s timeout.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            topic: DEFAULT_TOPIC.into(),
            spool_dir: PathBuf::from("history-spool"),
            message_timeout: Duration::from_secs(5),
            partitions: 3,
            extra: Vec::new(),
        }
    }

    /// Parses `kafka://BROKERS[/TOPIC][?spool=DIR&timeout_ms=N&partitions=N]`.
    pub fn from_url(url: &str) -> Result<Self> {
        let bad = |reason: &str| HistoryError::InvalidUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let rest = url
            .strip_prefix("kafka://")
            .ok_or_else(|| bad("expected kafka://"))?;
        let (rest, params) = rest.split_once('?').unwrap_or((rest, ""));
        let (brokers, topic) = rest.split_once('/').unwrap_or((rest, ""));
        if brokers.is_empty() {
            return Err(bad("no brokers"));
        }
        let mut cfg = Self::new(brokers);
        if !topic.is_empty() {
            if topic.contains('/') {
                return Err(bad("topic must not contain '/'"));
            }
            cfg.topic = topic.to_owned();
        }
        for (k, v) in url::form_urlencoded::parse(params.as_bytes()) {
            match &*k {
                "spool" => cfg.spool_dir = PathBuf::from(&*v),
                "timeout_ms" => {
                    cfg.message_timeout =
                        Duration::from_millis(v.parse().map_err(|_| bad("bad timeout_ms"))?)
                }
                "partitions" => cfg.partitions = v.parse().map_err(|_| bad("bad partitions"))?,
                other => return Err(bad(&format!("unknown parameter {other:?}"))),
            }
        }
        Ok(cfg)
    }
}

/// Creates the idempotent producer: `enable.idempotence=true`, `acks=all`.
pub fn create_producer(cfg: &KafkaSinkConfig) -> Result<FutureProducer> {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &cfg.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set(
            "message.timeout.ms",
            cfg.message_timeout.as_millis().max(1).to_string(),
        )
        .set("reconnect.backoff.ms", "50")
        .set("reconnect.backoff.max.ms", "1000")
        .set("socket.connection.setup.timeout.ms", "5000");
    for (k, v) in &cfg.extra {
        cc.set(k, v);
    }
    Ok(cc.create()?)
}

/// Creates `topic` if it does not exist yet (replication factor 1).
pub async fn ensure_topic(brokers: &str, topic: &str, partitions: i32) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let opts = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(10)));
    let topics = [NewTopic::new(topic, partitions, TopicReplication::Fixed(1))];
    let results = admin.create_topics(&topics, &opts).await?;
    for r in results {
        match r {
            Ok(_) => tracing::info!(topic, partitions, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => {
                tracing::warn!(topic = %t, %code, "create topic failed");
                return Err(KafkaError::AdminOp(code).into());
            }
        }
    }
    Ok(())
}

type Ack = oneshot::Sender<Result<()>>;

/// Whether retrying a failed send can never help (the event itself is unacceptable).
/// Everything else (timeouts, broker or network down, leader changes) is transient.
pub fn is_permanent(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::InvalidArgument
        )
    )
}

const REJECTED: &str = "spool.rejected";

struct Inner {
    /// Replaced when the broker rejects the producer's idempotence state (see `drain_task`).
    producer: RwLock<Arc<FutureProducer>>,
    config: KafkaSinkConfig,
    topic: String,
    message_timeout: Duration,
    spool: Arc<Mutex<Spool>>,
    /// True while the spool holds undelivered events; new events then queue behind them.
    spooling: AtomicBool,
    /// Wakes the drain task.
    wake: Notify,
    /// Group-commit queue for spool appends.
    append_tx: mpsc::Sender<(Vec<u8>, Ack)>,
}

impl Inner {
    fn producer(&self) -> Arc<FutureProducer> {
        self.producer
            .read()
            .expect("producer lock poisoned")
            .clone()
    }

    /// Replaces `failed` with a new producer (new producer id, sequences from zero), unless
    /// another task already did. See the module documentation for why.
    fn reset_producer_after(&self, failed: &Arc<FutureProducer>) {
        let mut guard = self.producer.write().expect("producer lock poisoned");
        if !Arc::ptr_eq(&guard, failed) {
            return;
        }
        match create_producer(&self.config) {
            Ok(p) => {
                let old = std::mem::replace(&mut *guard, Arc::new(p));
                drop(guard);
                tracing::debug!("replaced the Kafka producer after a failed send");
                // Dropping a producer purges its queue and waits briefly; not on a runtime thread.
                tokio::task::spawn_blocking(move || drop(old));
            }
            Err(e) => tracing::error!(error = %e, "could not create a new Kafka producer"),
        }
    }
}

/// See the module documentation.
pub struct KafkaSink {
    inner: Arc<Inner>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("topic", &self.inner.topic)
            .field("spooling", &self.inner.spooling.load(Ordering::Relaxed))
            .finish()
    }
}

#[derive(serde::Deserialize)]
struct KeyOnly<'a> {
    #[serde(borrow)]
    user_id: std::borrow::Cow<'a, str>,
}

impl KafkaSink {
    /// Opens the spool (replaying whatever an earlier process left there), creates the
    /// producer and, if the broker is reachable, the topic. Must run inside a Tokio runtime.
    pub async fn new(cfg: KafkaSinkConfig) -> Result<Self> {
        let dir = cfg.spool_dir.clone();
        let spool = tokio::task::spawn_blocking(move || Spool::open(dir))
            .await
            .expect("spool open task panicked")?;
        let pending = !spool.is_empty();
        if pending {
            tracing::info!(
                dir = %cfg.spool_dir.display(),
                bytes = spool.pending_bytes(),
                "replaying spooled history events"
            );
        }
        let producer = Arc::new(create_producer(&cfg)?);
        // Best effort, bounded: a broker that is down must not stop the sink from starting.
        let ensure = ensure_topic(&cfg.brokers, &cfg.topic, cfg.partitions);
        match tokio::time::timeout(cfg.message_timeout, ensure).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, topic = %cfg.topic, "could not ensure the topic exists")
            }
            Err(_) => {
                tracing::warn!(topic = %cfg.topic, "broker did not answer CreateTopics in time")
            }
        }
        let (append_tx, append_rx) = mpsc::channel(16_384);
        let inner = Arc::new(Inner {
            producer: RwLock::new(producer),
            config: cfg.clone(),
            topic: cfg.topic,
            message_timeout: cfg.message_timeout,
            spool: Arc::new(Mutex::new(spool)),
            spooling: AtomicBool::new(pending),
            wake: Notify::new(),
            append_tx,
        });
        let tasks = vec![
            tokio::spawn(append_task(inner.clone(), append_rx)),
            tokio::spawn(drain_task(inner.clone())),
        ];
        Ok(Self { inner, tasks })
    }

    /// Whether events are currently queued in the spool.
    pub fn is_spooling(&self) -> bool {
        self.inner.spooling.load(Ordering::SeqCst)
    }

    /// Waits up to `timeout` for the spool to drain and the producer queue to empty.
    pub async fn flush_timeout(&self, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if !self.is_spooling() && self.inner.producer().in_flight_count() == 0 {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(HistoryError::FlushTimeout(timeout));
            }
            self.inner.wake.notify_one();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn spool(&self, payload: Vec<u8>) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .append_tx
            .send((payload, tx))
            .await
            .map_err(|_| spool_gone())?;
        rx.await.map_err(|_| spool_gone())?
    }
}

fn spool_gone() -> HistoryError {
    HistoryError::io(
        "history-spool",
        std::io::Error::other("the spool task has stopped"),
    )
}

impl Drop for KafkaSink {
    fn drop(&mut self) {
        // Anything still spooled stays on disk and is replayed by the next KafkaSink.
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Appends queued payloads in batches with one fsync per batch (group commit).
async fn append_task(inner: Arc<Inner>, mut rx: mpsc::Receiver<(Vec<u8>, Ack)>) {
    let mut batch: Vec<(Vec<u8>, Ack)> = Vec::new();
    while rx.recv_many(&mut batch, 4096).await > 0 {
        let payloads: Vec<Vec<u8>> = batch.iter_mut().map(|(p, _)| std::mem::take(p)).collect();
        let spool = inner.spool.clone();
        let inner2 = inner.clone();
        let res = tokio::task::spawn_blocking(move || {
            let mut s = spool.lock().expect("spool lock poisoned");
            s.append(payloads.iter().map(Vec::as_slice))?;
            // Set while holding the lock so the drain task cannot miss these records.
            inner2.spooling.store(true, Ordering::SeqCst);
            Ok::<_, HistoryError>(payloads.len())
        })
        .await
        .unwrap_or_else(|e| Err(HistoryError::io("history-spool", std::io::Error::other(e))));
        match res {
            Ok(n) => {
                tracing::debug!(events = n, "spooled history events");
                inner.wake.notify_one();
                for (_, ack) in batch.drain(..) {
                    let _ = ack.send(Ok(()));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "could not append to the history spool");
                let msg = e.to_string();
                for (_, ack) in batch.drain(..) {
                    let _ = ack.send(Err(HistoryError::io(
                        "history-spool",
                        std::io::Error::other(msg.clone()),
                    )));
                }
            }
        }
    }
}

/// Sends spooled events in order, advancing the durable cursor after each acknowledged run.
async fn drain_task(inner: Arc<Inner>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if !inner.spooling.load(Ordering::SeqCst) {
            // Re-check periodically in case a wake-up raced with the flag.
            let _ = tokio::time::timeout(Duration::from_secs(1), inner.wake.notified()).await;
            continue;
        }
        match drain_once(&inner).await {
            Ok(None) => backoff = Duration::from_millis(100),
            Ok(Some(_)) => {
                tracing::debug!(?backoff, "broker still unreachable; spool retained");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                tracing::error!(error = %e, "history spool drain failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Sends one batch; `Ok(None)` if it all went through, else the first send error.
async fn drain_once(inner: &Arc<Inner>) -> Result<Option<KafkaError>> {
    let spool = inner.spool.clone();
    let records = tokio::task::spawn_blocking(move || {
        spool
            .lock()
            .expect("spool lock poisoned")
            .read_pending(1000)
    })
    .await
    .expect("spool read task panicked")?;
    if records.is_empty() {
        return Ok(None);
    }
    let producer = inner.producer();
    let sends = records.iter().map(|r| {
        let key = serde_json::from_slice::<KeyOnly<'_>>(&r.payload)
            .map(|k| k.user_id.into_owned())
            .unwrap_or_default();
        let producer = producer.clone();
        let topic = &inner.topic;
        async move {
            producer
                .send(
                    FutureRecord::to(topic).key(&key).payload(&r.payload),
                    Timeout::After(inner.message_timeout),
                )
                .await
                .map_err(|(e, _)| e)
        }
    });
    let results = futures::future::join_all(sends).await;
    // Advance over the settled prefix only, so order is kept; a later success after a
    // failure is sent again (a duplicate that consumers drop by event_id). Events the broker
    // refuses for good are settled too: they move to `spool.rejected` for an operator.
    let ok = results
        .iter()
        .take_while(|r| match r {
            Ok(_) => true,
            Err(e) => is_permanent(e),
        })
        .count();
    let first_error = match results.get(ok) {
        Some(Err(e)) => {
            tracing::warn!(error = %e, sent = ok, pending = records.len() - ok, "spool drain interrupted");
            inner.reset_producer_after(&producer);
            Some(e.clone())
        }
        _ => None,
    };
    let rejected: Vec<Vec<u8>> = records[..ok]
        .iter()
        .zip(&results)
        .filter(|(_, r)| r.is_err())
        .map(|(rec, _)| rec.payload.clone())
        .collect();
    if ok > 0 {
        let end = records[ok - 1].end;
        let spool = inner.spool.clone();
        let inner2 = inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut s = spool.lock().expect("spool lock poisoned");
            if !rejected.is_empty() {
                tracing::error!(
                    events = rejected.len(),
                    "broker refused spooled events for good; see {REJECTED}"
                );
                let path = s.dir().join(REJECTED);
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|e| HistoryError::io(&path, e))?;
                for p in &rejected {
                    std::io::Write::write_all(&mut f, p)
                        .and_then(|()| std::io::Write::write_all(&mut f, b"\n"))
                        .map_err(|e| HistoryError::io(&path, e))?;
                }
                f.sync_all().map_err(|e| HistoryError::io(&path, e))?;
            }
            s.advance(end)?;
            if s.is_empty() {
                inner2.spooling.store(false, Ordering::SeqCst);
                tracing::info!("history spool drained");
            }
            Ok::<_, HistoryError>(())
        })
        .await
        .expect("spool advance task panicked")?;
    }
    Ok(first_error)
}

#[async_trait]
impl HistorySink for KafkaSink {
    fn name(&self) -> &'static str {
        "kafka"
    }

    async fn record(&self, event: &HistoryEvent) -> Result<()> {
        event.validate()?;
        let payload = event.to_json()?;
        if self.is_spooling() {
            return self.spool(payload).await;
        }
        let producer = self.inner.producer();
        let res = producer
            .send(
                FutureRecord::to(&self.inner.topic)
                    .key(&event.user_id)
                    .payload(&payload),
                Timeout::After(self.inner.message_timeout),
            )
            .await;
        match res {
            Ok(_) => Ok(()),
            Err((e, _)) if is_permanent(&e) => Err(e.into()),
            Err((e, _)) => {
                tracing::warn!(error = %e, event_id = %event.event_id, "broker unavailable; spooling event");
                self.inner.reset_producer_after(&producer);
                self.spool(payload).await
            }
        }
    }

    async fn flush(&self) -> Result<()> {
        self.flush_timeout(Duration::from_secs(60)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parsing() {
        let c = KafkaSinkConfig::from_url("kafka://a:1,b:2/t?spool=/x/y&timeout_ms=250").unwrap();
        assert_eq!(c.brokers, "a:1,b:2");
        assert_eq!(c.topic, "t");
        assert_eq!(c.spool_dir, PathBuf::from("/x/y"));
        assert_eq!(c.message_timeout, Duration::from_millis(250));
        let c = KafkaSinkConfig::from_url("kafka://a:1").unwrap();
        assert_eq!(c.topic, DEFAULT_TOPIC);
        for bad in [
            "kafka://",
            "kafka:///t",
            "kafka://a/b/c",
            "kafka://a/t?x=1",
            "http://a",
        ] {
            assert!(KafkaSinkConfig::from_url(bad).is_err(), "{bad}");
        }
    }
}
