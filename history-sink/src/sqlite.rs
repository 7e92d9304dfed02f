//! `SqliteSink`: the embedded default (sqlx SQLite, WAL, migrations in `migrations/sqlite`).

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};
use uuid::Uuid;

use crate::error::{HistoryError, Result};
use crate::event::HistoryEvent;
use crate::sink::{HistoryQuery, HistorySink};

/// The embedded migrations for SQLite.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

const INSERT: &str = "INSERT INTO history_events (event_id, schema_version, kind, user_id, \
    occurred_at, original_uri, mask_uri, result_uri, width, height, hole_ratio, model_id, \
    model_version, strategy, device, latency_ms, status, error_message, raw_json, \
    parent_event_id) \
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
    ON CONFLICT (event_id) DO NOTHING";

/// History in a SQLite file (WAL journal, `synchronous=FULL`, so `record` is durable).
#[derive(Debug, Clone)]
pub struct SqliteSink {
    pool: SqlitePool,
}

impl SqliteSink {
    /// Opens (creating if missing) `sqlite:PATH`, `sqlite://PATH` or `sqlite::memory:`,
    /// and runs the migrations.
    pub async fn connect(url: &str) -> Result<Self> {
        let opts = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10));
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let mut pool = SqlitePoolOptions::new().max_connections(if in_memory { 1 } else { 4 });
        if in_memory {
            // An in-memory database lives only as long as a connection does.
            pool = pool
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None);
        }
        let pool = pool.connect_with(opts).await?;
        Self::from_pool(pool).await
    }

    /// Wraps an existing pool and runs the migrations.
    pub async fn from_pool(pool: SqlitePool) -> Result<Self> {
        MIGRATOR.run(&pool).await?;
        Ok(Self { pool })
    }

    /// The connection pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

async fn insert_event(pool: &SqlitePool, ev: &HistoryEvent, raw: &str) -> Result<u64> {
    let res = sqlx::query(INSERT)
        .bind(ev.event_id.hyphenated().to_string())
        .bind(i64::from(ev.schema_version))
        .bind(ev.kind.as_str())
        .bind(&ev.user_id)
        .bind(ev.occurred_at_ms())
        .bind(&ev.original_uri)
        .bind(&ev.mask_uri)
        .bind(&ev.result_uri)
        .bind(ev.width.map(i64::from))
        .bind(ev.height.map(i64::from))
        .bind(ev.hole_ratio)
        .bind(&ev.model_id)
        .bind(&ev.model_version)
        .bind(&ev.strategy)
        .bind(&ev.device)
        .bind(ev.latency_ms.map(|l| l as i64))
        .bind(ev.status.as_str())
        .bind(ev.status.error_message())
        .bind(raw)
        .bind(ev.parent_event_id.map(|p| p.hyphenated().to_string()))
        .execute(pool)
        .await?;
    Ok(res.rows_affected())
}

fn decode_row(r: &sqlx::sqlite::SqliteRow) -> Result<HistoryEvent> {
    HistoryEvent::from_json(r.try_get::<&str, _>(0)?.as_bytes())
}

async fn select_event(pool: &SqlitePool, event_id: Uuid) -> Result<Option<HistoryEvent>> {
    let row = sqlx::query("SELECT raw_json FROM history_events WHERE event_id = ?")
        .bind(event_id.hyphenated().to_string())
        .fetch_optional(pool)
        .await?;
    row.map(|r| decode_row(&r)).transpose()
}

async fn select_page(pool: &SqlitePool, q: &HistoryQuery) -> Result<Vec<HistoryEvent>> {
    let mut qb: QueryBuilder<Sqlite> =
        QueryBuilder::new("SELECT raw_json FROM history_events WHERE 1 = 1");
    if let Some(user) = &q.user_id {
        qb.push(" AND user_id = ").push_bind(user.clone());
    }
    if let Some(since) = q.since {
        qb.push(" AND occurred_at >= ")
            .push_bind(since.timestamp_millis());
    }
    if let Some(until) = q.until {
        qb.push(" AND occurred_at < ")
            .push_bind(until.timestamp_millis());
    }
    if let Some(kind) = q.kind {
        qb.push(" AND kind = ").push_bind(kind.as_str());
    }
    if let Some(cursor) = q.before {
        let c = select_event(pool, cursor)
            .await?
            .ok_or(HistoryError::UnknownCursor(cursor))?;
        let at = c.occurred_at_ms();
        qb.push(" AND (occurred_at < ")
            .push_bind(at)
            .push(" OR (occurred_at = ")
            .push_bind(at)
            .push(" AND event_id < ")
            .push_bind(cursor.hyphenated().to_string())
            .push("))");
    }
    qb.push(" ORDER BY occurred_at DESC, event_id DESC LIMIT ")
        .push_bind(i64::from(q.effective_limit()));
    let rows = qb.build().fetch_all(pool).await?;
    rows.iter().map(decode_row).collect()
}

#[async_trait]
impl HistorySink for SqliteSink {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    async fn record(&self, event: &HistoryEvent) -> Result<()> {
        event.validate()?;
        let raw = String::from_utf8(event.to_json()?).expect("serde_json writes UTF-8");
        insert_event(&self.pool, event, &raw).await?;
        Ok(())
    }

