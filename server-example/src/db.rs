//! The server's own SQL database: the fine-tune job queue and the image owner index, in
//! SQLite or MySQL, migrated with history-sink's migrations (one migration set, so that jobs,
//! owners and history can share one database and its one `_sqlx_migrations` table).

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

/// A pool on SQLite or MySQL. Queries that read the same in both dialects run through
/// [`on_db!`]; the others match on the variant.
#[derive(Debug, Clone)]
pub(crate) enum Db {
    Sqlite(SqlitePool),
    #[cfg(feature = "mysql")]
    MySql(sqlx::MySqlPool),
}

/// Runs `$body` with `$pool` bound to whichever pool `$db` holds: one text, compiled once
/// per backend.
macro_rules! on_db {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::db::Db::Sqlite($pool) => $body,
            #[cfg(feature = "mysql")]
            $crate::db::Db::MySql($pool) => $body,
        }
    };
}
pub(crate) use on_db;

impl Db {
    /// Opens `sqlite:PATH` (created if missing) or `mysql://…` (feature `mysql`), and runs
    /// the migrations.
    pub(crate) async fn open(url: &str) -> Result<Self, String> {
        if let Some(path) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            let opts = SqliteConnectOptions::from_str(&format!("sqlite:{path}"))
                .map_err(|e| e.to_string())?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(10));
            let pool = SqlitePoolOptions::new()
                .max_connections(4)
                .connect_with(opts)
                .await
                .map_err(|e| e.to_string())?;
            history_sink::sqlite::MIGRATOR
                .run(&pool)
                .await
                .map_err(|e| e.to_string())?;
            return Ok(Self::Sqlite(pool));
        }
        if url.starts_with("mysql://") {
            #[cfg(feature = "mysql")]
            {
                let pool = history_sink::mysql::connect_pool(url, 8)
                    .await
                    .map_err(|e| e.to_string())?;
                history_sink::mysql::MIGRATOR
                    .run(&pool)
                    .await
                    .map_err(|e| e.to_string())?;
                return Ok(Self::MySql(pool));
            }
            #[cfg(not(feature = "mysql"))]
            return Err("this build has no MySQL support (feature `mysql`)".into());
        }
        Err(format!(
            "{url:?} is not a database URL (sqlite:PATH or mysql://…)"
        ))
    }
}
