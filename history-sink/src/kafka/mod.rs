//! `KafkaSink` (feature `kafka`): an [`Outbox`] in front of an idempotent `acks=all` producer.
//!
//! `record` appends the event to the local spool (fsynced, group-committed) and returns; it
//! never waits for the broker. The outbox's delivery task sends spooled events in order,
//! keyed by `user_id`, and advances past each batch the broker acknowledged. While the
//! broker is down, events stay on disk (up to the spool's bound) and requests are not
//! slowed; when it returns, the backlog goes out in order.
//!
//! After any failed send the producer is replaced by a fresh one. An idempotent producer
//! whose messages timed out bumps its epoch or asks for a new producer id, and a broker that
//! restarted meanwhile may not know that state: tansu 0.6 on `sqlite://` storage even
//! panics its storage task on such a produce request. A fresh producer starts with a
//! clean `InitProducerId` against whatever broker comes back. Order is still kept: events
//! are only sent by the delivery task, one batch at a time.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::error::{HistoryError, Result};
use crate::event::HistoryEvent;
use crate::outbox::{Deliver, Delivery, Outbox, OutboxConfig, SpoolRecord, DEFAULT_MAX_BYTES};
use crate::sink::{HistorySink, SpoolStats};
use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

/// The topic used when none is given.
pub const DEFAULT_TOPIC: &str = "image-history";

/// How to reach the broker and where to spool.
#[derive(Debug, Clone)]
pub struct KafkaSinkConfig {
    /// `host:port[,host:port…]`.
    pub brokers: String,
    /// Topic name (default [`DEFAULT_TOPIC`]).
    pub topic: String,
    /// Directory of the durable spool; one process per directory (it is locked).
    pub spool_dir: PathBuf,
    /// Most undelivered bytes the spool holds; further events are dropped and counted.
    pub spool_max_bytes: u64,
    /// How long one send may wait for the broker before the batch is retried.
    pub message_timeout: Duration,
    /// Partitions for the topic if the sink has to create it.
    pub partitions: i32,
    /// Extra librdkafka settings, applied last.
    pub extra: Vec<(String, String)>,
}

impl KafkaSinkConfig {
    /// Defaults for `brokers` with the spool in `spool_dir`: topic `image-history`, a 1 GiB
    /// spool, 5 s send timeout.
    pub fn new(brokers: impl Into<String>, spool_dir: impl Into<PathBuf>) -> Self {
        Self {
            brokers: brokers.into(),
            topic: DEFAULT_TOPIC.into(),
            spool_dir: spool_dir.into(),
            spool_max_bytes: DEFAULT_MAX_BYTES,
            message_timeout: Duration::from_secs(5),
            partitions: 3,
            extra: Vec::new(),
        }
    }

    /// Parses `kafka://BROKERS[/TOPIC][?spool=DIR&timeout_ms=N&partitions=N]`; without
    /// `spool=`, the spool is `spool_dir`.
    pub fn from_url(url: &str, spool_dir: &Path) -> Result<Self> {
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
        let mut cfg = Self::new(brokers, spool_dir);
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

/// Whether retrying a failed send can never help (the event itself is unacceptable).
/// Everything else (timeouts, broker or network down, leader changes, and authorisation,
/// which an operator fixes) is transient: the events stay spooled.
pub fn is_permanent(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::InvalidArgument
        )
    )
}

/// The outbox's delivery target: sends batches to the topic with an idempotent producer.
pub struct KafkaDelivery {
    /// Replaced after a failed send (see the module documentation).
    producer: RwLock<Arc<FutureProducer>>,
    config: KafkaSinkConfig,
}

#[derive(serde::Deserialize)]
struct KeyOnly<'a> {
    #[serde(borrow)]
    user_id: std::borrow::Cow<'a, str>,
}

impl KafkaDelivery {
    /// A producer for `config`; nothing is sent yet.
    pub fn new(config: KafkaSinkConfig) -> Result<Self> {
        Ok(Self {
            producer: RwLock::new(Arc::new(create_producer(&config)?)),
            config,
        })
    }

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

#[async_trait]
impl Deliver for KafkaDelivery {
    fn name(&self) -> &'static str {
        "kafka"
    }

