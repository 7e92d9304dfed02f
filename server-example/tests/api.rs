//! Every endpoint and every kind of bad input, over a real socket.

mod common;

use std::sync::Arc;

use base64::Engine;
use common::*;
use image::{ImageFormat, Rgba, RgbaImage};

/// A sink whose writes always fail, standing in for a database that is down.
struct FailingSink;

#[async_trait::async_trait]
impl history_sink::HistorySink for FailingSink {
    fn name(&self) -> &'static str {
        "failing"
    }
    async fn record(&self, _event: &history_sink::HistoryEvent) -> history_sink::Result<()> {
        Err(history_sink::HistoryError::InvalidEvent(
            "the database is down".into(),
        ))
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inpaint_fills_the_hole_and_keeps_the_rest() {
    let s = start(&[]).await;
    let (img, mask) = small_pair();
    let r = s
        .inpaint(form(img.clone(), mask).text("user_id", "alice"))
        .await;
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert_eq!(h["content-type"], "image/png");
    let event_id = h["x-event-id"].to_str().unwrap().to_owned();
    assert!(uuid::Uuid::parse_str(&event_id).is_ok());
    assert!(
        h["x-inference-ms"]
            .to_str()
            .unwrap()
            .parse::<f64>()
            .unwrap()
            >= 0.0
    );
    assert_eq!(h["x-strategy"], "original");
    let result_url = h["x-result-url"].to_str().unwrap().to_owned();
    let out = decode(&r.bytes().await.unwrap());
    let orig = decode(&img);
    assert_eq!(out.dimensions(), (64, 48));
    let mut changed = 0;
    for (x, y, p) in out.enumerate_pixels() {
        let inside = (20..36).contains(&x) && (16..32).contains(&y);
        if inside {
            changed += (p != orig.get_pixel(x, y)) as u32;
        } else {
            assert_eq!(
                p,
                orig.get_pixel(x, y),
                "({x},{y}) outside the hole changed"
            );
        }
    }
    assert!(changed > 200, "only {changed} of 256 hole pixels changed");

    // The stored result is the answer's bytes.
    let stored = s.get(&result_url).await;
    assert_eq!(stored.status(), 200);
    assert_eq!(stored.headers()["content-type"], "image/png");
    assert_eq!(decode(&stored.bytes().await.unwrap()), out);

    // And the history has the event, with links to all three images.
    let r = s.get("/api/v1/history?user_id=alice").await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    let ev = &v["events"][0];
    assert_eq!(ev["event_id"], event_id);
    assert_eq!(ev["kind"], "inpaint");
    assert_eq!(ev["user_id"], "alice");
    assert_eq!(ev["width"], 64);
    assert_eq!(ev["result_url"], result_url);
    for k in ["original_url", "mask_url"] {
        let url = ev[k].as_str().unwrap();
        assert_eq!(s.get(url).await.status(), 200, "{k}");
    }
    assert!(v["events"].as_array().unwrap().len() == 1);
    // Someone else's history is not alice's.
    let v: serde_json::Value = s
        .get("/api/v1/history?user_id=bob")
        .await
        .json()
        .await
        .unwrap();
    assert!(v["events"].as_array().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn formats_strategies_and_mask_conventions() {
    let s = start(&[]).await;
    // JPEG out, non-square image: the aspect ratio is kept.
    let img = png(picture(96, 40));
    let mask = png(rect_mask(96, 40, (10, 10, 30, 30)));
    let r = s
        .inpaint(form(img.clone(), mask.clone()).text("format", "jpeg"))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/jpeg");
    assert_eq!(decode(&r.bytes().await.unwrap()).dimensions(), (96, 40));

    for strategy in ["auto", "original", "resize:32", "crop"] {
        let r = s
            .inpaint(form(img.clone(), mask.clone()).text("strategy", strategy))
            .await;
        assert_eq!(r.status(), 200, "{strategy}");
        assert_eq!(decode(&r.bytes().await.unwrap()).dimensions(), (96, 40));
    }

    // WebP and JPEG inputs.
    for format in [ImageFormat::WebP, ImageFormat::Jpeg] {
        let r = s
            .inpaint(form(encode(picture(96, 40), format), mask.clone()))
            .await;
        assert_eq!(r.status(), 200, "{format:?}");
    }

    // An RGBA brush layer: transparent keeps, painted (any alpha) fills.
    let layer = RgbaImage::from_fn(96, 40, |x, _| {
        if x < 20 {
            Rgba([255, 0, 72, 200])
        } else {
            Rgba([0, 0, 0, 0])
        }
    });
    let r = s.inpaint(form(img.clone(), png(layer))).await;
    assert_eq!(r.status(), 200);
    let ratio: f64 = r.headers()["x-hole-ratio"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((ratio - 20.0 / 96.0).abs() < 1e-6, "{ratio}");

    // An empty mask returns the input.
    let r = s
        .inpaint(form(img.clone(), png(rect_mask(96, 40, (0, 0, 0, 0)))))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-strategy"], "none");
    assert_eq!(decode(&r.bytes().await.unwrap()), decode(&img));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconstruct_keeps_the_seed_contract_without_its_bugs() {
    let s = start(&[]).await;
    let (img, mask) = small_pair();
    let body = serde_json::json!({
        "original": format!("data:image/png;base64,{}", b64(&img)),
        "mask": format!("data:image/png;base64,{}", b64(&mask)),
        "user_id": "carol",
    });
    let call = || async {
        let r = s
            .client
            .post(format!("{}/reconstruct", s.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json::<serde_json::Value>().await.unwrap()
    };
    let a = call().await;
    let b = call().await;
    // Each request is its own event (the seed wrote every result to one fixed file).
    assert_ne!(a["event_id"], b["event_id"]);
    let url = a["result_url"].as_str().unwrap();
    assert!(url.starts_with("/images/"), "{url}");
    let out = decode(&s.get(url).await.bytes().await.unwrap());
    assert_eq!(out.dimensions(), (64, 48));
    assert_eq!(out.get_pixel(0, 0), decode(&img).get_pixel(0, 0));
    let v: serde_json::Value = s
        .get("/api/v1/history?user_id=carol&limit=1")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["events"].as_array().unwrap().len(), 1);
    assert_eq!(v["events"][0]["event_id"], b["event_id"]);
    // Paging: the next page starts after the last event of this one.
    let next = v["next_before"].as_str().unwrap();
    let v: serde_json::Value = s
        .get(&format!("/api/v1/history?user_id=carol&before={next}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["events"][0]["event_id"], a["event_id"]);

    // Without an image store the result comes back inline.
    let s = start(&["--images", "none"]).await;
    let r = s
        .client
        .post(format!("{}/reconstruct", s.url))
        .json(&body)
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(v["result_url"]
        .as_str()
        .unwrap()
        .starts_with("data:image/png;base64,"));
}

/// A valid PNG header for `w`×`h` and the start of its pixel data, which must never be read.
fn png_bomb(w: u32, h: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for &b in bytes {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(w.to_be_bytes());
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]); // 8-bit RGB
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    out.extend(13u32.to_be_bytes());
    out.extend(&ihdr);
    out.extend(crc32(&ihdr).to_be_bytes());
    // The start of a long IDAT: a decoder would inflate gigabytes from here.
    out.extend(1_000_000u32.to_be_bytes());
    out.extend(b"IDAT\x78\x9c");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_json_4xx_and_the_server_keeps_serving() {
    let s = start(&["--max-upload-mb", "1", "--max-pixels", "20000"]).await;
    let (img, mask) = small_pair();
    let post = |url: &'static str| s.client.post(format!("{}{url}", s.url));

    let cases: Vec<(&str, reqwest::multipart::Form, u16, &str)> = vec![
        (
            "not an image",
            form(b"hello, world".to_vec(), mask.clone()),
            400,
            "bad_image",
        ),
        (
            "truncated image",
            form(img[..img.len() / 2].to_vec(), mask.clone()),
            400,
            "bad_image",
        ),
        (
            "empty image",
            form(Vec::new(), mask.clone()),
            400,
            "empty_field",
        ),
        (
            "mask size differs",
            form(img.clone(), png(rect_mask(32, 32, (0, 0, 8, 8)))),
            422,
            "mask_size_mismatch",
        ),
        (
            "decompression bomb",
            form(png_bomb(100_000, 100_000), mask.clone()),
            413,
            "image_too_large",
        ),
        (
            "too many pixels",
            form(
                png(picture(200, 150)),
                png(rect_mask(200, 150, (0, 0, 9, 9))),
            ),
            413,
            "image_too_large",
        ),
        (
            "missing mask",
            reqwest::multipart::Form::new()
                .part("image", reqwest::multipart::Part::bytes(img.clone())),
            400,
            "missing_field",
        ),
        (
            "bad strategy",
            form(img.clone(), mask.clone()).text("strategy", "magic"),
            400,
            "bad_argument",
        ),
        (
            "bad format",
            form(img.clone(), mask.clone()).text("format", "gif"),
            400,
            "bad_argument",
        ),
        (
            "body over the limit",
            form(vec![0u8; 1_500_000], mask.clone()),
            413,
            "body_too_large",
        ),
    ];
    for (what, f, status, code) in cases {
        let r = s.inpaint(f).await;
        assert_eq!(error_code(r).await, (status, code.to_owned()), "{what}");
    }

    // Wrong content types (JSON is IOPaint's shape: `iopaints_json_request_gets_the_filled_image`).
    let r = post("/api/v1/inpaint")
        .header("content-type", "text/plain")
        .body("image=x")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (415, "unsupported_media_type".into()));
    let r = post("/reconstruct")
        .body("original=x")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (415, "unsupported_media_type".into()));

    // /reconstruct's own bad input.
    let data = |b: &[u8]| format!("data:image/png;base64,{}", b64(b));
    let bad_json: Vec<(serde_json::Value, u16, &str)> = vec![
        (
            serde_json::json!({"original": data(&img)}),
            400,
            "missing_field",
        ),
        (
            serde_json::json!({"original": "http://example.com/x.png", "mask": data(&mask)}),
            400,
            "bad_data_url",
        ),
        (
            serde_json::json!({"original": "data:image/png;base64,@@@", "mask": data(&mask)}),
            400,
            "bad_data_url",
        ),
        (
            serde_json::json!({"original": data(b"nope"), "mask": data(&mask)}),
            400,
            "bad_image",
        ),
        (serde_json::json!([1, 2]), 400, "bad_request"),
    ];
    for (body, status, code) in bad_json {
        let r = post("/reconstruct").json(&body).send().await.unwrap();
        assert_eq!(error_code(r).await, (status, code.to_owned()), "{body}");
    }
    let r = post("/reconstruct")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (400, "bad_request".into()));
    let big = serde_json::json!({"original": "A".repeat(1_200_000), "mask": ""});
    let r = post("/reconstruct").json(&big).send().await.unwrap();
    assert_eq!(error_code(r).await, (413, "body_too_large".into()));

    // Other endpoints' bad input.
    for (path, status, code) in [
        ("/images/../../etc/passwd", 404, "not_found"),
        ("/images/not-a-key.png", 400, "bad_key"),
        (
            "/images/0000000000000000000000000000000000000000000000000000000000000000.png",
            404,
            "not_found",
        ),
        ("/api/v1/history", 400, "missing_field"),
        ("/api/v1/history?user_id=a&before=xyz", 400, "bad_argument"),
        ("/api/v1/history?user_id=a&limit=-1", 400, "bad_query"),
        ("/no/such/page", 404, "not_found"),
        ("/api/v1/inpaint", 405, "method_not_allowed"),
    ] {
        let r = s.get(path).await;
        assert_eq!(error_code(r).await, (status, code.to_owned()), "{path}");
    }

    // Still serving.
    assert_eq!(s.get("/healthz").await.status(), 200);
    let r = s.inpaint(form(img, mask)).await;
    assert_eq!(r.status(), 200);
    let m = s.metrics().await;
    assert!(
        metric(
            &m,
            "http_requests_total{method=\"POST\",route=\"/api/v1/inpaint\",status=\"413\"}"
        ) >= 3.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_history_sink_never_fails_the_request() {
    let s = start_with(&[], |state| state.history = Some(Arc::new(FailingSink))).await;
    let (img, mask) = small_pair();
    let r = s.inpaint(form(img, mask)).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-event-id"));
    let m = s.metrics().await;
    assert_eq!(metric(&m, "history_record_failures_total"), 1.0, "{m}");
    // A sink that cannot be queried: no history endpoint.
    let r = s.get("/api/v1/history?user_id=a").await;
    assert_eq!(error_code(r).await, (501, "history_unavailable".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_none_answers_501_and_fanout_reads_from_the_first_queryable_sink() {
    let s = start(&["--history", "none"]).await;
    let (img, mask) = small_pair();
    assert_eq!(
        s.inpaint(form(img.clone(), mask.clone())).await.status(),
        200
    );
    let r = s.get("/api/v1/history?user_id=anonymous").await;
    assert_eq!(error_code(r).await, (501, "history_unavailable".into()));

    let dir = tempfile::tempdir().unwrap();
    let a = format!("sqlite:{}", dir.path().join("a.db").display());
    let b = format!("sqlite:{}", dir.path().join("b.db").display());
    let s = start(&["--history", &a, "--history", &b]).await;
    let r = s.inpaint(form(img, mask).text("user_id", "dan")).await;
    let id = r.headers()["x-event-id"].to_str().unwrap().to_owned();
    for url in [&a, &b] {
        let spool = history_sink::SpoolOptions::new(dir.path().join("spool"));
        let sink = history_sink::sink_from_url(url, &spool).await.unwrap();
        let got = sink.get(id.parse().unwrap()).await.unwrap();
        assert_eq!(got.unwrap().user_id, "dan", "{url}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_metrics_openapi_and_page() {
    let s = start(&["--cors-origin", "http://example.com"]).await;
    let r = s.get("/healthz").await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = s.get("/readyz").await.json().await.unwrap();
    assert_eq!(v["status"], "ready");
    assert_eq!(v["model"]["model_id"], "tiny");
    assert_eq!(v["model"]["device"], "cpu");
    assert_eq!(v["model"]["ensemble"], "flips");

    let (img, mask) = small_pair();
    assert_eq!(s.inpaint(form(img, mask)).await.status(), 200);
    let r = s.get("/metrics").await;
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let m = r.text().await.unwrap();
    for series in [
        "http_requests_total{method=\"POST\",route=\"/api/v1/inpaint\",status=\"200\"}",
        "http_request_duration_seconds_count{route=\"/api/v1/inpaint\"}",
        "inference_duration_seconds_count",
        "inference_batch_size_count",
    ] {
        assert!(metric(&m, series) >= 1.0, "{series} in\n{m}");
    }
    assert!(m.contains("\ninference_queue_depth 0\n"), "{m}");
    assert!(m.contains("\ninference_queue_capacity 16\n"), "{m}");

    let v: serde_json::Value = s.get("/api/v1/openapi.json").await.json().await.unwrap();
    assert_eq!(v["openapi"], "3.1.0");
    for path in [
        "/api/v1/inpaint",
        "/reconstruct",
        "/images/{key}",
        "/api/v1/history",
        "/healthz",
        "/readyz",
        "/metrics",
        "/api/v1/openapi.json",
        "/api/v1/finetune",
        "/api/v1/finetune/{job_id}",
        "/api/v1/finetune/{job_id}/events",
        "/api/v1/models",
    ] {
        assert!(v["paths"].get(path).is_some(), "{path} undocumented");
    }

    let r = s.get("/").await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = r.text().await.unwrap();
    assert_eq!(html, include_str!("../static/index.html"));
    assert!(
        !html.contains("https://"),
        "the page must not load from a CDN"
    );
    for (path, ct) in [("/app.js", "text/javascript"), ("/app.css", "text/css")] {
        let r = s.get(path).await;
        assert_eq!(r.status(), 200);
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with(ct));
    }

    // CORS for the configured origin only, with the custom headers readable.
    let r = s
        .client
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/api/v1/inpaint", s.url),
        )
        .header("origin", "http://example.com")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "http://example.com"
    );
    let r = s
        .client
        .get(format!("{}/healthz", s.url))
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert!(!r.headers().contains_key("access-control-allow-origin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_cannot_load_is_reported_not_ready() {
    let s = start(&["--model", "/nonexistent/model.safetensors", "--no-wait"]).await;
    assert_eq!(s.get("/healthz").await.status(), 200);
    // Loading fails quickly; until then the answer is also 503.
    for _ in 0..100 {
        let r = s.get("/readyz").await;
        assert_eq!(r.status(), 503);
        assert!(r.headers().contains_key("retry-after"));
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["code"], "not_ready");
        if matches!(
            s.state.backend.readiness().await,
            Err(server_example::AppError::NotReady(e)) if e.contains("nonexistent")
        ) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (img, mask) = small_pair();
    let r = s.inpaint(form(img, mask)).await;
    assert_eq!(error_code(r).await, (503, "not_ready".into()));
}

/// The real binary: flags, the printed URL, and the default SQLite history under --data-dir.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_starts_prints_its_url_and_serves() {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_server-example"))
        .args(["--bind", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .arg("--model")
        .arg(tiny_model())
        .args(["--workers", "1", "--queue", "4"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
        .trim_end_matches('/')
        .to_owned();
    let client = reqwest::Client::new();
    let mut ready = false;
    for _ in 0..200 {
        if let Ok(r) = client.get(format!("{url}/readyz")).send().await {
            if r.status() == 200 {
                ready = true;
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(ready);
    let (img, mask) = small_pair();
    let r = client
        .post(format!("{url}/api/v1/inpaint"))
        .multipart(form(img, mask))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(dir.path().join("history.db").exists());
    assert!(dir.path().join("images").is_dir());
    child.kill().await.unwrap();
}

/// A binary that can never become ready exits instead of lingering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_exits_when_the_model_cannot_load() {
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_server-example"))
            .args([
                "--bind",
                "127.0.0.1:0",
                "--model",
                "/nonexistent.safetensors",
            ])
            .arg("--data-dir")
            .arg(dir.path())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("still running")
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent.safetensors"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workers_average_the_flipped_views_unless_told_otherwise() {
    // `/readyz` describes the inpainter the workers share, so it says which ensemble they
    // run; the default (flips) is checked in `health_readiness_metrics_openapi_and_page`.
    // (That the ensembles change fills is tested on the library: this random tiny model's
    // fill rounds to the same pixels whichever way the photo is flipped.)
    let s = start(&["--ensemble", "single", "--precision", "bf16"]).await;
    let v: serde_json::Value = s.get("/readyz").await.json().await.unwrap();
    assert_eq!(v["model"]["ensemble"], "single");
    // And `--precision`, which the workers' shared inpainter resolved.
    assert_eq!(v["model"]["precision"], "bf16");
    let (img, mask) = small_pair();
    assert_eq!(s.inpaint(form(img, mask)).await.status(), 200);
    let err =
        <server_example::Config as clap::Parser>::try_parse_from(["s", "--ensemble", "dihedral"])
            .unwrap_err()
            .to_string();
    assert!(err.contains("dihedral") && err.contains("flips"), "{err}");
}

/// The body IOPaint's web client sends (`web_app/src/lib/api.ts`, `inpaint()`), field for
/// field with its default settings, and the image and mask as its `convertToBase64` makes
/// them (`FileReader.readAsDataURL`).
fn iopaint_body(image: &str, mask: &str, hd_strategy: &str) -> serde_json::Value {
    serde_json::json!({
        "image": image,
        "mask": mask,
        "ldm_steps": 30,
        "ldm_sampler": "ddim",
        "zits_wireframe": true,
        "cv2_flag": "INPAINT_NS",
        "cv2_radius": 5,
        "hd_strategy": hd_strategy,
        "hd_strategy_crop_triger_size": 640,
        "hd_strategy_crop_margin": 128,
        "hd_trategy_resize_imit": 2048,
        "prompt": "",
        "negative_prompt": "",
        "use_croper": false,
        "croper_x": 0,
        "croper_y": 0,
        "croper_height": 512,
        "croper_width": 512,
        "use_extender": false,
        "extender_x": 0,
        "extender_y": 0,
        "extender_height": 512,
        "extender_width": 512,
        "sd_mask_blur": 12,
        "sd_strength": 1.0,
        "sd_steps": 50,
        "sd_guidance_scale": 7.5,
        "sd_sampler": "DPM++ 2M",
        "sd_seed": -1,
        "sd_match_histograms": false,
        "sd_lcm_lora": false,
        "paint_by_example_example_image": null,
        "p2p_image_guidance_scale": 1.5,
        "enable_controlnet": false,
        "controlnet_conditioning_scale": 0.4,
        "controlnet_method": "",
        "enable_brushnet": false,
        "brushnet_method": "",
        "brushnet_conditioning_scale": 1.0,
        "enable_powerpaint_v2": false,
        "powerpaint_task": "text-guided",
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iopaints_json_request_gets_the_filled_image() {
    let s = start(&[]).await;
    let (img, mask) = small_pair();
    let data_url = |bytes: &[u8], ct: &str| format!("data:{ct};base64,{}", b64(bytes));
    let post = |body: serde_json::Value| {
        s.client
            .post(format!("{}/api/v1/inpaint", s.url))
            .json(&body)
            .send()
    };
    let orig = decode(&img);
    for (strategy, ours) in [
        ("Crop", "crop"),
        ("Original", "original"),
        ("Resize", "resize:1280"),
    ] {
        let body = iopaint_body(
            &data_url(&img, "image/png"),
            &data_url(&mask, "image/png"),
            strategy,
        );
        let r = post(body).await.unwrap();
        assert_eq!(r.status(), 200, "{strategy}");
        assert_eq!(r.headers()["content-type"], "image/png");
        let used = r.headers()["x-strategy"].to_str().unwrap().to_owned();
        assert!(
            used.starts_with(ours.split(':').next().unwrap()),
            "{strategy} → {used}"
        );
        let out = decode(&r.bytes().await.unwrap());
        assert_eq!(out.dimensions(), orig.dimensions());
        assert_eq!(
            out.get_pixel(0, 0),
            orig.get_pixel(0, 0),
            "outside the hole"
        );
        assert_ne!(
            out.get_pixel(28, 24),
            orig.get_pixel(28, 24),
            "inside the hole"
        );
    }
    // Raw base64 as scripts send it, and a JPEG comes back as a JPEG.
    let jpeg = encode(picture(64, 48), ImageFormat::Jpeg);
    let r = post(serde_json::json!({"image": b64(&jpeg), "mask": b64(&mask)}))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/jpeg");
    // IOPaint's clients never edit further: no master is made for them.
    assert!(r.headers().get("x-master-url").is_none());
    // Bad input is named.
    let r = post(serde_json::json!({"image": "not base64!", "mask": b64(&mask)}))
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (400, "bad_base64".into()));
    let r = post(serde_json::json!({"image": "data:image/png;base64,@@@", "mask": b64(&mask)}))
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (400, "bad_data_url".into()));
    let r = post(iopaint_body(&b64(&img), &b64(&mask), "Tile"))
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (400, "bad_argument".into()));
    let r = post(serde_json::json!({"mask": b64(&mask)})).await.unwrap();
    assert_eq!(error_code(r).await, (400, "missing_field".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mask_grow_widens_or_narrows_the_filled_area() {
    let s = start(&[]).await;
    let (img, mask) = small_pair(); // the hole is x 20..36, y 16..32
    let orig = decode(&img);
    let fill = |grow: &str| {
        let form = form(img.clone(), mask.clone()).text("mask_grow", grow.to_owned());
        s.inpaint(form)
    };
    let changed =
        |out: &image::RgbImage, x: u32, y: u32| out.get_pixel(x, y) != orig.get_pixel(x, y);

    let out = decode(&fill("0").await.bytes().await.unwrap());
    assert!(
        !changed(&out, 18, 24) && !changed(&out, 37, 24),
        "0: the mask as drawn"
    );
    let out = decode(&fill("3").await.bytes().await.unwrap());
    assert!(
        changed(&out, 18, 24) && changed(&out, 38, 24),
        "3 px wider each side"
    );
    assert!(
        !changed(&out, 15, 24) && !changed(&out, 28, 12),
        "but no more"
    );
    let out = decode(&fill("-3").await.bytes().await.unwrap());
    assert!(
        !changed(&out, 21, 24) && changed(&out, 28, 24),
        "3 px narrower each side"
    );
    for bad in ["17", "-17", "two", "1.5"] {
        assert_eq!(
            error_code(fill(bad).await).await,
            (400, "bad_argument".into()),
            "{bad}"
        );
    }
    // JSON bodies take it as a number.
    let r = s
        .client
        .post(format!("{}/api/v1/inpaint", s.url))
        .json(&serde_json::json!({"image": b64(&img), "mask": b64(&mask), "mask_grow": 3}))
        .send()
        .await
        .unwrap();
    let out = decode(&r.bytes().await.unwrap());
    assert!(changed(&out, 18, 24));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_photo_comes_back_in_its_format_with_its_profile_and_without_gps() {
    let s = start(&[]).await;
    let jpeg = p3_jpeg_with_exif(64, 48);
    let mask = png(rect_mask(64, 48, (20, 16, 36, 32)));
    assert!(exif_has_gps(&jpeg), "the fixture has GPS");

    let r = s.inpaint(form(jpeg.clone(), mask.clone())).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/jpeg");
    let out = r.bytes().await.unwrap();
    assert_eq!(
        jpeg_icc(&out),
        Some(display_p3_icc()),
        "ICC copied verbatim"
    );
    let fields = exif_fields(&out);
    let field = |name: &str| {
        fields
            .iter()
            .find(|(t, _)| t == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(field("Make").as_deref(), Some("\"TestCam\""));
    assert_eq!(field("DateTime").as_deref(), Some("2026-12-05 10:00:00"));
    assert!(!exif_has_gps(&out), "GPS removed by default: {fields:?}");

    let r = s
        .inpaint(form(jpeg.clone(), mask.clone()).text("keep_gps", "true"))
        .await;
    let out = r.bytes().await.unwrap();
    assert!(exif_has_gps(&out), "keep_gps=true keeps it");

    // `format` still overrides, and a PNG carries the same profile and EXIF.
    let r = s
        .inpaint(form(jpeg.clone(), mask.clone()).text("format", "png"))
        .await;
    assert_eq!(r.headers()["content-type"], "image/png");
    let out = r.bytes().await.unwrap();
    assert_eq!(jpeg_icc(&out), Some(display_p3_icc()));
    assert!(!exif_has_gps(&out) && !exif_fields(&out).is_empty());

    // PNG in, PNG out; WebP in, PNG out (no lossy WebP encoder is linked).
    let (img, mask) = small_pair();
    let r = s.inpaint(form(img, mask.clone())).await;
    assert_eq!(r.headers()["content-type"], "image/png");
    let webp = encode(picture(64, 48), ImageFormat::WebP);
    let r = s.inpaint(form(webp, mask)).await;
    assert_eq!(r.headers()["content-type"], "image/png");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_continues_from_the_lossless_master_and_names_its_parent() {
    let s = start(&[]).await;
    let jpeg = p3_jpeg_with_exif(64, 48);
    let mask1 = png(rect_mask(64, 48, (4, 4, 12, 12)));
    let mask2 = png(rect_mask(64, 48, (40, 30, 50, 40)));
    let r = s.inpaint(form(jpeg, mask1).text("user_id", "ann")).await;
    assert_eq!(r.status(), 200);
    let first = r.headers()["x-event-id"].to_str().unwrap().to_owned();
    let result_url = r.headers()["x-result-url"].to_str().unwrap().to_owned();
    let master_url = r.headers()["x-master-url"].to_str().unwrap().to_owned();
    assert!(result_url.ends_with(".jpg") && master_url.ends_with(".png"));
    assert_eq!(
        r.bytes().await.unwrap(),
        s.get(&result_url).await.bytes().await.unwrap()
    );
    let master = s.get(&master_url).await.bytes().await.unwrap().to_vec();
    assert_eq!(
        jpeg_icc(&master),
        Some(display_p3_icc()),
        "the master keeps the profile"
    );

    // The next edit sends the master and names its parent; the download stays a JPEG.
    let next = |user: &str, parent: &str| {
        form(master.clone(), mask2.clone())
            .text("user_id", user.to_owned())
            .text("parent_event_id", parent.to_owned())
            .text("format", "jpeg")
    };
    let r = s.inpaint(next("ann", &first)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/jpeg");
    assert_eq!(r.headers()["x-parent-event-id"], first.as_str());
    let second = r.headers()["x-event-id"].to_str().unwrap().to_owned();
    // Outside both holes the master's pixels come through the second edit unchanged.
    let again = s
        .inpaint(
            form(master.clone(), mask2.clone())
                .text("user_id", "ann")
                .text("parent_event_id", first.clone()),
        )
        .await;
    assert_eq!(again.headers()["content-type"], "image/png");
    let again = decode(&again.bytes().await.unwrap());
    let m = decode(&master);
    assert_eq!(again.get_pixel(30, 5), m.get_pixel(30, 5));

    let history: serde_json::Value = s
        .get("/api/v1/history?user_id=ann")
        .await
        .json()
        .await
        .unwrap();
    let events = history["events"].as_array().unwrap();
    let by_id = |id: &str| events.iter().find(|e| e["event_id"] == id).unwrap();
    assert_eq!(by_id(&second)["parent_event_id"], first.as_str());
    assert!(by_id(&first).get("parent_event_id").is_none());

    // Someone else's event is no parent of yours, and a parent must be an event id.
    let r = s.inpaint(next("bob", &first)).await;
    assert_eq!(error_code(r).await, (404, "unknown_parent".into()));
    let r = s.inpaint(next("ann", "not-a-uuid")).await;
    assert_eq!(error_code(r).await, (400, "bad_argument".into()));
    let r = s
        .inpaint(next("ann", &uuid::Uuid::now_v7().to_string()))
        .await;
    assert_eq!(error_code(r).await, (404, "unknown_parent".into()));

    // A history that cannot be read back cannot check a parent: the edit goes on, unlinked.
    let blind = start(&["--history", "none"]).await;
    let r = blind.inpaint(next("ann", &first)).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("x-parent-event-id").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turned_photo_comes_back_upright_with_orientation_1() {
    let s = start(&[]).await;
    // Stored 64×48, shown turned a quarter right: 48×64.
    let jpeg = jpeg_with_exif(64, 48, exif_oriented(6));
    let mask = png(rect_mask(48, 64, (10, 20, 30, 40)));
    let r = s.inpaint(form(jpeg, mask)).await;
    assert_eq!(r.status(), 200);
    let out = r.bytes().await.unwrap();
    assert_eq!(decode(&out).dimensions(), (48, 64));
    let exif = exif::Reader::new()
        .read_from_container(&mut std::io::Cursor::new(&out[..]))
        .unwrap();
    let orientation = exif.get_field(exif::Tag::Orientation, exif::In::PRIMARY);
    assert_eq!(orientation.and_then(|f| f.value.get_uint(0)), Some(1));
    assert!(exif.get_field(exif::Tag::Make, exif::In::PRIMARY).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_may_pick_its_ensemble_and_metrics_time_each() {
    // The shipped model: the tiny random one fills alike whichever way a photo is flipped.
    let model = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/default.safetensors");
    let s = start(&["--ensemble", "flips", "--model", model]).await;
    let (img, mask) = small_pair();
    let fill = |ensemble: Option<&str>| {
        let mut f = form(img.clone(), mask.clone());
        if let Some(e) = ensemble {
            f = f.text("ensemble", e.to_owned());
        }
        s.inpaint(f)
    };
    let single = fill(Some("single")).await;
    assert_eq!(single.headers()["x-ensemble"], "single");
    let single = single.bytes().await.unwrap();
    let flips = fill(None).await;
    assert_eq!(flips.headers()["x-ensemble"], "flips");
    assert_ne!(single, flips.bytes().await.unwrap(), "a different fill");
    assert_eq!(fill(Some("mirror")).await.headers()["x-ensemble"], "mirror");
    let text = s.metrics().await;
    for e in ["single", "mirror", "flips"] {
        let series = format!("inference_ensemble_duration_seconds_count{{ensemble=\"{e}\"}}");
        assert_eq!(metric(&text, &series), 1.0, "{e}");
    }
    let r = fill(Some("many")).await;
    assert_eq!(error_code(r).await, (400, "bad_argument".into()));
}
