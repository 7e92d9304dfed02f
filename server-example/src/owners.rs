//! Who each kept image belongs to, so that with sign-in `/images/{key}` serves a user their
//! own images only. Kept beside the images, in SQLite (`DATA_DIR/image-owners.db`), because
//! history may go to Kafka alone and cannot be asked. An image's key is its SHA-256, so two
//! users who upload the same bytes share the file, and each owns it.

use std::path::Path;
use std::str::FromStr;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::SqlitePool;

/// The owner index.
pub struct ImageOwners {
    pool: SqlitePool,
}

impl ImageOwners {
    /// Opens (or creates) the index at `path`.
    pub async fn open(path: &Path) -> Result<Self, sqlx::Error> {
        let opts = SqliteConnectOptions::from_str(&format!("sqlite:{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS image_owners (
                 image_key TEXT NOT NULL,
                 user_id TEXT NOT NULL,
                 PRIMARY KEY (image_key, user_id)
             ) WITHOUT ROWID",
        )
        .execute(&pool)
        .await?;
        Ok(Self { pool })
    }

    /// Records that `user` owns `keys`.
    pub async fn add(&self, user: &str, keys: &[&str]) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        for key in keys {
            sqlx::query("INSERT OR IGNORE INTO image_owners (image_key, user_id) VALUES (?, ?)")
                .bind(key)
                .bind(user)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await
    }

    /// Forgets everything `user` owns, and returns the keys that no one owns any more: those
    /// the caller may delete from the store.
    pub async fn remove_user(&self, user: &str) -> Result<Vec<String>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let orphans: Vec<(String,)> = sqlx::query_as(
            "SELECT image_key FROM image_owners AS mine WHERE user_id = ?
             AND NOT EXISTS (SELECT 1 FROM image_owners AS other
                             WHERE other.image_key = mine.image_key AND other.user_id <> ?)",
        )
        .bind(user)
        .bind(user)
        .fetch_all(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM image_owners WHERE user_id = ?")
            .bind(user)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(orphans.into_iter().map(|(k,)| k).collect())
    }

    /// Whether `user` owns the image `key`.
    pub async fn owns(&self, user: &str, key: &str) -> Result<bool, sqlx::Error> {
        let row: Option<(i64,)> =
            sqlx::query_as("SELECT 1 FROM image_owners WHERE image_key = ? AND user_id = ?")
                .bind(key)
                .bind(user)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_owner_of_an_image_sees_it_and_no_one_else() {
        let dir = tempfile::tempdir().unwrap();
        let owners = ImageOwners::open(&dir.path().join("owners.db"))
            .await
            .unwrap();
        owners.add("alice", &["a.png", "shared.png"]).await.unwrap();
        owners.add("bob", &["shared.png"]).await.unwrap();
        owners.add("alice", &["a.png"]).await.unwrap(); // again: no error
        assert!(owners.owns("alice", "a.png").await.unwrap());
        assert!(!owners.owns("bob", "a.png").await.unwrap());
        assert!(owners.owns("bob", "shared.png").await.unwrap());
        // Reopened: it is on disk.
        drop(owners);
        let owners = ImageOwners::open(&dir.path().join("owners.db"))
            .await
            .unwrap();
        assert!(owners.owns("alice", "shared.png").await.unwrap());
        assert!(!owners.owns("alice' OR '1'='1", "a.png").await.unwrap());
        // Alice leaves: her own image is orphaned, the shared one stays Bob's.
        assert_eq!(owners.remove_user("alice").await.unwrap(), ["a.png"]);
        assert!(!owners.owns("alice", "shared.png").await.unwrap());
        assert!(owners.owns("bob", "shared.png").await.unwrap());
    }
}