    async fn query(&self, q: &HistoryQuery) -> Result<Vec<HistoryEvent>> {
        select_page(&self.pool, q).await
    }

    async fn get(&self, event_id: Uuid) -> Result<Option<HistoryEvent>> {
        select_event(&self.pool, event_id).await
    }

    fn can_query(&self) -> bool {
        true
    }

    async fn delete_user(&self, user_id: &str) -> Result<u64> {
        let done = sqlx::query("DELETE FROM history_events WHERE user_id = ?")
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{from_ms, EventKind};

    async fn sink() -> (tempfile::TempDir, SqliteSink) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("h.db").display());
        (dir, SqliteSink::connect(&url).await.unwrap())
    }

    #[tokio::test]
    async fn record_is_idempotent_and_round_trips() {
        let (_d, s) = sink().await;
        let ev = HistoryEvent::inpaint("alice")
            .with_dimensions(10, 20)
            .with_hole_ratio(0.1)
            .with_error("bad");
        s.record(&ev).await.unwrap();
        s.record(&ev).await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM history_events")
            .fetch_one(s.pool())
            .await
            .unwrap();
        assert_eq!(n, 1);
        assert_eq!(s.get(ev.event_id).await.unwrap(), Some(ev));
        assert_eq!(s.get(Uuid::now_v7()).await.unwrap(), None);
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(s.pool())
            .await
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[tokio::test]
    async fn invalid_events_are_refused() {
        let (_d, s) = sink().await;
        let ev = HistoryEvent::upload("");
        assert!(matches!(
            s.record(&ev).await,
            Err(HistoryError::InvalidEvent(_))
        ));
    }

    #[tokio::test]
    async fn delete_user_removes_that_users_events_only() {
        let (_d, s) = sink().await;
        for user in ["a", "a", "b", "a' OR '1'='1"] {
            s.record(&HistoryEvent::new(EventKind::Inpaint, user))
                .await
                .unwrap();
        }
        assert_eq!(s.delete_user("a").await.unwrap(), 2);
        assert!(s
            .query(&HistoryQuery::for_user("a"))
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            s.query(&HistoryQuery::for_user("b")).await.unwrap().len(),
            1
        );
        assert_eq!(
            s.delete_user("a' OR '1'='1").await.unwrap(),
            1,
            "bound, not spliced"
        );
        assert_eq!(s.delete_user("nobody").await.unwrap(), 0);
    }

    #[tokio::test]
    async fn query_filters_and_pages() {
        let (_d, s) = sink().await;
        let base = 1_700_000_000_000;
        let mut all = Vec::new();
        for i in 0..25 {
            let kind = if i % 5 == 0 {
                EventKind::Upload
            } else {
                EventKind::Inpaint
            };
            let user = if i % 2 == 0 { "a" } else { "b" };
            // Pairs share a timestamp so the event_id tie-break is exercised.
            let ev = HistoryEvent::new(kind, user).with_occurred_at(from_ms(base + (i / 2) * 1000));
            s.record(&ev).await.unwrap();
            all.push(ev);
        }
        // Newest first, paged by cursor, no gaps or repeats.
        let mut seen = Vec::new();
        let mut q = HistoryQuery {
            limit: 7,
            ..HistoryQuery::default()
        };
        loop {
            let page = s.query(&q).await.unwrap();
            if page.is_empty() {
                break;
            }
            q.before = Some(page.last().unwrap().event_id);
            seen.extend(page);
        }
        let mut expected = all.clone();
        expected.sort_by_key(|e| std::cmp::Reverse((e.occurred_at, e.event_id)));
        assert_eq!(seen, expected);

        let a = s.query(&HistoryQuery::for_user("a")).await.unwrap();
        assert_eq!(a.len(), 13);
        assert!(a.iter().all(|e| e.user_id == "a"));

        let uploads = s
            .query(&HistoryQuery {
                kind: Some(EventKind::Upload),
                ..HistoryQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(uploads.len(), 5);

        let window = s
            .query(&HistoryQuery {
                since: Some(from_ms(base + 2000)),
                until: Some(from_ms(base + 4000)),
                ..HistoryQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(window.len(), 4);

        assert!(matches!(
            s.query(&HistoryQuery {
                before: Some(Uuid::now_v7()),
                ..HistoryQuery::default()
            })
            .await,
            Err(HistoryError::UnknownCursor(_))
        ));
    }

    #[tokio::test]
    async fn memory_url_and_factory_work() {
        let spool = crate::SpoolOptions::new("/nonexistent");
        let s = crate::sink_from_url("sqlite::memory:", &spool)
            .await
            .unwrap();
        let ev = HistoryEvent::upload("u");
        s.record(&ev).await.unwrap();
        assert!(s.can_query());
        assert_eq!(s.get(ev.event_id).await.unwrap(), Some(ev));
    }

    #[tokio::test]
    async fn data_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("h.db").display());
        let ev = HistoryEvent::upload("u");
        {
            let s = SqliteSink::connect(&url).await.unwrap();
            s.record(&ev).await.unwrap();
            s.pool().close().await;
        }
        let s = SqliteSink::connect(&url).await.unwrap();
        assert_eq!(s.get(ev.event_id).await.unwrap(), Some(ev));
    }
}