    async fn deliver(&self, records: &[SpoolRecord]) -> Delivery {
        let producer = self.producer();
        let sends = records.iter().map(|r| {
            let key = serde_json::from_slice::<KeyOnly<'_>>(&r.payload)
                .map(|k| k.user_id.into_owned())
                .unwrap_or_default();
            let producer = producer.clone();
            async move {
                producer
                    .send(
                        FutureRecord::to(&self.config.topic)
                            .key(&key)
                            .payload(&r.payload),
                        Timeout::After(self.config.message_timeout),
                    )
                    .await
                    .map_err(|(e, _)| e)
            }
        });
        let results = futures::future::join_all(sends).await;
        // Settle the acknowledged prefix only, so order is kept; a later success after a
        // failure is sent again (a duplicate that consumers drop by event_id). Events the
        // broker refuses for good are settled too, and kept aside for an operator.
        let settled = results
            .iter()
            .take_while(|r| r.as_ref().map_or_else(is_permanent, |_| true))
            .count();
        let rejected = (0..settled).filter(|&i| results[i].is_err()).collect();
        let error = match results.get(settled) {
            Some(Err(e)) => {
                self.reset_producer_after(&producer);
                Some(HistoryError::Kafka(e.clone()))
            }
            _ => None,
        };
        Delivery {
            settled,
            rejected,
            error,
        }
    }
}

/// The Kafka history sink: see the module documentation.
#[derive(Debug)]
pub struct KafkaSink {
    outbox: Outbox<KafkaDelivery>,
}

impl KafkaSink {
    /// Opens (and locks) the spool, replaying whatever an earlier process left there,
    /// creates the producer and, if the broker answers in time, the topic. Must run inside
    /// a Tokio runtime.
    pub async fn new(cfg: KafkaSinkConfig) -> Result<Self> {
        let mut outbox = OutboxConfig::new(&cfg.spool_dir);
        outbox.max_bytes = cfg.spool_max_bytes;
        let delivery = KafkaDelivery::new(cfg.clone())?;
        let outbox = Outbox::open(delivery, outbox).await?;
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
        Ok(Self { outbox })
    }

    /// Events spooled but not yet acknowledged by the broker.
    pub fn pending_events(&self) -> u64 {
        self.outbox.pending_events()
    }

    /// Waits up to `timeout` until every event recorded so far is acknowledged by the broker.
    pub async fn flush_timeout(&self, timeout: Duration) -> Result<()> {
        self.outbox.flush_timeout(timeout).await
    }
}

#[async_trait]
impl HistorySink for KafkaSink {
    fn name(&self) -> &'static str {
        "kafka"
    }

    async fn record(&self, event: &HistoryEvent) -> Result<()> {
        self.outbox.record(event).await
    }

    async fn flush(&self) -> Result<()> {
        self.outbox.flush().await
    }

    fn spool_stats(&self) -> Vec<SpoolStats> {
        self.outbox.spool_stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parsing() {
        let d = Path::new("/data/spool");
        let c =
            KafkaSinkConfig::from_url("kafka://a:1,b:2/t?spool=/x/y&timeout_ms=250", d).unwrap();
        assert_eq!(c.brokers, "a:1,b:2");
        assert_eq!(c.topic, "t");
        assert_eq!(c.spool_dir, PathBuf::from("/x/y"));
        assert_eq!(c.message_timeout, Duration::from_millis(250));
        let c = KafkaSinkConfig::from_url("kafka://a:1", d).unwrap();
        assert_eq!(c.topic, DEFAULT_TOPIC);
        assert_eq!(c.spool_dir, d);
        for bad in [
            "kafka://",
            "kafka:///t",
            "kafka://a/b/c",
            "kafka://a/t?x=1",
            "http://a",
        ] {
            assert!(KafkaSinkConfig::from_url(bad, d).is_err(), "{bad}");
        }
    }
}
