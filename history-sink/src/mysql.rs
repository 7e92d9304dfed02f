//! `MySqlSink` (feature `mysql`): sqlx MySQL/MariaDB, migrations in `migrations/mysql`.
//!
//! Also holds the batched statements the history service runs inside one transaction.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::{MySql, MySqlConnection, MySqlPool, QueryBuilder, Row};
use uuid::Uuid;

use crate::error::{HistoryError, Result};
use crate::event::HistoryEvent;
use crate::outbox::{Deliver, Delivery, SpoolRecord};
use crate::sink::{HistoryQuery, HistorySink};

/// The embedded migrations for MySQL (`history_events`, `history_dead_letters`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/mysql");

/// Most rows per multi-row `INSERT` (19 placeholders each, well under MySQL's 65,535).
pub const MAX_ROWS_PER_INSERT: usize = 1000;

/// History in MySQL or MariaDB. `record` is an idempotent upsert by `event_id`.
#[derive(Debug, Clone)]
pub struct MySqlSink {
    pool: MySqlPool,
    /// Set once the migrations have run; a lazily connected sink runs them on first use.
    migrated: Arc<tokio::sync::OnceCell<()>>,
}

/// Opens a pool for `mysql://…` (no migrations).
pub async fn connect_pool(url: &str, max_connections: u32) -> Result<MySqlPool> {
    let opts = MySqlConnectOptions::from_str(url)?;
    Ok(pool_options(max_connections).connect_with(opts).await?)
}

/// Connections a sink's pool opens at most.
const SINK_CONNECTIONS: u32 = 8;

fn pool_options(max_connections: u32) -> MySqlPoolOptions {
    MySqlPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
}

impl MySqlSink {
    /// Connects to `mysql://user:pass@host:port/db` and runs the migrations.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::from_pool(connect_pool(url, SINK_CONNECTIONS).await?).await
    }

    /// Wraps an existing pool and runs the migrations.
    pub async fn from_pool(pool: MySqlPool) -> Result<Self> {
        let sink = Self {
            pool,
            migrated: Arc::default(),
        };
        sink.migrate().await?;
        Ok(sink)
    }

    /// A sink for `mysql://…` that connects, and runs the migrations, on first use: the
    /// database may be down when it is created.
    pub fn connect_lazy(url: &str) -> Result<Self> {
        let pool =
            pool_options(SINK_CONNECTIONS).connect_lazy_with(MySqlConnectOptions::from_str(url)?);
        Ok(Self {
            pool,
            migrated: Arc::default(),
        })
    }

    async fn migrate(&self) -> Result<()> {
        self.migrated
            .get_or_try_init(|| async {
                MIGRATOR.run(&self.pool).await.map_err(HistoryError::from)
            })
            .await?;
        Ok(())
    }

    /// The connection pool.
    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }
}

/// Longest message key kept in `history_dead_letters.message_key`.
pub const MAX_DEAD_LETTER_KEY: usize = 1024;

/// An event decoded from a payload, with that payload kept as the row's `raw_json`.
#[derive(Debug, Clone)]
pub struct RawEvent {
    /// The decoded, validated event.
    pub event: HistoryEvent,
    /// The JSON it came from.
    pub raw: String,
}

/// A message that could not be stored as an event.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Kafka topic.
    pub topic: String,
    /// Kafka partition.
    pub partition: i32,
    /// Kafka offset.
    pub offset: i64,
    /// Message key, if any (at most [`MAX_DEAD_LETTER_KEY`] bytes are kept).
    pub key: Option<Vec<u8>>,
    /// Payload, if any.
    pub payload: Option<Vec<u8>>,
    /// Why it was refused.
    pub error: String,
}

