//! Content-addressed image storage.
//!
//! A key is `sha256(bytes)` in lowercase hex plus an extension taken from the content type
//! (`<64 hex>.png`). Keys are never built from user-supplied names, and every key read back
//! (e.g. from `/images/{key}`) is validated first, so no path or object name can escape the
//! store.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::error::{HistoryError, Result};

/// Content types the store accepts, with the extension used in keys.
const TYPES: &[(&str, &str)] = &[
    ("image/png", "png"),
    ("image/jpeg", "jpg"),
    ("image/webp", "webp"),
    ("image/gif", "gif"),
    ("image/bmp", "bmp"),
    ("image/tiff", "tiff"),
];

/// Where an image was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredImage {
    /// `<sha256 hex>.<ext>`; the server serves it at `/images/{key}`.
    pub key: String,
    /// Backend URI (`file:///…` or `s3://bucket/…`), recorded in history events.
    pub uri: String,
}

/// The extension for a content type (parameters such as `; charset=` are ignored).
pub fn extension_for(content_type: &str) -> Result<&'static str> {
    let base = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let base = if base == "image/jpg" {
        "image/jpeg".to_owned()
    } else {
        base
    };
    TYPES
        .iter()
        .find(|(ct, _)| *ct == base)
        .map(|(_, ext)| *ext)
        .ok_or_else(|| HistoryError::UnsupportedContentType(content_type.to_owned()))
}

/// Checks a key and returns its content type.
pub fn validate_key(key: &str) -> Result<&'static str> {
    let invalid = || HistoryError::InvalidKey(key.chars().take(100).collect());
    let (hash, ext) = key.split_once('.').ok_or_else(invalid)?;
    if hash.len() != 64 || !hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(invalid());
    }
    TYPES
        .iter()
        .find(|(_, e)| *e == ext)
        .map(|(ct, _)| *ct)
        .ok_or_else(invalid)
}

/// The key for these bytes and content type.
pub fn key_for(bytes: &[u8], content_type: &str) -> Result<String> {
    let ext = extension_for(content_type)?;
    Ok(format!("{}.{ext}", hex::encode(Sha256::digest(bytes))))
}

/// A content-addressed image store: a local directory (default) or S3 (feature `s3`).
#[derive(Debug, Clone)]
pub enum ImageStore {
    /// Files under a local directory, sharded by the first two hex digits.
    Local(LocalImageStore),
    /// Objects in an S3-compatible bucket.
    #[cfg(feature = "s3")]
    S3(crate::s3::S3ImageStore),
}

impl ImageStore {
    /// A local store rooted at `dir` (created if missing).
    pub fn local(dir: impl Into<PathBuf>) -> Result<Self> {
        Ok(Self::Local(LocalImageStore::new(dir)?))
    }

    /// Stores `bytes` and returns its key and URI. Storing the same bytes twice is a no-op.
    pub async fn put(&self, bytes: Bytes, content_type: &str) -> Result<StoredImage> {
        match self {
            Self::Local(s) => s.put(bytes, content_type).await,
            #[cfg(feature = "s3")]
            Self::S3(s) => s.put(bytes, content_type).await,
        }
    }

    /// Reads an image back; `Ok(None)` when the key is valid but absent.
    /// An invalid key is an error ([`HistoryError::InvalidKey`]), never a file-system lookup.
    pub async fn get(&self, key: &str) -> Result<Option<(Bytes, String)>> {
        match self {
            Self::Local(s) => s.get(key).await,
            #[cfg(feature = "s3")]
            Self::S3(s) => s.get(key).await,
        }
    }

    /// Removes an image; removing one that is not there is not an error. Content-addressed
    /// keys may be shared, so the caller decides that no one needs it any more.
    pub async fn delete(&self, key: &str) -> Result<()> {
        validate_key(key)?;
        match self {
            Self::Local(s) => s.delete(key).await,
            #[cfg(feature = "s3")]
            Self::S3(s) => s.delete(key).await,
        }
    }

    /// The URI an already-validated key has in this store.
    pub fn uri_for(&self, key: &str) -> Result<String> {
        validate_key(key)?;
        Ok(match self {
            Self::Local(s) => s.uri_for(key),
            #[cfg(feature = "s3")]
            Self::S3(s) => s.uri_for(key),
        })
    }
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Images as files under `root/<first two hex digits>/<key>`.
#[derive(Debug, Clone)]
pub struct LocalImageStore {
    root: PathBuf,
}

impl LocalImageStore {
    /// Creates the directory if needed and canonicalises it.
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(dir.join("tmp")).map_err(|e| HistoryError::io(&dir, e))?;
        let root = dir.canonicalize().map_err(|e| HistoryError::io(&dir, e))?;
        Ok(Self { root })
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_for(&self, key: &str) -> PathBuf {
        self.root.join(&key[..2]).join(key)
    }

