//! The worker pool under load: overload, micro-batching, cancellation and timeouts.
//!
//! A long `--batch-window-ms` makes timing deterministic on any machine: a worker holding a
//! job waits out the window for same-shape company, so jobs of other shapes pile up behind it
//! for as long as the test needs.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// A picture and a centred hole of the given size.
fn pair(w: u32, h: u32) -> (Vec<u8>, Vec<u8>) {
    (
        png(picture(w, h)),
        png(rect_mask(w, h, (w / 4, h / 4, w / 2, h / 2))),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overload_gets_503_with_retry_after_and_loses_nothing() {
    let s = start(&["--workers", "1", "--queue", "3", "--batch-window-ms", "300"]).await;
    const N: u32 = 16;
    // All different shapes, so no two jobs batch: at most 1 running + 3 queued fit.
    let results = futures::future::join_all((0..N).map(|i| {
        let (img, mask) = pair(48 + i, 40);
        let client = s.client.clone();
        let url = format!("{}/api/v1/inpaint", s.url);
        async move {
            let r = client
                .post(url)
                .multipart(form(img, mask))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let retry = r.headers().get("retry-after").cloned();
            if status == 200 {
                let out = decode(&r.bytes().await.unwrap());
                assert_eq!(out.dimensions(), (48 + i, 40));
            } else {
                assert_eq!(status, 503);
                assert_eq!(retry.unwrap(), "1");
                assert_eq!(error_code(r).await.1, "overloaded");
            }
            status
        }
    }))
    .await;
    let ok = results.iter().filter(|&&s| s == 200).count();
    let busy = results.iter().filter(|&&s| s == 503).count();
    assert_eq!(ok + busy, N as usize, "every request got an answer");
    assert!(busy >= 1, "nothing was refused: {results:?}");
    // The queue's 3 always fit; a 4th does when the worker took one off the queue before the
    // rest arrived, which depends on scheduling.
    assert!((3..N as usize).contains(&ok), "{ok} succeeded");

    let m = s.metrics().await;
    assert_eq!(metric(&m, "inference_rejected_total"), busy as f64, "{m}");
    assert_eq!(metric(&m, "inference_queue_depth"), 0.0);
    // Healthy afterwards: a new request is served.
    assert_eq!(s.get("/healthz").await.status(), 200);
    let (img, mask) = pair(64, 64);
    assert_eq!(s.inpaint(form(img, mask)).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_same_shape_requests_share_a_forward_pass() {
    let s = start(&[
        "--workers",
        "1",
        "--batch-max",
        "8",
        "--batch-window-ms",
        "500",
    ])
    .await;
    let (img, mask) = pair(64, 64);
    let sizes = futures::future::join_all((0..4).map(|_| {
        let f = form(img.clone(), mask.clone()).text("strategy", "original");
        async {
            let r = s.inpaint(f).await;
            assert_eq!(r.status(), 200);
            let n: usize = r.headers()["x-batch-size"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            let out = decode(&r.bytes().await.unwrap());
            // Batched or not, pixels outside the hole are the input's.
            assert_eq!(out.get_pixel(0, 0), decode(&img).get_pixel(0, 0));
            n
        }
    }))
    .await;
    assert!(sizes.iter().any(|&n| n >= 2), "no batch formed: {sizes:?}");
    let m = s.metrics().await;
    let batches = metric(&m, "inference_batch_size_count");
    assert!(batches < 4.0, "4 jobs ran in {batches} batches");
    eprintln!("batch sizes seen by the 4 requests: {sizes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_goes_away_leaves_no_job_queued() {
    let s = start(&["--workers", "1", "--batch-window-ms", "1500"]).await;
    // Job A occupies the only worker for the window.
    let (img, mask) = pair(64, 64);
    let a = tokio::spawn({
        let f = form(img, mask);
        let client = s.client.clone();
        let url = format!("{}/api/v1/inpaint", s.url);
        async move { client.post(url).multipart(f).send().await.unwrap().status() }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Job B (another shape) queues behind it, and its client gives up.
    let (img, mask) = pair(80, 64);
    let r = s
        .client
        .post(format!("{}/api/v1/inpaint", s.url))
        .multipart(form(img, mask))
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(r.unwrap_err().is_timeout());
    // The server notices the closed connection and takes B out of the queue, well before
    // the worker is free again.
    let deadline = Instant::now() + Duration::from_millis(800);
    loop {
        let m = s.metrics().await;
        if metric(&m, "inference_cancelled_total") == 1.0 {
            assert_eq!(metric(&m, "inference_queue_depth"), 0.0, "{m}");
            break;
        }
        assert!(Instant::now() < deadline, "B is still queued:\n{m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(a.await.unwrap(), 200);
    // B never ran: one batch, A's.
    let m = s.metrics().await;
    assert_eq!(metric(&m, "inference_batch_size_count"), 1.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_that_waits_too_long_times_out_with_504() {
    let s = start(&[
        "--workers",
        "1",
        "--timeout-secs",
        "1",
        "--batch-window-ms",
        "2500",
    ])
    .await;
    let (img, mask) = pair(64, 64);
    let a = tokio::spawn({
        let f = form(img, mask);
        let client = s.client.clone();
        let url = format!("{}/api/v1/inpaint", s.url);
        async move { client.post(url).multipart(f).send().await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (img, mask) = pair(80, 64);
    let started = Instant::now();
    let r = s.inpaint(form(img, mask)).await;
    assert_eq!(error_code(r).await, (504, "timeout".into()));
    assert!(started.elapsed() < Duration::from_millis(2000));
    // A itself waited out its window past the timeout too.
    assert_eq!(error_code(a.await.unwrap()).await.1, "timeout");
    let m = s.metrics().await;
    assert_eq!(metric(&m, "inference_timeouts_total"), 2.0, "{m}");
    assert_eq!(metric(&m, "inference_queue_depth"), 0.0);
}
