//! Durable first, then sent: the outbox in front of every remote sink.
//!
//! [`Outbox::record`] appends the event to a local [`Spool`] (fsynced, group-committed: one
//! fsync for whatever arrived meanwhile) and returns; it never waits for the broker or the
//! database. A background task reads the spool in order and hands batches to a [`Deliver`]
//! target (Kafka, MySQL), advancing the spool's cursor over whatever the target settled.
//! While the target is down, events accumulate on disk, up to `max_bytes`; when it returns,
//! they are delivered in order.
//!
//! **Cancellation.** The first poll of `record` validates the event and hands it to the
//! append task, before any `.await`. A caller that times out or is cancelled after that
//! drops only its wait for the acknowledgement: the event still reaches the spool.
//!
//! **Full spool.** An event that would take the spool past `max_bytes` is refused with
//! [`HistoryError::SpoolFull`] and counted in [`SpoolStats::dropped`]; requests are never
//! blocked by a full disk budget.
//!
//! Delivery is at least once: a crash between a delivery and the cursor update delivers
//! those records again, and every consumer upserts by `event_id`.

pub mod spool;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use uuid::Uuid;

use crate::error::{HistoryError, Result};
use crate::event::HistoryEvent;
use crate::sink::{HistoryQuery, HistorySink, SpoolStats};
pub use spool::{Spool, SpoolRecord, DEFAULT_SEGMENT_BYTES};

/// Default bound of a spool: 1 GiB of undelivered events (about two million).
pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;

/// The file, next to the segments, that keeps events a target refused for good.
pub const REJECTED_FILE: &str = "rejected.jsonl";

/// How long a query waits for this process's recorded events to reach the database, so
/// that a user sees their own result in their history.
const READ_YOUR_WRITES: Duration = Duration::from_secs(2);

/// How long a delete waits for the spool to drain before giving up (the destination is
/// down: the user should retry, rather than have deleted events come back).
const DELETE_FLUSH: Duration = Duration::from_secs(10);

/// Where an outbox keeps its spool and how large it may grow.
#[derive(Debug, Clone)]
pub struct OutboxConfig {
    /// The spool directory; one process at a time (it is locked).
    pub dir: PathBuf,
    /// Most undelivered bytes the spool holds; further events are dropped and counted.
    pub max_bytes: u64,
    /// Size at which the spool starts a new segment (see [`Spool`]).
    pub segment_bytes: u64,
    /// Most records handed to the target at once.
    pub batch: usize,
    /// First delay after a failed delivery (doubles up to `retry_max`).
    pub retry_initial: Duration,
    /// Longest delay between delivery attempts.
    pub retry_max: Duration,
}

impl OutboxConfig {
    /// Defaults for a spool in `dir`: 1 GiB, 4 MiB segments, batches of 1000, retries from
    /// 100 ms up to 2 s.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            max_bytes: DEFAULT_MAX_BYTES,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            batch: 1000,
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(2),
        }
    }
}

/// What a [`Deliver`] target did with a batch.
#[derive(Debug, Default)]
pub struct Delivery {
    /// Length of the prefix of the batch that is settled: delivered, or refused for good.
    /// The outbox advances past it; the rest is offered again, in order.
    pub settled: usize,
    /// Indices (below `settled`) of records the target refused for good; they are kept in
    /// [`REJECTED_FILE`] for an operator.
    pub rejected: Vec<usize>,
    /// Why the rest of the batch was not settled (the target is unreachable, say).
    pub error: Option<HistoryError>,
}

impl Delivery {
    /// The whole batch of `n` went through.
    pub fn all(n: usize) -> Self {
        Self {
            settled: n,
            ..Self::default()
        }
    }

    /// None of the batch went through, because of `error`.
    pub fn failed(error: HistoryError) -> Self {
        Self {
            error: Some(error),
            ..Self::default()
        }
    }
}