    fn uri_for(&self, key: &str) -> String {
        let p = self.path_for(key);
        url::Url::from_file_path(&p)
            .map(String::from)
            .unwrap_or_else(|()| format!("file://{}", p.display()))
    }

    async fn put(&self, bytes: Bytes, content_type: &str) -> Result<StoredImage> {
        let key = key_for(&bytes, content_type)?;
        let path = self.path_for(&key);
        let uri = self.uri_for(&key);
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            return Ok(StoredImage { key, uri });
        }
        let dir = path.parent().expect("sharded path has a parent");
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| HistoryError::io(dir, e))?;
        // Write to a unique temporary file, then rename: readers never see a partial image.
        let tmp = self.root.join("tmp").join(format!(
            "{key}.{}.{}",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let write = async {
            let mut f = tokio::fs::File::create(&tmp).await?;
            tokio::io::AsyncWriteExt::write_all(&mut f, &bytes).await?;
            f.sync_all().await?;
            tokio::fs::rename(&tmp, &path).await
        };
        if let Err(e) = write.await {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(HistoryError::io(&path, e));
        }
        Ok(StoredImage { key, uri })
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let path = self.path_for(key);
        match tokio::fs::remove_file(&path).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(HistoryError::io(&path, e)),
            _ => Ok(()),
        }
    }

    async fn get(&self, key: &str) -> Result<Option<(Bytes, String)>> {
        let content_type = validate_key(key)?;
        let path = self.path_for(key);
        match tokio::fs::read(&path).await {
            Ok(b) => Ok(Some((Bytes::from(b), content_type.to_owned()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(HistoryError::io(&path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_get_round_trip_and_dedup() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::local(dir.path()).unwrap();
        let a = store
            .put(Bytes::from_static(b"png bytes"), "image/png")
            .await
            .unwrap();
        assert_eq!(a.key.len(), 64 + 4);
        assert!(a.key.ends_with(".png"));
        assert!(a.uri.starts_with("file:///"), "{}", a.uri);
        let b = store
            .put(Bytes::from_static(b"png bytes"), "image/png; q=1")
            .await
            .unwrap();
        assert_eq!(a, b);
        let (bytes, ct) = store.get(&a.key).await.unwrap().unwrap();
        assert_eq!(&bytes[..], b"png bytes");
        assert_eq!(ct, "image/png");
        let other = key_for(b"other", "image/png").unwrap();
        assert!(store.get(&other).await.unwrap().is_none());
        // Same bytes, other type: other key.
        let j = store
            .put(Bytes::from_static(b"png bytes"), "image/JPEG")
            .await
            .unwrap();
        assert!(j.key.ends_with(".jpg"));
        assert_eq!(store.get(&j.key).await.unwrap().unwrap().1, "image/jpeg");
        // Deleting removes one key's file, twice is fine, and a bad key touches nothing.
        store.delete(&a.key).await.unwrap();
        store.delete(&a.key).await.unwrap();
        assert!(store.get(&a.key).await.unwrap().is_none());
        assert!(store.get(&j.key).await.unwrap().is_some());
        assert!(store.delete("../../etc/passwd").await.is_err());
    }

    #[tokio::test]
    async fn keys_cannot_escape() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret.png"), b"x").unwrap();
        let store = ImageStore::local(dir.path().join("store")).unwrap();
        let h = "a".repeat(64);
        for key in [
            "../secret.png".to_owned(),
            "..%2fsecret.png".to_owned(),
            "/etc/passwd".to_owned(),
            h.clone(),
            format!("{h}.exe"),
            format!("{}.png", "A".repeat(64)),
            format!("../{}.png", &h[3..]),
            format!("{h}.png/../../x"),
            format!("{}.png", &h[1..]),
            String::new(),
            ".png".to_owned(),
        ] {
            assert!(
                matches!(store.get(&key).await, Err(HistoryError::InvalidKey(_))),
                "{key:?}"
            );
        }
    }

    #[tokio::test]
    async fn unsupported_types_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::local(dir.path()).unwrap();
        for ct in ["text/html", "image/svg+xml", "", "application/octet-stream"] {
            assert!(matches!(
                store.put(Bytes::from_static(b"x"), ct).await,
                Err(HistoryError::UnsupportedContentType(_))
            ));
        }
    }

    #[test]
    fn key_is_sha256() {
        assert_eq!(
            key_for(b"abc", "image/png").unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad.png"
        );
    }
}
