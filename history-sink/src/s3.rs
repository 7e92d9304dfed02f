//! The S3 backend of [`ImageStore`] (feature `s3`, `object_store`).

use std::sync::Arc;

use bytes::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{Attribute, Attributes, ObjectStore, PutOptions, PutPayload};

use crate::error::Result;
use crate::image_store::{key_for, validate_key, ImageStore, StoredImage};
use futures::TryStreamExt;

/// Where the bucket is. Credentials and region missing here are read from the usual
/// `AWS_*` environment variables.
#[derive(Debug, Clone, Default)]
pub struct S3Config {
    /// Bucket name.
    pub bucket: String,
    /// Custom endpoint, e.g. `http://127.0.0.1:5000` for moto or MinIO.
    pub endpoint: Option<String>,
    /// Region (default from the environment, else `us-east-1`).
    pub region: Option<String>,
    /// Access key id.
    pub access_key_id: Option<String>,
    /// Secret access key.
    pub secret_access_key: Option<String>,
    /// Key prefix inside the bucket, e.g. `images/`.
    pub prefix: String,
}

/// Images as objects `<prefix><key>` in one bucket.
#[derive(Debug, Clone)]
pub struct S3ImageStore {
    store: Arc<dyn ObjectStore>,
    bucket: String,
    prefix: String,
}

impl ImageStore {
    /// An S3-compatible store.
    pub fn s3(cfg: S3Config) -> Result<Self> {
        Ok(Self::S3(S3ImageStore::new(cfg)?))
    }
}

impl S3ImageStore {
    /// Builds the client (no request is made yet).
    pub fn new(cfg: S3Config) -> Result<Self> {
        let mut b = AmazonS3Builder::from_env().with_bucket_name(&cfg.bucket);
        if let Some(ep) = &cfg.endpoint {
            b = b
                .with_endpoint(ep)
                .with_allow_http(ep.starts_with("http://"))
                .with_virtual_hosted_style_request(false);
        }
        if let Some(r) = &cfg.region {
            b = b.with_region(r);
        }
        if let Some(k) = &cfg.access_key_id {
            b = b.with_access_key_id(k);
        }
        if let Some(s) = &cfg.secret_access_key {
            b = b.with_secret_access_key(s);
        }
        Ok(Self {
            store: Arc::new(b.build()?),
            bucket: cfg.bucket,
            prefix: cfg.prefix,
        })
    }

    fn path(&self, key: &str) -> ObjectPath {
        ObjectPath::from(format!("{}{key}", self.prefix))
    }

    pub(crate) fn uri_for(&self, key: &str) -> String {
        format!("s3://{}/{}{key}", self.bucket, self.prefix)
    }

    pub(crate) async fn put(&self, bytes: Bytes, content_type: &str) -> Result<StoredImage> {
        let key = key_for(&bytes, content_type)?;
        let canonical = validate_key(&key)?;
        let path = self.path(&key);
        // Content-addressed: an existing object already holds these bytes.
        if self.store.head(&path).await.is_err() {
            let opts = PutOptions {
                attributes: Attributes::from_iter([(Attribute::ContentType, canonical)]),
                ..PutOptions::default()
            };
            self.store
                .put_opts(&path, PutPayload::from_bytes(bytes), opts)
                .await?;
        }
        let uri = self.uri_for(&key);
        Ok(StoredImage { key, uri })
    }

    pub(crate) async fn delete(&self, key: &str) -> Result<()> {
        match self.store.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    pub(crate) async fn get(&self, key: &str) -> Result<Option<(Bytes, String)>> {
        let content_type = validate_key(key)?;
        match self.store.get(&self.path(key)).await {
            Ok(r) => Ok(Some((r.bytes().await?, content_type.to_owned()))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

impl S3ImageStore {
    /// The objects `<prefix>sub/…` of this bucket, as a [`crate::FileStore`] backend.
    pub(crate) fn files(&self, sub: &str) -> S3Files {
        S3Files {
            store: self.store.clone(),
            bucket: self.bucket.clone(),
            prefix: format!("{}{sub}/", self.prefix),
        }
    }
}

/// The S3 backend of [`crate::FileStore`]: objects `<prefix><name>` in one bucket. Names are
/// checked by the `FileStore` before they get here.
#[derive(Debug, Clone)]
pub struct S3Files {
    store: Arc<dyn ObjectStore>,
    bucket: String,
    prefix: String,
}

impl S3Files {
    fn path(&self, name: &str) -> ObjectPath {
        ObjectPath::from(format!("{}{name}", self.prefix))
    }

    pub(crate) fn uri_for(&self, name: &str) -> String {
        format!("s3://{}/{}{name}", self.bucket, self.prefix)
    }

    pub(crate) async fn put(&self, name: &str, bytes: Bytes) -> Result<()> {
        // One PUT is atomic in S3: a reader sees the old object or the new one.
        self.store
            .put(&self.path(name), PutPayload::from_bytes(bytes))
            .await?;
        Ok(())
    }

    pub(crate) async fn get(&self, name: &str) -> Result<Option<Bytes>> {
        match self.store.get(&self.path(name)).await {
            Ok(r) => Ok(Some(r.bytes().await?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub(crate) async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let folder = self.path(prefix);
        let metas: Vec<object_store::ObjectMeta> =
            self.store.list(Some(&folder)).try_collect().await?;
        Ok(metas
            .into_iter()
            .filter_map(|m| {
                m.location
                    .as_ref()
                    .strip_prefix(&self.prefix)
                    .map(str::to_owned)
            })
            .collect())
    }

    pub(crate) async fn delete_prefix(&self, prefix: &str) -> Result<()> {
        for name in self.list(prefix).await? {
            match self.store.delete(&self.path(&name)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}