/// Inserts validated events with multi-row inserts, idempotently; returns the number of new
/// rows. Rows already present (same `event_id`) are left untouched.
pub async fn upsert_events(conn: &mut MySqlConnection, events: &[RawEvent]) -> Result<u64> {
    let mut inserted = 0;
    for chunk in events.chunks(MAX_ROWS_PER_INSERT) {
        let mut qb: QueryBuilder<MySql> = QueryBuilder::new(
            "INSERT IGNORE INTO history_events (event_id, schema_version, kind, user_id, occurred_at, \
             original_uri, mask_uri, result_uri, width, height, hole_ratio, model_id, \
             model_version, strategy, device, latency_ms, status, error_message, raw_json, \
             parent_event_id) ",
        );
        qb.push_values(chunk, |mut b, RawEvent { event: ev, raw }| {
            b.push_bind(ev.event_id.as_bytes().to_vec())
                .push_bind(ev.schema_version)
                .push_bind(ev.kind.as_str())
                .push_bind(ev.user_id.clone())
                .push_bind(ev.occurred_at.naive_utc())
                .push_bind(ev.original_uri.clone())
                .push_bind(ev.mask_uri.clone())
                .push_bind(ev.result_uri.clone())
                .push_bind(ev.width)
                .push_bind(ev.height)
                .push_bind(ev.hole_ratio)
                .push_bind(ev.model_id.clone())
                .push_bind(ev.model_version.clone())
                .push_bind(ev.strategy.clone())
                .push_bind(ev.device.clone())
                .push_bind(ev.latency_ms)
                .push_bind(ev.status.as_str())
                .push_bind(ev.status.error_message().map(str::to_owned))
                .push_bind(raw.clone())
                .push_bind(ev.parent_event_id.map(|p| p.as_bytes().to_vec()));
        });
        // `IGNORE` makes a duplicate event_id a no-op (the first copy wins) and lets the
        // affected-row count be exactly the new rows (sqlx sets CLIENT_FOUND_ROWS, which
        // would count `ON DUPLICATE KEY UPDATE` no-ops too). It would also turn conversion
        // errors into warnings, which is why every event is validated first: lengths and
        // ranges all fit the columns.
        let res = qb.build().execute(&mut *conn).await?;
        inserted += res.rows_affected();
    }
    Ok(inserted)
}

