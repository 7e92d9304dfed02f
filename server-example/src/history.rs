//! Recording history events from request handlers and jobs, and reporting the sinks' health.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use history_sink::{HistoryEvent, HistorySink, SpoolStats};

use crate::metrics::Metrics;

/// How long a caller waits for its event to be durable. Remote sinks only append to a local
/// spool (milliseconds), so this bounds a stalled disk, not an outage; the event is recorded
/// in a task of its own, so giving up waiting never loses it.
const DURABLE_WAIT: Duration = Duration::from_secs(5);

/// Records `event` without letting the sink fail or slow the caller for long: the user has
/// their result, and the event is kept even if the caller goes away meanwhile.
pub async fn record(sink: &Arc<dyn HistorySink>, event: HistoryEvent, metrics: &Arc<Metrics>) {
    let event_id = event.event_id;
    let (sink, task_metrics) = (sink.clone(), metrics.clone());
    let task = tokio::spawn(async move {
        let res = sink.record(&event).await;
        if let Err(e) = &res {
            task_metrics
                .history_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%event_id, "recording history failed: {e}");
        }
        res
    });
    if tokio::time::timeout(DURABLE_WAIT, task).await.is_err() {
        tracing::warn!(%event_id, "recording history is slow; answering without waiting for it");
    }
}

/// The `history` part of `/readyz`: per spooling sink, whether events are being delivered or
/// are waiting in the spool for the destination to come back. A destination outage does
/// not make the server unready, since the spool covers it.
pub fn readiness(stats: &[SpoolStats]) -> serde_json::Value {
    let now = chrono::Utc::now();
    let sinks: Vec<serde_json::Value> = stats
        .iter()
        .map(|s| {
            let age = s.oldest_age_seconds(now);
            let (status, message) = match &s.last_error {
                None => ("delivering", None),
                Some(e) => (
                    "spooling",
                    Some(format!(
                        "{} is unreachable ({e}); events are kept in the local spool and \
                         delivered when it is back",
                        s.sink
                    )),
                ),
            };
            serde_json::json!({
                "sink": s.sink,
                "status": status,
                "message": message,
                "pending_events": s.pending_events,
                "pending_bytes": s.pending_bytes,
                "max_bytes": s.max_bytes,
                "oldest_pending_age_seconds": age,
                "dropped": s.dropped,
            })
        })
        .collect();
    serde_json::json!({ "sinks": sinks })
}
