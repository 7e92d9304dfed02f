//! The S3 image store against `moto_server` (PyPI `moto[server]`).
//!
//! `HISTORY_TEST_S3_ENDPOINT` (e.g. `http://127.0.0.1:5000`) points at a running server;
//! without it the test starts its own `moto_server` from `HISTORY_TEST_MOTO`, `PATH`, or
//! `~/.cache/partialconv/venv-moto/bin/moto_server`. `HISTORY_TEST_SKIP_SERVICES=1` skips.
#![cfg(feature = "s3")]

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{free_port, skip_services};
use history_sink::{HistoryError, ImageStore, S3Config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Moto(Option<Child>);

impl Drop for Moto {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn moto_binary() -> PathBuf {
    if let Ok(p) = std::env::var("HISTORY_TEST_MOTO") {
        return p.into();
    }
    if let Some(p) = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("moto_server"))
            .find(|p| p.is_file())
    }) {
        return p;
    }
    PathBuf::from(std::env::var("HOME").unwrap_or_default())
        .join(".cache/partialconv/venv-moto/bin/moto_server")
}

async fn endpoint() -> (String, Moto) {
    if let Ok(ep) = std::env::var("HISTORY_TEST_S3_ENDPOINT") {
        return (ep, Moto(None));
    }
    let bin = moto_binary();
    assert!(
        bin.is_file(),
        "moto_server not found at {} — `pip install 'moto[server]'`, set HISTORY_TEST_MOTO or \
         HISTORY_TEST_S3_ENDPOINT, or set HISTORY_TEST_SKIP_SERVICES=1 to skip",
        bin.display()
    );
    let port = free_port();
    let child = Command::new(&bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "moto_server did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (format!("http://127.0.0.1:{port}"), Moto(Some(child)))
}

/// Creates a bucket with a plain HTTP PUT (moto does not check signatures).
async fn create_bucket(endpoint: &str, bucket: &str) {
    let hostport = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let mut s = tokio::net::TcpStream::connect(hostport).await.unwrap();
    let req = format!(
        "PUT /{bucket} HTTP/1.1\r\nHost: {hostport}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "create bucket: {resp}");
}

#[tokio::test]
async fn s3_put_get_round_trip() {
    if skip_services("s3_put_get_round_trip") {
        return;
    }
    let (ep, _moto) = endpoint().await;
    let bucket = format!("hs-test-{:08x}", rand::random::<u32>());
    create_bucket(&ep, &bucket).await;
    let store = ImageStore::s3(S3Config {
        bucket: bucket.clone(),
        endpoint: Some(ep),
        region: Some("us-east-1".into()),
        access_key_id: Some("test".into()),
        secret_access_key: Some("test".into()),
        prefix: "images/".into(),
    })
    .unwrap();
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
