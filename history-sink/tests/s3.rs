//! The S3 image store against `moto_server` (PyPI `moto[server]`).
//!
//! `HISTORY_TEST_S3_ENDPOINT` (e.g. `http://127.0.0.1:5000`) points at a running server;
//! without it the test starts its own `moto_server` from `HISTORY_TEST_MOTO`, `PATH`, or
//! `~/.cache/partialconv/venv-moto/bin/moto_server`. `HISTORY_TEST_SKIP_SERVICES=1` skips.
#![cfg(feature = "s3")]

mod common;

use bytes::Bytes;
use common::{create_bucket, moto_endpoint, skip_services};
use history_sink::{HistoryError, ImageStore, S3Config};

/// The image store on moto's `bucket` under `images/`, with moto's test credentials.
fn images_in(endpoint: &str, bucket: &str) -> ImageStore {
    ImageStore::s3(S3Config {
        bucket: bucket.to_owned(),
        endpoint: Some(endpoint.to_owned()),
        region: Some("us-east-1".into()),
        access_key_id: Some("test".into()),
        secret_access_key: Some("test".into()),
        prefix: "images/".into(),
    })
    .unwrap()
}

#[tokio::test]
async fn s3_put_get_round_trip() {
    if skip_services("s3_put_get_round_trip") {
        return;
    }
    let (ep, _moto) = moto_endpoint().await;
    let bucket = format!("hs-test-{:08x}", rand::random::<u32>());
    create_bucket(&ep, &bucket).await;
    let store = images_in(&ep, &bucket);
    let a = store
        .put(Bytes::from_static(b"\x89PNG fake"), "image/png")
        .await
        .unwrap();
    assert!(a.key.ends_with(".png"));
    assert_eq!(a.uri, format!("s3://{bucket}/images/{}", a.key));
    let again = store
        .put(Bytes::from_static(b"\x89PNG fake"), "image/png")
        .await
        .unwrap();
    assert_eq!(a, again);
    let (bytes, ct) = store.get(&a.key).await.unwrap().unwrap();
    assert_eq!(&bytes[..], b"\x89PNG fake");
    assert_eq!(ct, "image/png");
    let missing = history_sink::image_store::key_for(b"nope", "image/png").unwrap();
    assert!(store.get(&missing).await.unwrap().is_none());
    let nested = format!("{}/x.png", "a".repeat(64));
    for bad in ["../x.png", "images/../../etc", nested.as_str()] {
        assert!(matches!(
            store.get(bad).await,
            Err(HistoryError::InvalidKey(_))
        ));
    }
}

#[tokio::test]
async fn s3_file_store_beside_the_images() {
    if skip_services("s3_file_store_beside_the_images") {
        return;
    }
    let (ep, _moto) = moto_endpoint().await;
    let bucket = format!("hs-test-{:08x}", rand::random::<u32>());
    create_bucket(&ep, &bucket).await;
    let images = images_in(&ep, &bucket);
    let files = history_sink::FileStore::beside(&images, "finetune").unwrap();
    files
        .put("jobs/1/train/0000.png", Bytes::from_static(b"photo"))
        .await
        .unwrap();
    files
        .put("jobs/1/model.safetensors", Bytes::from_static(b"model"))
        .await
        .unwrap();
    files
        .put(
            "jobs/12/model.safetensors",
            Bytes::from_static(b"not job 1's"),
        )
        .await
        .unwrap();
    assert_eq!(
        files.uri_for("jobs/1/model.safetensors"),
        format!("s3://{bucket}/images/finetune/jobs/1/model.safetensors")
    );
    let mut names = files.list("jobs/1").await.unwrap();
    names.sort();
    assert_eq!(names, ["jobs/1/model.safetensors", "jobs/1/train/0000.png"]);
    assert_eq!(
        files.get("jobs/1/train/0000.png").await.unwrap().unwrap(),
        Bytes::from_static(b"photo")
    );
    assert!(files.get("jobs/1/none").await.unwrap().is_none());
    assert!(files.get("jobs/../x").await.is_err());
    files.delete_prefix("jobs/1").await.unwrap();
    assert!(files.list("jobs/1").await.unwrap().is_empty());
    assert!(files
        .get("jobs/12/model.safetensors")
        .await
        .unwrap()
        .is_some());
}
