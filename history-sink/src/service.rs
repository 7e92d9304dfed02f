//! The history service (features `kafka` + `mysql`): a Kafka consumer group into MySQL.
//!
//! Delivery is at-least-once and rows are effectively exactly-once:
//!
//! 1. a batch of messages is read (up to `batch_size`, or whatever arrived within
//!    `batch_linger` of the first);
//! 2. valid events are upserted by `event_id` and malformed messages go to
//!    `history_dead_letters` (idempotent by topic/partition/offset), all in one transaction,
//!    retried with exponential backoff while MySQL is unavailable;
//! 3. only after that transaction commits are the batch's offsets committed to Kafka.
//!
//! A crash anywhere re-delivers at most the uncommitted batch, and the upserts make the
//! replay a no-op.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use sqlx::MySqlPool;

use crate::error::{HistoryError, Result};
use crate::event::HistoryEvent;
use crate::mysql::{
    insert_dead_letters, is_rejection, upsert_events, DeadLetter, RawEvent, MIGRATOR,
};

/// Settings of the history service.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// `host:port[,…]`.
    pub brokers: String,
    /// Topic to consume.
    pub topic: String,
    /// Consumer group id.
    pub group: String,
    /// `mysql://…`.
    pub mysql_url: String,
    /// Most messages per transaction.
    pub batch_size: usize,
    /// How long to wait for more messages after the first of a batch.
    pub batch_linger: Duration,
    /// First retry delay while MySQL is failing (doubles up to `retry_max`).
    pub retry_initial: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Partitions if the service has to create the topic.
    pub partitions: i32,
}

impl ServiceConfig {
    /// Defaults: batches of 1000 within 50 ms, retries from 100 ms up to 5 s.
    pub fn new(
        brokers: impl Into<String>,
        topic: impl Into<String>,
        group: impl Into<String>,
        mysql_url: impl Into<String>,
    ) -> Self {
        Self {
            brokers: brokers.into(),
            topic: topic.into(),
            group: group.into(),
            mysql_url: mysql_url.into(),
            batch_size: 1000,
            batch_linger: Duration::from_millis(50),
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(5),
            partitions: 3,
        }
    }
}

/// Running totals, readable while the service runs.
#[derive(Debug, Default)]
pub struct ServiceStats {
    /// Messages read from Kafka (including redeliveries).
    pub messages: AtomicU64,
    /// New rows in `history_events`.
    pub inserted: AtomicU64,
    /// Valid events that were already stored (redeliveries, duplicates).
    pub duplicates: AtomicU64,
    /// Messages sent to `history_dead_letters`.
    pub dead_letters: AtomicU64,
    /// Committed database transactions.
    pub batches: AtomicU64,
    /// Failed database attempts (each retried).
    pub db_retries: AtomicU64,
    /// Failed offset commits (the batch will be redelivered and deduplicated).
    pub commit_failures: AtomicU64,
}

/// Logs rebalances and commits.
pub struct LoggingConsumerContext;

impl ClientContext for LoggingConsumerContext {}

impl ConsumerContext for LoggingConsumerContext {
    fn post_rebalance(
        &self,
        _consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &Rebalance<'_>,
    ) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::info!(partitions = tpl.count(), "partitions assigned")
            }
            Rebalance::Revoke(tpl) => {
                tracing::info!(partitions = tpl.count(), "partitions revoked")
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => tracing::debug!(partitions = offsets.count(), "offsets committed"),
            Err(e) => tracing::warn!(error = %e, "offset commit failed"),
        }
    }
}

/// The consumer type the service uses.
pub type LoggingConsumer = StreamConsumer<LoggingConsumerContext>;

