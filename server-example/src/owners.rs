//! Who each kept image belongs to, so that with sign-in `/images/{key}` serves a user their
//! own images only. Kept in the server's SQL database ([`crate::db`]), because history may go
//! to Kafka alone and cannot be asked: `DATA_DIR/image-owners.db` on one machine, the shared
//! MySQL job database for replicas. An image's key is its SHA-256, so two users who upload
//! the same bytes share the file, and each owns it.

use crate::db::{on_db, Db};

/// The owner index.
pub struct ImageOwners {
    db: Db,
}

impl ImageOwners {
    /// Opens (or creates) the index in the database at `url` (`sqlite:PATH` or `mysql://…`).
    pub async fn open(url: &str) -> Result<Self, String> {
        Ok(Self {
            db: Db::open(url).await?,
        })
    }

    /// Records that `user` owns `keys`.
    pub async fn add(&self, user: &str, keys: &[&str]) -> Result<(), sqlx::Error> {
        let ignore = match self.db {
            Db::Sqlite(_) => "OR IGNORE",
            #[cfg(feature = "mysql")]
            Db::MySql(_) => "IGNORE",
        };
        let sql = format!("INSERT {ignore} INTO image_owners (image_key, user_id) VALUES (?, ?)");
        on_db!(&self.db, p => {
            let mut tx = p.begin().await?;
            for key in keys {
                sqlx::query(&sql).bind(key).bind(user).execute(&mut *tx).await?;
            }
            tx.commit().await
        })
    }

    /// Forgets everything `user` owns, and returns the keys that no one owns any more: those
    /// the caller may delete from the store.
    pub async fn remove_user(&self, user: &str) -> Result<Vec<String>, sqlx::Error> {
        const ORPHANS: &str = "SELECT image_key FROM image_owners AS mine WHERE user_id = ? \
            AND NOT EXISTS (SELECT 1 FROM image_owners AS other \
                            WHERE other.image_key = mine.image_key AND other.user_id <> ?)";
        const DELETE: &str = "DELETE FROM image_owners WHERE user_id = ?";
        on_db!(&self.db, p => {
            let mut tx = p.begin().await?;
            let orphans: Vec<String> = sqlx::query_scalar(ORPHANS)
                .bind(user)
                .bind(user)
                .fetch_all(&mut *tx)
                .await?;
            sqlx::query(DELETE).bind(user).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(orphans)
        })
    }

    /// Whether `user` owns the image `key`.
    pub async fn owns(&self, user: &str, key: &str) -> Result<bool, sqlx::Error> {
        const SQL: &str = "SELECT COUNT(*) FROM image_owners WHERE image_key = ? AND user_id = ?";
        let n: i64 = on_db!(&self.db, p => sqlx::query_scalar(SQL)
            .bind(key)
            .bind(user)
            .fetch_one(p)
            .await?);
        Ok(n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_owner_of_an_image_sees_it_and_no_one_else() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("owners.db").display());
        let owners = ImageOwners::open(&url).await.unwrap();
        owners.add("alice", &["a.png", "shared.png"]).await.unwrap();
        owners.add("bob", &["shared.png"]).await.unwrap();
        owners.add("alice", &["a.png"]).await.unwrap(); // again: no error
        assert!(owners.owns("alice", "a.png").await.unwrap());
        assert!(!owners.owns("bob", "a.png").await.unwrap());
        assert!(owners.owns("bob", "shared.png").await.unwrap());
        // Reopened: it is on disk.
        drop(owners);
        let url = format!("sqlite:{}", dir.path().join("owners.db").display());
        let owners = ImageOwners::open(&url).await.unwrap();
        assert!(owners.owns("alice", "shared.png").await.unwrap());
        assert!(!owners.owns("alice' OR '1'='1", "a.png").await.unwrap());
        // Alice leaves: her own image is orphaned, the shared one stays Bob's.
        assert_eq!(owners.remove_user("alice").await.unwrap(), ["a.png"]);
        assert!(!owners.owns("alice", "shared.png").await.unwrap());
        assert!(owners.owns("bob", "shared.png").await.unwrap());
    }
}
