//! `--remote-model`: a web tier without a model in front of a model tier, two real servers.

mod common;

use std::time::{Duration, Instant};

use common::process::Server;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_web_tier_sends_inference_to_the_model_tier() {
    let model = start(&["--history", "none", "--images", "none"]).await;
    let web = start(&["--remote-model", &model.url]).await;

    let v: serde_json::Value = web.get("/readyz").await.json().await.unwrap();
    assert_eq!(v["model"]["model_id"], "tiny", "{v}");

    let (img, mask) = small_pair();
    let r = web
        .inpaint(form(img.clone(), mask.clone()).text("user_id", "erin"))
        .await;
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert_eq!(h["x-strategy"], "original");
    assert!(
        h["x-inference-ms"]
            .to_str()
            .unwrap()
            .parse::<f64>()
            .unwrap()
            > 0.0
    );
    let out = decode(&r.bytes().await.unwrap());
    let orig = decode(&img);
    assert_eq!(out.get_pixel(0, 0), orig.get_pixel(0, 0));
    assert_ne!(out.get_pixel(28, 24), orig.get_pixel(28, 24));

    // The web tier keeps the history and the images; the model tier did the work.
    let v: serde_json::Value = web
        .get("/api/v1/history?user_id=erin")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["events"][0]["event_id"],
        h["x-event-id"].to_str().unwrap()
    );
    assert_eq!(v["events"][0]["model_id"], "tiny");
    assert_eq!(
        web.get(h["x-result-url"].to_str().unwrap()).await.status(),
        200
    );
    let m = model.metrics().await;
    assert_eq!(
        metric(
            &m,
            "http_requests_total{method=\"POST\",route=\"/api/v1/inpaint\",status=\"200\"}"
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(&web.metrics().await, "inference_batch_size_count"),
        0.0
    );

    // The seed contract works through the web tier too.
    let b64 = |b: &[u8]| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(b)
    };
    let r = web
        .client
        .post(format!("{}/reconstruct", web.url))
        .json(&serde_json::json!({
            "original": format!("data:image/png;base64,{}", b64(&img)),
            "mask": format!("data:image/png;base64,{}", b64(&mask)),
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Errors found by the model tier come back as they were.
    let r = web.inpaint(form(img[..img.len() / 2].to_vec(), mask)).await;
    assert_eq!(error_code(r).await, (400, "bad_image".into()));

    // A model tier that is gone: 502 from the web tier, which stays up.
    drop(model);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let (img, mask) = small_pair();
    let r = web.inpaint(form(img, mask)).await;
    assert_eq!(error_code(r).await, (502, "remote_unavailable".into()));
    assert_eq!(web.get("/readyz").await.status(), 503);
    assert_eq!(web.get("/healthz").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_web_tier_signs_in_to_its_model_tier_with_a_service_token() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    let service = server_example::auth::tokens::add(&tokens, "web", None, true).unwrap();
    let user = server_example::auth::tokens::add(&tokens, "erin", None, false).unwrap();
    let auth = format!("tokens:{}", tokens.display());
    let model = start(&["--history", "none", "--images", "none", "--auth", &auth]).await;
    let (img, mask) = small_pair();

    // Without the token the model tier refuses the web tier: the operator's error, 502.
    let anonymous = start(&["--remote-model", &model.url]).await;
    let r = anonymous.inpaint(form(img.clone(), mask.clone())).await;
    assert_eq!(error_code(r).await, (502, "remote_unauthorized".into()));

    let web = start(&[
        "--remote-model",
        &model.url,
        "--remote-model-token",
        &service,
    ])
    .await;
    let r = web
        .inpaint(form(img.clone(), mask.clone()).text("user_id", "erin"))
        .await;
    assert_eq!(r.status(), 200);

    // The service token acts for the user it names; a user's own token may not.
    let act_for = |token: &str| {
        model
            .client
            .post(format!("{}/api/v1/inpaint", model.url))
            .bearer_auth(token.to_owned())
            .header("x-partialconv-user", "frank")
            .multipart(form(img.clone(), mask.clone()))
            .send()
    };
    assert_eq!(act_for(&service).await.unwrap().status(), 200);
    let r = act_for(&user).await.unwrap();
    assert_eq!(error_code(r).await, (403, "forbidden".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_new_fields_reach_the_model_tier_and_a_jpeg_gets_its_master() {
    let model = start(&["--history", "none", "--images", "none"]).await;
    let web = start(&["--remote-model", &model.url]).await;
    let jpeg = p3_jpeg_with_exif(64, 48);
    let mask = png(rect_mask(64, 48, (20, 16, 36, 32)));
    let r = web
        .inpaint(
            form(jpeg.clone(), mask.clone())
                .text("user_id", "erin")
                .text("ensemble", "single")
                .text("keep_gps", "true")
                .text("mask_grow", "2"),
        )
        .await;
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    // The model tier filled it with the ensemble asked for, and the grown mask.
    assert_eq!(h["x-ensemble"], "single");
    let ratio: f64 = h["x-hole-ratio"].to_str().unwrap().parse().unwrap();
    assert!(
        (ratio - (20.0 * 20.0) / (64.0 * 48.0)).abs() < 0.03,
        "{ratio}"
    );
    // The download is a JPEG made here from the model tier's lossless master.
    assert_eq!(h["content-type"], "image/jpeg");
    let out = r.bytes().await.unwrap();
    assert_eq!(jpeg_icc(&out), Some(display_p3_icc()));
    assert!(exif_has_gps(&out), "keep_gps passed through");
    let master = web
        .get(h["x-master-url"].to_str().unwrap())
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(
        image::guess_format(&master).unwrap(),
        image::ImageFormat::Png
    );
    assert_eq!(jpeg_icc(&master), Some(display_p3_icc()));
    let m = model.metrics().await;
    assert_eq!(
        metric(
            &m,
            "inference_ensemble_duration_seconds_count{ensemble=\"single\"}"
        ),
        1.0
    );

    // A continued edit names its parent; the web tier checks it and passes it on.
    let first = h["x-event-id"].to_str().unwrap().to_owned();
    let r = web
        .inpaint(
            form(master.to_vec(), mask)
                .text("user_id", "erin")
                .text("parent_event_id", first.clone())
                .text("format", "jpeg"),
        )
        .await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = web
        .get("/api/v1/history?user_id=erin")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["events"][0]["parent_event_id"], first.as_str());
}

/// The inpaint requests a model tier has answered with 200.
async fn served(tier: &Server) -> f64 {
    metric(
        &tier.metrics().await,
        "http_requests_total{method=\"POST\",route=\"/api/v1/inpaint\",status=\"200\"}",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_web_tier_with_two_model_tiers_keeps_answering_when_one_is_killed() {
    // Processes of the real binary, so that one can die as a machine does: SIGKILL.
    let args = ["--history", "none", "--images", "none"];
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, mut b) = tokio::join!(
        Server::start(dir_a.path(), &args),
        Server::start(dir_b.path(), &args)
    );
    // `b` with a trailing slash, as an operator may write it.
    let web = start(&["--remote-model", &format!("{},{}/", a.url, b.url)]).await;
    let (img, mask) = small_pair();

    // Both tiers take a share. Until the first poll has seen both ready, requests may all go
    // to one, hence a few tries.
    let deadline = Instant::now() + Duration::from_secs(20);
    while served(&a).await == 0.0 || served(&b).await == 0.0 {
        assert!(
            Instant::now() < deadline,
            "requests never reached both tiers"
        );
        let r = web.inpaint(form(img.clone(), mask.clone())).await;
        assert_eq!(r.status(), 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Right after the kill the web tier still thinks `b` ready; a request that finds it gone
    // is sent again, to `a`.
    b.kill();
    let before = served(&a).await;
    for i in 0..10 {
        let r = web.inpaint(form(img.clone(), mask.clone())).await;
        assert_eq!(r.status(), 200, "request {i} after the kill");
        assert_eq!(web.get("/readyz").await.status(), 200);
    }
    assert_eq!(served(&a).await, before + 10.0);
}