/// A remote destination for spooled events.
#[async_trait]
pub trait Deliver: Send + Sync + 'static {
    /// A short name for logs and metrics.
    fn name(&self) -> &'static str;

    /// Delivers `records` (JSON events, oldest first) and says how far it got. Must be
    /// idempotent by `event_id`: records may be offered again after a crash.
    async fn deliver(&self, records: &[SpoolRecord]) -> Delivery;

    /// The sink that answers history queries for this target, if it can.
    fn reader(&self) -> Option<&dyn HistorySink> {
        None
    }
}

type Ack = oneshot::Sender<Result<()>>;

struct Shared<D> {
    target: D,
    spool: Arc<Mutex<Spool>>,
    max_bytes: u64,
    /// Bytes handed to the append task and not yet written.
    queued_bytes: AtomicU64,
    pending_bytes: AtomicU64,
    pending_events: AtomicU64,
    delivered: AtomicU64,
    failures: AtomicU64,
    dropped: AtomicU64,
    last_error: Mutex<Option<String>>,
    oldest: Mutex<Option<DateTime<Utc>>>,
    /// Spool position just past the last appended record.
    appended: watch::Sender<u64>,
    /// Spool position up to which records are settled.
    settled: watch::Sender<u64>,
    /// Wakes the delivery task when something was appended.
    wake: Notify,
}

impl<D> Shared<D> {
    /// Copies the spool's pending figures for the bound and the metrics; called with the
    /// spool locked.
    fn publish(&self, spool: &Spool) {
        self.pending_bytes
            .store(spool.pending_bytes(), Ordering::SeqCst);
        self.pending_events
            .store(spool.pending_records(), Ordering::SeqCst);
    }
}

/// A [`HistorySink`] that spools every event locally and delivers it to `D` in the
/// background. See the module documentation.
pub struct Outbox<D: Deliver> {
    shared: Arc<Shared<D>>,
    append_tx: mpsc::UnboundedSender<(Vec<u8>, Ack)>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl<D: Deliver> std::fmt::Debug for Outbox<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("target", &self.shared.target.name())
            .field("pending", &self.pending_events())
            .finish()
    }
}

impl<D: Deliver> Outbox<D> {
    /// Opens (and locks) the spool, replaying whatever an earlier process left there, and
    /// starts delivering to `target`. Must run inside a Tokio runtime.
    pub async fn open(target: D, cfg: OutboxConfig) -> Result<Self> {
        let spool = open_spool(&cfg).await?;
        if !spool.is_empty() {
            tracing::info!(
                dir = %cfg.dir.display(),
                events = spool.pending_records(),
                bytes = spool.pending_bytes(),
                sink = target.name(),
                "delivering history events spooled by an earlier run"
            );
        }
        let position = spool.pending_bytes();
        let shared = Arc::new(Shared {
            target,
            pending_bytes: AtomicU64::new(spool.pending_bytes()),
            pending_events: AtomicU64::new(spool.pending_records()),
            spool: Arc::new(Mutex::new(spool)),
            max_bytes: cfg.max_bytes,
            queued_bytes: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            last_error: Mutex::new(None),
            oldest: Mutex::new(None),
            // Positions relative to this process's start: only differences matter.
            appended: watch::Sender::new(position),
            settled: watch::Sender::new(0),
            wake: Notify::new(),
        });
        let (append_tx, append_rx) = mpsc::unbounded_channel();
        let tasks = vec![
            tokio::spawn(append_task(shared.clone(), append_rx)),
            tokio::spawn(deliver_task(shared.clone(), cfg)),
        ];
        Ok(Self {
            shared,
            append_tx,
            tasks,
        })
    }

    /// Events on disk that the target has not taken yet.
    pub fn pending_events(&self) -> u64 {
        self.shared.pending_events.load(Ordering::SeqCst)
    }

    /// Waits up to `timeout` until every event recorded so far has been delivered.
    pub async fn flush_timeout(&self, timeout: Duration) -> Result<()> {
        let wait = async {
            // Events still in the append queue are not in `appended` yet.
            while self.shared.queued_bytes.load(Ordering::SeqCst) > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let position = *self.shared.appended.borrow();
            self.wait_settled(position).await;
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| HistoryError::FlushTimeout(timeout))
    }

