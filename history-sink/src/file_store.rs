//! Files under names the server makes, kept in the image store's backend: a fine-tune job's
//! photos, checkpoints and model, so that whichever replica needs them can reach them.
//!
//! A name is `/`-separated segments of `[A-Za-z0-9._-]` (never `.` or `..`), checked on every
//! call, so no name can leave the store's folder or prefix.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use crate::error::{HistoryError, Result};
use crate::image_store::ImageStore;

/// Longest name the store accepts.
pub const MAX_NAME_LEN: usize = 512;

/// Checks a file name: relative, `/`-separated segments of `[A-Za-z0-9._-]`, none `.` or `..`.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        });
    if ok {
        Ok(())
    } else {
        Err(HistoryError::InvalidKey(name.chars().take(100).collect()))
    }
}

/// Named files in a local folder or an S3 prefix.
#[derive(Debug, Clone)]
pub enum FileStore {
    /// Files under a local folder (shared between replicas only through a shared file system).
    Local(PathBuf),
    /// Objects under a prefix of an S3-compatible bucket.
    #[cfg(feature = "s3")]
    S3(crate::s3::S3Files),
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl FileStore {
    /// A store in the local folder `dir` (created if missing).
    pub fn local(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|e| HistoryError::io(&dir, e))?;
        Ok(Self::Local(dir))
    }

    /// A store in the same backend as `images`, under `sub`: the folder `<images root>/sub`,
    /// or the objects `<images prefix>sub/` in the images' bucket.
    pub fn beside(images: &ImageStore, sub: &str) -> Result<Self> {
        validate_name(sub)?;
        match images {
            ImageStore::Local(s) => Self::local(s.root().join(sub)),
            #[cfg(feature = "s3")]
            ImageStore::S3(s) => Ok(Self::S3(s.files(sub))),
        }
    }

    /// Where `name` is: a `file://` or `s3://` URI, for logs and errors.
    pub fn uri_for(&self, name: &str) -> String {
        match self {
            Self::Local(root) => format!("file://{}", root.join(name).display()),
            #[cfg(feature = "s3")]
            Self::S3(s) => s.uri_for(name),
        }
    }

    /// Stores `bytes` as `name`, replacing what was there. Readers see the old file or the
    /// new one, never a part.
    pub async fn put(&self, name: &str, bytes: Bytes) -> Result<()> {
        validate_name(name)?;
        match self {
            Self::Local(root) => {
                let path = root.join(name);
                let dir = path.parent().expect("a name has a parent folder");
                tokio::fs::create_dir_all(dir)
                    .await
                    .map_err(|e| HistoryError::io(dir, e))?;
                write_atomic(&path, &bytes).await
            }
            #[cfg(feature = "s3")]
            Self::S3(s) => s.put(name, bytes).await,
        }
    }

    /// Stores the local file `from` as `name`.
    pub async fn put_file(&self, name: &str, from: &Path) -> Result<()> {
        let bytes = tokio::fs::read(from)
            .await
            .map_err(|e| HistoryError::io(from, e))?;
        self.put(name, Bytes::from(bytes)).await
    }

    /// The file `name`; `Ok(None)` when there is none.
    pub async fn get(&self, name: &str) -> Result<Option<Bytes>> {
        validate_name(name)?;
        match self {
            Self::Local(root) => {
                let path = root.join(name);
                match tokio::fs::read(&path).await {
                    Ok(b) => Ok(Some(Bytes::from(b))),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(HistoryError::io(&path, e)),
                }
            }
            #[cfg(feature = "s3")]
            Self::S3(s) => s.get(name).await,
        }
    }