/// Creates the consumer: manual commits only, starting at the earliest offset.
pub fn create_consumer(cfg: &ServiceConfig) -> Result<LoggingConsumer> {
    let consumer: LoggingConsumer = ClientConfig::new()
        .set("bootstrap.servers", &cfg.brokers)
        .set("group.id", &cfg.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("session.timeout.ms", "10000")
        .set("reconnect.backoff.ms", "50")
        .set("reconnect.backoff.max.ms", "1000")
        .create_with_context(LoggingConsumerContext)?;
    Ok(consumer)
}

/// Connects to MySQL and migrates, retrying with backoff until it works or `shutdown` fires.
async fn connect_mysql(
    cfg: &ServiceConfig,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> Result<Option<MySqlPool>> {
    let mut delay = cfg.retry_initial;
    loop {
        let attempt = async {
            let pool = crate::mysql::connect_pool(&cfg.mysql_url, 4).await?;
            MIGRATOR.run(&pool).await?;
            Ok::<_, HistoryError>(pool)
        };
        match attempt.await {
            Ok(pool) => return Ok(Some(pool)),
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?delay, "MySQL not ready");
                tokio::select! {
                    () = &mut *shutdown => return Ok(None),
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(cfg.retry_max);
            }
        }
    }
}

/// One batch, decoded.
#[derive(Default)]
struct Batch {
    events: Vec<RawEvent>,
    /// (topic, partition, offset) of each entry of `events`.
    positions: Vec<(String, i32, i64)>,
    dead: Vec<DeadLetter>,
    /// Next offset to commit, per (topic, partition).
    next: HashMap<(String, i32), i64>,
    messages: usize,
}

impl Batch {
    fn push(&mut self, m: &BorrowedMessage<'_>) {
        self.messages += 1;
        let pos = (m.topic().to_owned(), m.partition());
        let next = self.next.entry(pos).or_insert(0);
        *next = (*next).max(m.offset() + 1);
        let decoded = match m.payload() {
            None => Err("empty payload".to_owned()),
            Some(p) => std::str::from_utf8(p)
                .map_err(|e| format!("payload is not UTF-8: {e}"))
                .and_then(|s| {
                    HistoryEvent::from_json(p)
                        .map(|event| RawEvent {
                            event,
                            raw: s.to_owned(),
                        })
                        .map_err(|e| e.to_string())
                }),
        };
        match decoded {
            Ok(ev) => {
                self.events.push(ev);
                self.positions
                    .push((m.topic().to_owned(), m.partition(), m.offset()));
            }
            Err(error) => {
                tracing::warn!(
                    topic = m.topic(), partition = m.partition(), offset = m.offset(), %error,
                    "malformed history message; dead-lettering it"
                );
                self.dead.push(DeadLetter {
                    topic: m.topic().to_owned(),
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().map(<[u8]>::to_vec),
                    error,
                });
            }
        }
    }

    fn offsets(&self) -> KafkaResult<TopicPartitionList> {
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), next) in &self.next {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*next))?;
        }
        Ok(tpl)
    }
}