    async fn wait_settled(&self, position: u64) {
        let mut rx = self.shared.settled.subscribe();
        let _ = rx.wait_for(|p| *p >= position).await;
    }

    /// Waits briefly for events recorded before this call to reach the target, so that a
    /// query sees them; answers anyway after [`READ_YOUR_WRITES`].
    async fn catch_up(&self) {
        let position = *self.shared.appended.borrow();
        let _ = tokio::time::timeout(READ_YOUR_WRITES, self.wait_settled(position)).await;
    }

    fn reader(&self, operation: &'static str) -> Result<&dyn HistorySink> {
        self.shared
            .target
            .reader()
            .ok_or(HistoryError::Unsupported {
                operation,
                sink: self.shared.target.name(),
            })
    }
}

impl<D: Deliver> Drop for Outbox<D> {
    fn drop(&mut self) {
        // Whatever is still spooled stays on disk for the next process.
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[async_trait]
impl<D: Deliver> HistorySink for Outbox<D> {
    fn name(&self) -> &'static str {
        self.shared.target.name()
    }

    /// Durable when it returns `Ok`: the event is fsynced in the spool.
    async fn record(&self, event: &HistoryEvent) -> Result<()> {
        event.validate()?;
        let payload = event.to_json()?;
        let len = payload.len() as u64 + 1;
        let s = &self.shared;
        let queued = s.queued_bytes.fetch_add(len, Ordering::SeqCst);
        if s.pending_bytes.load(Ordering::SeqCst) + queued + len > s.max_bytes {
            s.queued_bytes.fetch_sub(len, Ordering::SeqCst);
            let dropped = s.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::error!(
                event_id = %event.event_id,
                sink = s.target.name(),
                max_bytes = s.max_bytes,
                dropped_total = dropped,
                "history spool is full; dropping the event"
            );
            return Err(HistoryError::SpoolFull {
                sink: s.target.name(),
                max_bytes: s.max_bytes,
            });
        }
        let (tx, rx) = oneshot::channel();
        if self.append_tx.send((payload, tx)).is_err() {
            s.queued_bytes.fetch_sub(len, Ordering::SeqCst);
            return Err(spool_gone());
        }
        // From here on the event is the append task's: dropping this future loses nothing.
        rx.await.map_err(|_| spool_gone())?
    }

    async fn query(&self, q: &HistoryQuery) -> Result<Vec<HistoryEvent>> {
        let reader = self.reader("query")?;
        self.catch_up().await;
        reader.query(q).await
    }

    async fn get(&self, event_id: Uuid) -> Result<Option<HistoryEvent>> {
        let reader = self.reader("get")?;
        self.catch_up().await;
        reader.get(event_id).await
    }

    fn can_query(&self) -> bool {
        self.shared.target.reader().is_some()
    }

    /// Delivers what is spooled first: an event of the user's still on its way would
    /// otherwise arrive after the delete and bring part of the history back.
    async fn delete_user(&self, user_id: &str) -> Result<u64> {
        let reader = self.reader("delete")?;
        self.flush_timeout(DELETE_FLUSH).await?;
        reader.delete_user(user_id).await
    }

    async fn flush(&self) -> Result<()> {
        self.flush_timeout(Duration::from_secs(60)).await
    }

    fn spool_stats(&self) -> Vec<SpoolStats> {
        let s = &self.shared;
        vec![SpoolStats {
            sink: s.target.name(),
            pending_events: s.pending_events.load(Ordering::SeqCst),
            pending_bytes: s.pending_bytes.load(Ordering::SeqCst),
            max_bytes: s.max_bytes,
            oldest_pending: *s.oldest.lock().expect("stats lock poisoned"),
            delivered: s.delivered.load(Ordering::Relaxed),
            delivery_failures: s.failures.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            last_error: s.last_error.lock().expect("stats lock poisoned").clone(),
        }]
    }
}

/// Opens the spool, waiting up to a second for the lock: an outbox of this process that
/// was just dropped lets go of it once its tasks have stopped. Another process's lock
/// stays, and is reported.
async fn open_spool(cfg: &OutboxConfig) -> Result<Spool> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    loop {
        let (dir, segment_bytes) = (cfg.dir.clone(), cfg.segment_bytes);
        let res = tokio::task::spawn_blocking(move || Spool::open_with(dir, segment_bytes))
            .await
            .expect("spool open task panicked");
        match res {
            Err(HistoryError::SpoolLocked(_)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            res => return res,
        }
    }
}

fn spool_gone() -> HistoryError {
    HistoryError::io(
        "history-spool",
        std::io::Error::other("the spool task has stopped"),
    )
}

/// Appends queued payloads in batches with one fsync per batch (group commit).
async fn append_task<D: Deliver>(
    shared: Arc<Shared<D>>,
    mut rx: mpsc::UnboundedReceiver<(Vec<u8>, Ack)>,
) {
    let mut batch: Vec<(Vec<u8>, Ack)> = Vec::new();
    while rx.recv_many(&mut batch, 4096).await > 0 {
        let payloads: Vec<Vec<u8>> = batch.iter_mut().map(|(p, _)| std::mem::take(p)).collect();
        let bytes: u64 = payloads.iter().map(|p| p.len() as u64 + 1).sum();
        let sh = shared.clone();
        let res = tokio::task::spawn_blocking(move || {
            let mut s = sh.spool.lock().expect("spool lock poisoned");
            s.append(payloads.iter().map(Vec::as_slice))?;
            // Under the lock, so that the delivery task cannot store an older figure last.
            sh.publish(&s);
            Ok::<_, HistoryError>(())
        })
        .await
        .unwrap_or_else(|e| Err(HistoryError::io("history-spool", std::io::Error::other(e))));
        match res {
            Ok(()) => {
                // Appended before the queue's share is released: a flush that sees the queue
                // empty also sees these bytes to wait for, and the bound never dips.
                shared.appended.send_modify(|p| *p += bytes);
                shared.queued_bytes.fetch_sub(bytes, Ordering::SeqCst);
                shared.wake.notify_one();
                for (_, ack) in batch.drain(..) {
                    let _ = ack.send(Ok(()));
                }
            }
            Err(e) => {
                shared.queued_bytes.fetch_sub(bytes, Ordering::SeqCst);
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

/// The part of an event the outbox reads to report the age of the oldest pending one.
#[derive(serde::Deserialize)]
struct OccurredAt {
    occurred_at: DateTime<Utc>,
}

/// Delivers the spool in order, forever.
async fn deliver_task<D: Deliver>(shared: Arc<Shared<D>>, cfg: OutboxConfig) {
    let mut backoff = cfg.retry_initial;
    loop {
        let spool = shared.spool.clone();
        let batch = cfg.batch.max(1);
        let records = tokio::task::spawn_blocking(move || {
            spool
                .lock()
                .expect("spool lock poisoned")
                .read_pending(batch)
        })
        .await
        .expect("spool read task panicked");
        let records = match records {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the history spool");
                tokio::time::sleep(cfg.retry_max).await;
                continue;
            }
        };
        if records.is_empty() {
            *shared.oldest.lock().expect("stats lock poisoned") = None;
            // Re-check now and then in case a wake-up raced with the read.
            let _ = tokio::time::timeout(Duration::from_secs(1), shared.wake.notified()).await;
            continue;
        }
        *shared.oldest.lock().expect("stats lock poisoned") =
            serde_json::from_slice::<OccurredAt>(&records[0].payload)
                .ok()
                .map(|o| o.occurred_at);

        let delivery = shared.target.deliver(&records).await;
        let settled = delivery.settled.min(records.len());
        if settled > 0 {
            let rejected: Vec<Vec<u8>> = delivery
                .rejected
                .iter()
                .filter(|&&i| i < settled)
                .map(|&i| records[i].payload.clone())
                .collect();
            let delivered = (settled - rejected.len()) as u64;
            // Bytes from the first record's start to the last settled one's end.
            let advanced =
                records[settled - 1].end - records[0].end + records[0].payload.len() as u64 + 1;
            let mut done = records;
            done.truncate(settled);
            let sh = shared.clone();
            let res = tokio::task::spawn_blocking(move || {
                let mut s = sh.spool.lock().expect("spool lock poisoned");
                if !rejected.is_empty() {
                    keep_rejected(s.dir(), &rejected)?;
                }
                s.advance(&done)?;
                sh.publish(&s);
                Ok::<_, HistoryError>(())
            })
            .await
            .expect("spool advance task panicked");
            match res {
                Ok(()) => {
                    shared.delivered.fetch_add(delivered, Ordering::Relaxed);
                    shared.settled.send_modify(|p| *p += advanced);
                }
                Err(e) => {
                    // The records went out but the cursor did not move: they go again.
                    tracing::error!(error = %e, "cannot advance the history spool");
                    tokio::time::sleep(cfg.retry_max).await;
                    continue;
                }
            }
        }
        match delivery.error {
            None => {
                if backoff != cfg.retry_initial {
                    tracing::info!(sink = shared.target.name(), "history delivery resumed");
                }
                backoff = cfg.retry_initial;
                *shared.last_error.lock().expect("stats lock poisoned") = None;
            }
            Some(e) => {
                shared.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    sink = shared.target.name(),
                    error = %e,
                    pending = shared.pending_events.load(Ordering::SeqCst),
                    retry_in = ?backoff,
                    "history delivery failed; events stay spooled"
                );
                *shared.last_error.lock().expect("stats lock poisoned") = Some(e.to_string());
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(cfg.retry_max);
            }
        }
    }
}

/// Appends payloads the target refused for good to [`REJECTED_FILE`], fsynced.
fn keep_rejected(dir: &std::path::Path, payloads: &[Vec<u8>]) -> Result<()> {
    let path = dir.join(REJECTED_FILE);
    tracing::error!(
        events = payloads.len(),
        path = %path.display(),
        "the target refused history events for good; keeping them aside"
    );
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| HistoryError::io(&path, e))?;
    for p in payloads {
        std::io::Write::write_all(&mut f, p)
            .and_then(|()| std::io::Write::write_all(&mut f, b"\n"))
            .map_err(|e| HistoryError::io(&path, e))?;
    }
    f.sync_all().map_err(|e| HistoryError::io(&path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::sync::atomic::AtomicBool;

    /// A target that keeps what it is given, and refuses everything while `down`.
    #[derive(Default)]
    struct Target {
        down: AtomicBool,
        got: Mutex<Vec<Uuid>>,
    }

    impl Target {
        /// A target whose destination is down until the test brings it up.
        fn down() -> Arc<Self> {
            let t = Arc::new(Self::default());
            t.down.store(true, Ordering::SeqCst);
            t
        }
    }

    #[async_trait]
    impl Deliver for Arc<Target> {
        fn name(&self) -> &'static str {
            "test"
        }
        async fn deliver(&self, records: &[SpoolRecord]) -> Delivery {
            if self.down.load(Ordering::SeqCst) {
                return Delivery::failed(HistoryError::InvalidEvent("down".into()));
            }
            let mut got = self.got.lock().unwrap();
            for r in records {
                got.push(HistoryEvent::from_json(&r.payload).unwrap().event_id);
            }
            Delivery::all(records.len())
        }
    }

    fn config(dir: &std::path::Path) -> OutboxConfig {
        let mut c = OutboxConfig::new(dir);
        c.retry_max = Duration::from_millis(50);
        c
    }

    #[tokio::test]
    async fn events_wait_on_disk_while_the_target_is_down_and_go_in_order() {
        let d = tempfile::tempdir().unwrap();
        let target = Target::down();
        let outbox = Outbox::open(target.clone(), config(d.path()))
            .await
            .unwrap();
        let mut sent = Vec::new();
        for _ in 0..50 {
            let ev = HistoryEvent::upload("u");
            outbox.record(&ev).await.unwrap();
            sent.push(ev.event_id);
        }
        assert_eq!(outbox.pending_events(), 50);
        assert!(outbox
            .flush_timeout(Duration::from_millis(200))
            .await
            .is_err());
        let stats = &outbox.spool_stats()[0];
        assert!(stats.delivery_failures > 0);
        assert!(stats.last_error.as_deref().unwrap().contains("down"));
        assert!(stats.oldest_pending.is_some());
        target.down.store(false, Ordering::SeqCst);
        outbox.flush_timeout(Duration::from_secs(10)).await.unwrap();
        assert_eq!(*target.got.lock().unwrap(), sent);
        let stats = &outbox.spool_stats()[0];
        assert_eq!((stats.pending_events, stats.delivered), (0, 50));
        assert_eq!(stats.last_error, None);
    }

    #[tokio::test]
    async fn a_cancelled_record_still_reaches_the_spool() {
        let d = tempfile::tempdir().unwrap();
        let target = Target::down();
        let outbox = Outbox::open(target.clone(), config(d.path()))
            .await
            .unwrap();
        let ev = HistoryEvent::upload("u");
        {
            // Polled once, then dropped: a caller's timeout firing at the worst moment.
            let mut fut = std::pin::pin!(outbox.record(&ev));
            let waker = futures::task::noop_waker();
            let mut cx = std::task::Context::from_waker(&waker);
            let _ = fut.as_mut().poll(&mut cx);
        }
        target.down.store(false, Ordering::SeqCst);
        outbox.flush_timeout(Duration::from_secs(10)).await.unwrap();
        assert_eq!(*target.got.lock().unwrap(), vec![ev.event_id]);
    }

    #[tokio::test]
    async fn a_full_spool_drops_and_counts_without_waiting() {
        let d = tempfile::tempdir().unwrap();
        let target = Target::down();
        let mut cfg = config(d.path());
        cfg.max_bytes = 2_000;
        let outbox = Outbox::open(target.clone(), cfg).await.unwrap();
        let (mut kept, mut dropped) = (0, 0);
        for _ in 0..40 {
            match outbox.record(&HistoryEvent::upload("u")).await {
                Ok(()) => kept += 1,
                Err(HistoryError::SpoolFull { max_bytes, .. }) => {
                    assert_eq!(max_bytes, 2_000);
                    dropped += 1
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(kept > 0 && dropped > 0, "kept {kept}, dropped {dropped}");
        let stats = &outbox.spool_stats()[0];
        assert_eq!(stats.dropped, dropped);
        assert_eq!(stats.pending_events, kept);
        assert!(stats.pending_bytes <= 2_000);
        // Once delivered, the room is back.
        target.down.store(false, Ordering::SeqCst);
        outbox.flush_timeout(Duration::from_secs(10)).await.unwrap();
        outbox.record(&HistoryEvent::upload("u")).await.unwrap();
    }

    #[tokio::test]
    async fn a_new_process_delivers_what_the_old_one_spooled() {
        let d = tempfile::tempdir().unwrap();
        let target = Target::down();
        let ev = HistoryEvent::upload("u");
        {
            let outbox = Outbox::open(target.clone(), config(d.path()))
                .await
                .unwrap();
            outbox.record(&ev).await.unwrap();
            // The spool is locked while its process lives.
            assert!(matches!(
                Outbox::open(target.clone(), config(d.path())).await,
                Err(HistoryError::SpoolLocked(_))
            ));
        }
        target.down.store(false, Ordering::SeqCst);
        let outbox = Outbox::open(target.clone(), config(d.path()))
            .await
            .unwrap();
        assert_eq!(outbox.pending_events(), 1);
        outbox.flush_timeout(Duration::from_secs(10)).await.unwrap();
        assert_eq!(*target.got.lock().unwrap(), vec![ev.event_id]);
    }
}