    /// Copies `name` to the local file `to` (written aside and renamed); `false` when there
    /// is no such file.
    pub async fn get_file(&self, name: &str, to: &Path) -> Result<bool> {
        let Some(bytes) = self.get(name).await? else {
            return Ok(false);
        };
        if let Some(dir) = to.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| HistoryError::io(dir, e))?;
        }
        write_atomic(to, &bytes).await?;
        Ok(true)
    }

    /// The names under the folder `prefix` (without a trailing `/`), in no set order.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        validate_name(prefix)?;
        match self {
            Self::Local(root) => {
                let root = root.clone();
                let prefix = prefix.to_owned();
                tokio::task::spawn_blocking(move || {
                    let mut out = Vec::new();
                    list_local(&root.join(&prefix), &prefix, &mut out)?;
                    Ok(out)
                })
                .await
                .map_err(|e| HistoryError::io("file store", std::io::Error::other(e)))?
            }
            #[cfg(feature = "s3")]
            Self::S3(s) => s.list(prefix).await,
        }
    }

    /// Removes every file under the folder `prefix`; removing nothing is not an error.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<()> {
        validate_name(prefix)?;
        match self {
            Self::Local(root) => {
                let dir = root.join(prefix);
                match tokio::fs::remove_dir_all(&dir).await {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        Err(HistoryError::io(&dir, e))
                    }
                    _ => Ok(()),
                }
            }
            #[cfg(feature = "s3")]
            Self::S3(s) => s.delete_prefix(prefix).await,
        }
    }
}

fn list_local(dir: &Path, name: &str, out: &mut Vec<String>) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(HistoryError::io(dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| HistoryError::io(dir, e))?;
        let Some(file) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        // Files being written (`.<name>.writing-…`) are not there yet.
        if file.starts_with('.') {
            continue;
        }
        let child = format!("{name}/{file}");
        if entry.path().is_dir() {
            list_local(&entry.path(), &child, out)?;
        } else {
            out.push(child);
        }
    }
    Ok(())
}

/// Writes `bytes` beside `path` and renames it into place, after an fsync.
async fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let file = path.file_name().and_then(|f| f.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(
        ".{file}.writing-{}-{}",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let write = async {
        let mut f = tokio::fs::File::create(&tmp).await?;
        tokio::io::AsyncWriteExt::write_all(&mut f, bytes).await?;
        f.sync_all().await?;
        tokio::fs::rename(&tmp, path).await
    };
    if let Err(e) = write.await {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(HistoryError::io(path, e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_leave_the_store() {
        for good in ["jobs/0193-ab/train/0001.png", "a", "a.b_c-d/e"] {
            validate_name(good).unwrap();
        }
        for bad in [
            "", "/abs", "a/../b", "..", "a//b", "a/./b", "a/", "a\\b", "a b", "ä",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_name(&"a".repeat(MAX_NAME_LEN + 1)).is_err());
    }

    #[tokio::test]
    async fn put_get_list_and_delete_a_folder() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::local(dir.path().join("files")).unwrap();
        store
            .put("jobs/1/train/0.png", Bytes::from_static(b"zero"))
            .await
            .unwrap();
        store
            .put("jobs/1/model.safetensors", Bytes::from_static(b"m"))
            .await
            .unwrap();
        store
            .put("jobs/2/model.safetensors", Bytes::from_static(b"other"))
            .await
            .unwrap();
        // Replacing a file.
        store
            .put("jobs/1/model.safetensors", Bytes::from_static(b"m2"))
            .await
            .unwrap();
        assert_eq!(
            store
                .get("jobs/1/model.safetensors")
                .await
                .unwrap()
                .unwrap(),
            Bytes::from_static(b"m2")
        );
        assert!(store.get("jobs/1/nothing").await.unwrap().is_none());
        let mut names = store.list("jobs/1").await.unwrap();
        names.sort();
        assert_eq!(names, ["jobs/1/model.safetensors", "jobs/1/train/0.png"]);
        assert!(store.list("jobs/3").await.unwrap().is_empty());
        let to = dir.path().join("out/copy");
        assert!(store.get_file("jobs/1/train/0.png", &to).await.unwrap());
        assert_eq!(std::fs::read(&to).unwrap(), b"zero");
        assert!(!store.get_file("jobs/9/x", &to).await.unwrap());
        store.delete_prefix("jobs/1").await.unwrap();
        store.delete_prefix("jobs/1").await.unwrap();
        assert!(store.list("jobs/1").await.unwrap().is_empty());
        assert!(store
            .get("jobs/2/model.safetensors")
            .await
            .unwrap()
            .is_some());
        assert!(store.get("../escape").await.is_err());
    }
}