/// After repeated rejections of a whole batch: tries each event alone (rolled back), and
/// turns the ones MySQL refuses into dead letters, so one poison event cannot stall the
/// partition. Connection errors still propagate (and are retried by the caller).
async fn isolate_rejected(pool: &MySqlPool, batch: &mut Batch) -> Result<()> {
    let events = std::mem::take(&mut batch.events);
    let positions = std::mem::take(&mut batch.positions);
    for (ev, (topic, partition, offset)) in events.into_iter().zip(positions) {
        let mut tx = pool.begin().await?;
        let res = upsert_events(&mut tx, std::slice::from_ref(&ev)).await;
        tx.rollback().await?;
        match res {
            Ok(_) => {
                batch.events.push(ev);
                batch.positions.push((topic, partition, offset));
            }
            Err(e) if is_rejection(&e) => {
                tracing::error!(%topic, partition, offset, error = %e, "MySQL refuses this event; dead-lettering it");
                batch.dead.push(DeadLetter {
                    topic,
                    partition,
                    offset,
                    key: Some(ev.event.user_id.into_bytes()),
                    payload: Some(ev.raw.into_bytes()),
                    error: format!("rejected by MySQL: {e}"),
                });
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Pauses fetching on every assigned partition while MySQL is down; returns what to resume.
fn pause_fetching(consumer: &LoggingConsumer) -> Option<TopicPartitionList> {
    let tpl = consumer
        .assignment()
        .map_err(|e| tracing::warn!(error = %e, "cannot read the assignment to pause it"))
        .ok()?;
    match consumer.pause(&tpl) {
        Ok(()) => {
            tracing::info!(
                partitions = tpl.count(),
                "paused fetching until MySQL is back"
            );
            Some(tpl)
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not pause fetching");
            None
        }
    }
}

/// Writes a batch in one transaction; returns the number of new rows.
async fn write_batch(pool: &MySqlPool, batch: &Batch) -> Result<u64> {
    let mut tx = pool.begin().await?;
    let inserted = upsert_events(&mut tx, &batch.events).await?;
    insert_dead_letters(&mut tx, &batch.dead).await?;
    tx.commit().await?;
    Ok(inserted)
}

/// Runs the service until `shutdown` completes. On shutdown the batch in hand is finished
/// (if MySQL is reachable) and its offsets committed before returning.
pub async fn run(
    cfg: ServiceConfig,
    stats: Arc<ServiceStats>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let mut shutdown = std::pin::pin!(shutdown);
    tracing::info!(brokers = %cfg.brokers, topic = %cfg.topic, group = %cfg.group, "history service starting");
    let Some(pool) = connect_mysql(&cfg, &mut shutdown).await? else {
        return Ok(());
    };
    if let Err(e) = crate::kafka::ensure_topic(&cfg.brokers, &cfg.topic, cfg.partitions).await {
        tracing::warn!(error = %e, "could not ensure the topic exists; subscribing anyway");
    }
    let consumer = create_consumer(&cfg)?;
    consumer.subscribe(&[&cfg.topic])?;
    tracing::info!("history service consuming");

    let mut last_log = Instant::now();
    let mut logged_inserted = 0;
    'outer: loop {
        // Wait for the first message of a batch, or shutdown.
        let first = tokio::select! {
            biased;
            () = &mut shutdown => break 'outer,
            m = consumer.recv() => m,
        };
        let mut batch = Batch::default();
        let consumer_error = match first {
            Ok(m) => {
                batch.push(&m);
                None
            }
            Err(e) => Some(e),
        };
        if let Some(e) = consumer_error {
            tracing::warn!(error = %e, "kafka consumer error");
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let deadline = tokio::time::Instant::now() + cfg.batch_linger;
        while batch.messages < cfg.batch_size {
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Ok(Ok(m)) => batch.push(&m),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "kafka consumer error");
                    break;
                }
                Err(_) => break,
            }
        }
        stats
            .messages
            .fetch_add(batch.messages as u64, Ordering::Relaxed);

        // Store the batch, retrying until MySQL takes it.
        let mut delay = cfg.retry_initial;
        let mut attempt = 0u32;
        let mut rejections = 0u32;
        let mut paused: Option<TopicPartitionList> = None;
        let inserted = loop {
            attempt += 1;
            if rejections >= 3 {
                rejections = 0;
                if let Err(e) = isolate_rejected(&pool, &mut batch).await {
                    tracing::warn!(error = %e, "could not isolate rejected events");
                }
            }
            match write_batch(&pool, &batch).await {
                Ok(n) => break n,
                Err(e) => {
                    if is_rejection(&e) {
                        rejections += 1;
                    }
                    stats.db_retries.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, attempt, retry_in = ?delay, "MySQL write failed; retrying");
                    if paused.is_none() {
                        paused = pause_fetching(&consumer);
                    }
                    // Keep polling while waiting: a consumer that stops polling for
                    // max.poll.interval.ms is dropped from its group, and the outage would
                    // become a rebalance. The partitions are paused, so a message that was
                    // already fetched joins the batch instead of being lost.
                    let sleep = tokio::time::sleep(delay);
                    tokio::pin!(sleep);
                    loop {
                        tokio::select! {
                            biased;
                            // Offsets stay uncommitted, so the batch is redelivered after restart.
                            () = &mut shutdown => break 'outer,
                            () = &mut sleep => break,
                            m = consumer.recv() => match m {
                                Ok(m) => batch.push(&m),
                                Err(e) => tracing::debug!(error = %e, "kafka consumer error while paused"),
                            },
                        }
                    }
                    delay = (delay * 2).min(cfg.retry_max);
                }
            }
        };
        if attempt > 1 {
            tracing::info!(attempts = attempt, "MySQL write succeeded after retries");
        }
        if let Some(tpl) = paused.take() {
            if let Err(e) = consumer.resume(&tpl) {
                tracing::warn!(error = %e, "could not resume the paused partitions");
            }
        }
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats.inserted.fetch_add(inserted, Ordering::Relaxed);
        stats.duplicates.fetch_add(
            batch.events.len() as u64 - inserted.min(batch.events.len() as u64),
            Ordering::Relaxed,
        );
        stats
            .dead_letters
            .fetch_add(batch.dead.len() as u64, Ordering::Relaxed);

        // Only now that the rows are committed, commit the offsets.
        let commit = batch
            .offsets()
            .and_then(|tpl| consumer.commit(&tpl, CommitMode::Sync));
        if let Err(e) = commit {
            stats.commit_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "offset commit failed; the batch may be redelivered (deduplicated)");
        }

        if last_log.elapsed() >= Duration::from_secs(10) {
            let total = stats.inserted.load(Ordering::Relaxed);
            tracing::info!(
                inserted_total = total,
                rows_per_s = (total - logged_inserted) as f64 / last_log.elapsed().as_secs_f64(),
                dead_letters = stats.dead_letters.load(Ordering::Relaxed),
                duplicates = stats.duplicates.load(Ordering::Relaxed),
                "history service progress"
            );
            logged_inserted = total;
            last_log = Instant::now();
        }
    }
    tracing::info!(
        inserted = stats.inserted.load(Ordering::Relaxed),
        dead_letters = stats.dead_letters.load(Ordering::Relaxed),
        "history service stopping"
    );
    consumer.unsubscribe();
    pool.close().await;
    Ok(())
}