/// Inserts dead letters, idempotent by (topic, partition, offset).
pub async fn insert_dead_letters(conn: &mut MySqlConnection, letters: &[DeadLetter]) -> Result<()> {
    for chunk in letters.chunks(MAX_ROWS_PER_INSERT) {
        let mut qb: QueryBuilder<MySql> = QueryBuilder::new(
            "INSERT INTO history_dead_letters (topic, kafka_partition, kafka_offset, message_key, \
             raw_payload, error) ",
        );
        qb.push_values(chunk, |mut b, d| {
            b.push_bind(d.topic.clone())
                .push_bind(d.partition)
                .push_bind(d.offset)
                .push_bind(
                    d.key
                        .as_ref()
                        .map(|k| k[..k.len().min(MAX_DEAD_LETTER_KEY)].to_vec()),
                )
                .push_bind(d.payload.clone())
                .push_bind(d.error.clone());
        });
        qb.push(" ON DUPLICATE KEY UPDATE id = id");
        qb.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// `raw_json` is `LONGTEXT` with a binary collation, which MySQL reports as a BLOB.
fn decode_row(r: &sqlx::mysql::MySqlRow) -> Result<HistoryEvent> {
    HistoryEvent::from_json(&r.try_get::<Vec<u8>, _>(0)?)
}

async fn select_event(pool: &MySqlPool, event_id: Uuid) -> Result<Option<HistoryEvent>> {
    let row = sqlx::query("SELECT raw_json FROM history_events WHERE event_id = ?")
        .bind(event_id.as_bytes().to_vec())
        .fetch_optional(pool)
        .await?;
    row.map(|r| decode_row(&r)).transpose()
}

async fn select_page(pool: &MySqlPool, q: &HistoryQuery) -> Result<Vec<HistoryEvent>> {
    let mut qb: QueryBuilder<MySql> =
        QueryBuilder::new("SELECT raw_json FROM history_events WHERE 1 = 1");
    if let Some(user) = &q.user_id {
        qb.push(" AND user_id = ").push_bind(user.clone());
    }
    if let Some(since) = q.since {
        qb.push(" AND occurred_at >= ").push_bind(since.naive_utc());
    }
    if let Some(until) = q.until {
        qb.push(" AND occurred_at < ").push_bind(until.naive_utc());
    }
    if let Some(kind) = q.kind {
        qb.push(" AND kind = ").push_bind(kind.as_str());
    }
    if let Some(cursor) = q.before {
        let c = select_event(pool, cursor)
            .await?
            .ok_or(HistoryError::UnknownCursor(cursor))?;
        let at = c.occurred_at.naive_utc();
        qb.push(" AND (occurred_at < ")
            .push_bind(at)
            .push(" OR (occurred_at = ")
            .push_bind(at)
            .push(" AND event_id < ")
            .push_bind(cursor.as_bytes().to_vec())
            .push("))");
    }
    qb.push(" ORDER BY occurred_at DESC, event_id DESC LIMIT ")
        .push_bind(q.effective_limit());
    let rows = qb.build().fetch_all(pool).await?;
    rows.iter().map(decode_row).collect()
}

#[async_trait]
impl HistorySink for MySqlSink {
    fn name(&self) -> &'static str {
        "mysql"
    }

    async fn record(&self, event: &HistoryEvent) -> Result<()> {
        event.validate()?;
        self.migrate().await?;
        let raw = String::from_utf8(event.to_json()?).expect("serde_json writes UTF-8");
        let mut conn = self.pool.acquire().await?;
        upsert_events(
            &mut conn,
            &[RawEvent {
                event: event.clone(),
                raw,
            }],
        )
        .await?;
        Ok(())
    }

    async fn query(&self, q: &HistoryQuery) -> Result<Vec<HistoryEvent>> {
        self.migrate().await?;
        select_page(&self.pool, q).await
    }

    async fn delete_user(&self, user_id: &str) -> Result<u64> {
        self.migrate().await?;
        let done = sqlx::query("DELETE FROM history_events WHERE user_id = ?")
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn get(&self, event_id: Uuid) -> Result<Option<HistoryEvent>> {
        self.migrate().await?;
        select_event(&self.pool, event_id).await
    }

    fn can_query(&self) -> bool {
        true
    }
}

/// Whether MySQL refused the data itself, so that retrying can never help: SQLSTATE
/// classes 22 (data exception) and 23 (integrity), and the value errors MySQL reports as
/// `HY000`. Everything else (unreachable, read-only during a failover, deadlocks, lock
/// waits, a full table) is transient, and the events wait.
pub fn is_rejection(e: &HistoryError) -> bool {
    let HistoryError::Database(sqlx::Error::Database(db)) = e else {
        return false;
    };
    if db
        .code()
        .is_some_and(|c| c.starts_with("22") || c.starts_with("23"))
    {
        return true;
    }
    // ER_TRUNCATED_WRONG_VALUE_FOR_FIELD, ER_TRUNCATED_WRONG_VALUE, ER_WARN_DATA_OUT_OF_RANGE,
    // ER_DATA_TOO_LONG, ER_BAD_NULL_ERROR.
    db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
        .is_some_and(|m| matches!(m.number(), 1366 | 1292 | 1264 | 1406 | 1048))
}

fn decode_record(r: &SpoolRecord) -> Result<RawEvent> {
    let raw = std::str::from_utf8(&r.payload)
        .map_err(|e| HistoryError::InvalidEvent(format!("spooled event is not UTF-8: {e}")))?;
    Ok(RawEvent {
        event: HistoryEvent::from_json(&r.payload)?,
        raw: raw.to_owned(),
    })
}

async fn insert_all(pool: &MySqlPool, events: &[RawEvent]) -> Result<()> {
    let mut tx = pool.begin().await?;
    upsert_events(&mut tx, events).await?;
    tx.commit().await?;
    Ok(())
}

/// The outbox's MySQL target: the spooled events of a batch go in one transaction. The
/// server's `mysql://` history is this behind an [`Outbox`](crate::outbox::Outbox), so a
/// database outage costs the requests nothing.
#[async_trait]
impl Deliver for MySqlSink {
    fn name(&self) -> &'static str {
        "mysql"
    }

    async fn deliver(&self, records: &[SpoolRecord]) -> Delivery {
        if let Err(e) = self.migrate().await {
            return Delivery::failed(e);
        }
        // Events were validated before they were spooled; one that no longer decodes (a
        // hand-edited spool) is kept aside rather than blocking the rest.
        let decoded: Vec<Result<RawEvent>> = records.iter().map(decode_record).collect();
        let events: Vec<RawEvent> = decoded
            .iter()
            .filter_map(|d| d.as_ref().ok().cloned())
            .collect();
        let undecodable: Vec<usize> = (0..records.len())
            .filter(|&i| decoded[i].is_err())
            .collect();
        match insert_all(&self.pool, &events).await {
            Ok(()) => Delivery {
                settled: records.len(),
                rejected: undecodable,
                error: None,
            },
            Err(e) if is_rejection(&e) => self.deliver_one_by_one(records, &decoded).await,
            Err(e) => Delivery::failed(e),
        }
    }

    fn reader(&self) -> Option<&dyn HistorySink> {
        Some(self)
    }
}

impl MySqlSink {
    /// After MySQL refused a whole batch: each event alone, so that one it refuses for good
    /// is set aside instead of stalling the spool.
    async fn deliver_one_by_one(
        &self,
        records: &[SpoolRecord],
        decoded: &[Result<RawEvent>],
    ) -> Delivery {
        let mut done = Delivery::default();
        for (i, d) in decoded.iter().enumerate() {
            match d {
                Err(_) => done.rejected.push(i),
                Ok(ev) => match insert_all(&self.pool, std::slice::from_ref(ev)).await {
                    Ok(()) => {}
                    Err(e) if is_rejection(&e) => {
                        tracing::error!(event_id = %ev.event.event_id, error = %e, "MySQL refuses this event");
                        done.rejected.push(i);
                    }
                    Err(e) => {
                        done.error = Some(e);
                        return done;
                    }
                },
            }
            done.settled = i + 1;
        }
        debug_assert_eq!(done.settled, records.len());
        done
    }
}
