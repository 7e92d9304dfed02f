//! The web page in headless Chromium, driven over WebDriver (chromedriver).
//!
//! Needs the Debian packages `chromium` and `chromium-driver`; the test fails without them.
//! It speaks the W3C WebDriver protocol directly (a few JSON calls), so no browser-automation
//! crate is needed. The screenshot is saved under `$CARGO_TARGET_TMPDIR/browser/`.

mod common;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use image::GrayImage;
use serde_json::{json, Value};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn chromium() -> PathBuf {
    let p = std::env::var_os("CHROMIUM").map_or_else(|| "/usr/bin/chromium".into(), PathBuf::from);
    assert!(
        p.exists(),
        "{} not found: apt-get install chromium chromium-driver",
        p.display()
    );
    p
}

struct Driver {
    child: Child,
    http: reqwest::Client,
    base: String,
    session: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    async fn start(profile: &std::path::Path) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(std::env::var("CHROMEDRIVER").unwrap_or("chromedriver".into()))
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver not found: apt-get install chromium chromium-driver");
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let mut driver = Driver {
            child,
            http,
            base,
            session: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while driver
            .http
            .get(format!("{}/status", driver.base))
            .send()
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium(),
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run",
                    format!("--user-data-dir={}", profile.display()),
                    "--window-size=1400,1000",
                ],
            },
        }}});
        let v = driver.call("POST", "/session", caps).await;
        driver.session = v["sessionId"].as_str().unwrap().to_owned();
        driver
    }

    async fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let url = if path == "/session" {
            format!("{}/session", self.base)
        } else {
            format!("{}/session/{}{path}", self.base, self.session)
        };
        let req = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(&body),
        };
        let r = req.send().await.unwrap();
        let status = r.status();
        let v: Value = r.json().await.unwrap();
        assert!(status.is_success(), "WebDriver {method} {path}: {v}");
        v["value"].clone()
    }

    async fn find(&self, css: &str) -> Value {
        let v = self
            .call(
                "POST",
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        assert!(v.get(ELEMENT).is_some(), "{css}: {v}");
        let mut el = serde_json::Map::new();
        el.insert(ELEMENT.to_owned(), v[ELEMENT].clone());
        Value::Object(el)
    }

    async fn click(&self, css: &str) {
        let el = self.find(css).await;
        let id = el[ELEMENT].as_str().unwrap().to_owned();
        self.call("POST", &format!("/element/{id}/click"), json!({}))
            .await;
    }

    async fn js(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
        .await
    }

    async fn js_async(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/async",
            json!({"script": script, "args": []}),
        )
        .await
    }

    async fn wait_for(&self, what: &str, script: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.js(script).await;
            if !v.is_null() && v != json!(false) {
                return v;
            }
            if Instant::now() > deadline {
                let status = self
                    .js("return document.getElementById('status').textContent")
                    .await;
                panic!("timed out waiting for {what}; page status: {status}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The element's centre in viewport coordinates. (WebDriver's element origin is the
    /// centre of the element's *visible* part, which moves when the page scrolls.)
    async fn centre(&self, css: &str) -> (f64, f64) {
        let v = self
            .js(&format!(
                "const r = document.querySelector('{css}').getBoundingClientRect();
                 return [r.left + r.width / 2, r.top + r.height / 2];"
            ))
            .await;
        (v[0].as_f64().unwrap(), v[1].as_f64().unwrap())
    }

    /// A pointer drag through `points` (offsets in CSS pixels from the element's centre).
    async fn drag(&self, css: &str, points: &[(i64, i64)]) {
        let (cx, cy) = self.centre(css).await;
        let at = |(x, y): (i64, i64), duration: u64| {
            json!({"type": "pointerMove", "duration": duration, "origin": "viewport",
                   "x": (cx + x as f64).round() as i64, "y": (cy + y as f64).round() as i64})
        };
        let mut actions = vec![
            at(points[0], 0),
            json!({"type": "pointerDown", "button": 0}),
        ];
        for &p in &points[1..] {
            actions.push(at(p, 50));
        }
        actions.push(json!({"type": "pointerUp", "button": 0}));
        self.pointer(actions).await;
    }

    async fn pointer(&self, actions: Vec<Value>) {
        self.call(
            "POST",
            "/actions",
            json!({"actions": [{"type": "pointer", "id": "mouse",
                "parameters": {"pointerType": "mouse"}, "actions": actions}]}),
        )
        .await;
    }

    async fn keys(&self, text: &str) {
        let mut actions = Vec::new();
        for c in text.chars() {
            actions.push(json!({"type": "keyDown", "value": c.to_string()}));
            actions.push(json!({"type": "keyUp", "value": c.to_string()}));
        }
        self.call(
            "POST",
            "/actions",
            json!({"actions": [{"type": "key", "id": "keyboard", "actions": actions}]}),
        )
        .await;
    }

    /// Clicks "Export mask" and reads the exported PNG back.
    async fn export_mask(&self) -> GrayImage {
        self.js("const a = document.getElementById('mask-download'); if (a) a.remove();")
            .await;
        self.click("#export-mask").await;
        self.wait_for(
            "the mask export",
            "return !!document.getElementById('mask-download')",
            Duration::from_secs(10),
        )
        .await;
        let b64 = self
            .js_async(
                "const done = arguments[arguments.length - 1];
                 fetch(document.getElementById('mask-download').href)
                   .then(r => r.blob())
                   .then(b => { const f = new FileReader();
                                f.onload = () => done(f.result.split(',')[1]);
                                f.readAsDataURL(b); });",
            )
            .await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap())
            .unwrap();
        std::fs::write(artifacts().join("mask-export.png"), &bytes).unwrap();
        image::load_from_memory(&bytes).unwrap().to_luma8()
    }

    /// Saves a screenshot as a test artifact.
    async fn screenshot(&self, name: &str) -> PathBuf {
        let shot = self.call("GET", "/screenshot", Value::Null).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot.as_str().unwrap())
            .unwrap();
        let path = artifacts().join(name);
        std::fs::write(&path, png).unwrap();
        path
    }
}

/// Where screenshots and the last exported mask go.
fn artifacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_brush_go_and_see_the_result() {
    let s = start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    // Larger than it is shown, so the page must scale for display and send full size.
    let (w, h) = (1600u32, 1200u32);
    let original = picture(w, h);
    let image_path = dir.path().join("photo.png");
    original.save(&image_path).unwrap();

    let d = Driver::start(&dir.path().join("profile")).await;
    d.call("POST", "/url", json!({"url": format!("{}/", s.url)}))
        .await;
    let file = d.find("#file").await;
    let file_id = file[ELEMENT].as_str().unwrap().to_owned();
    d.call(
        "POST",
        &format!("/element/{file_id}/value"),
        json!({"text": image_path.display().to_string()}),
    )
    .await;
    d.wait_for(
        "the image to load",
        "return document.body.dataset.state === 'ready'",
        Duration::from_secs(20),
    )
    .await;
    let rect = d
        .js(
            "const r = document.getElementById('mask').getBoundingClientRect();
             return [r.width, r.height];",
        )
        .await;
    let (cw, ch) = (rect[0].as_f64().unwrap(), rect[1].as_f64().unwrap());
    assert!(
        cw < w as f64,
        "shown at {cw} px wide: not scaled for display"
    );
    let scale = w as f64 / cw;
    // Offsets from the canvas centre in CSS pixels → image pixels.
    let to_image = |dx: f64, dy: f64| {
        (
            ((cw / 2.0 + dx) * scale) as u32,
            ((ch / 2.0 + dy) * scale) as u32,
        )
    };
    let white = |m: &GrayImage, (x, y): (u32, u32)| m.get_pixel(x, y)[0] == 255;

    // Stroke A across the middle; stroke B on the left.
    d.drag("#mask", &[(-60, 0), (0, 0), (60, 0)]).await;
    d.drag("#mask", &[(-150, -40), (-150, 0), (-150, 40)]).await;
    let a_mid = to_image(0.0, 0.0);
    let b_mid = to_image(-150.0, 0.0);
    let far = to_image(150.0, -100.0);
    let m = d.export_mask().await;
    d.screenshot("strokes.png").await;
    eprintln!("canvas {cw}×{ch}, A {a_mid:?}, B {b_mid:?}, far {far:?}");
    assert_eq!(m.dimensions(), (w, h), "the mask has the image's full size");
    assert!(white(&m, a_mid) && white(&m, b_mid) && !white(&m, far));

    // Undo removes B, redo brings it back.
    d.click("#undo").await;
    let m = d.export_mask().await;
    assert!(white(&m, a_mid) && !white(&m, b_mid));
    d.click("#redo").await;
    let m = d.export_mask().await;
    assert!(white(&m, b_mid));

    // `]` widens the brush; a wide eraser stroke removes B.
    d.keys("]]]]]]").await;
    let size = d.js("return +document.getElementById('size').value").await;
    assert!(size.as_f64().unwrap() > 70.0, "size {size}");
    d.click("#eraser").await;
    d.drag("#mask", &[(-150, -60), (-150, 0), (-150, 60)]).await;
    d.click("#brush").await;
    let mask = d.export_mask().await;
    assert!(white(&mask, a_mid) && !white(&mask, b_mid) && !white(&mask, far));

    // Go, and wait for the result.
    d.click("#go").await;
    d.wait_for(
        "the result",
        "return document.body.dataset.state === 'done'",
        Duration::from_secs(120),
    )
    .await;
    let event_id = d
        .js("return document.getElementById('result').dataset.eventId")
        .await;
    let event_id = event_id.as_str().unwrap().to_owned();
    let user_id = d
        .js("return localStorage.getItem('partialconv-user-id')")
        .await;
    let user_id = user_id.as_str().unwrap().to_owned();
    assert!(!user_id.is_empty());

    // The history panel lists the new entry.
    d.wait_for(
        "the history entry",
        &format!(
            "return !!document.querySelector('#history-list li[data-event-id=\"{event_id}\"]')"
        ),
        Duration::from_secs(10),
    )
    .await;

    // The result, as stored: full size, changed under the stroke, untouched elsewhere.
    let v: Value = s
        .get(&format!("/api/v1/history?user_id={user_id}"))
        .await
        .json()
        .await
        .unwrap();
    let ev = &v["events"][0];
    assert_eq!(ev["event_id"], event_id);
    assert_eq!(
        (ev["width"].as_u64(), ev["height"].as_u64()),
        (Some(w as u64), Some(h as u64))
    );
    let result = decode(
        &s.get(ev["result_url"].as_str().unwrap())
            .await
            .bytes()
            .await
            .unwrap(),
    );
    let sent_mask = decode(
        &s.get(ev["mask_url"].as_str().unwrap())
            .await
            .bytes()
            .await
            .unwrap(),
    );
    assert_eq!(result.dimensions(), (w, h));
    let (mut hole, mut changed) = (0u32, 0u32);
    for (x, y, p) in result.enumerate_pixels() {
        if sent_mask.get_pixel(x, y)[0] == 255 {
            hole += 1;
            changed += (p != original.get_pixel(x, y)) as u32;
        } else {
            assert_eq!(
                p,
                original.get_pixel(x, y),
                "({x},{y}) is outside the stroke"
            );
        }
    }
    assert!(
        hole > 1000 && changed as f64 > 0.9 * hole as f64,
        "{changed} of {hole}"
    );
    assert_eq!(sent_mask.get_pixel(a_mid.0, a_mid.1)[0], 255);
    assert_eq!(
        result.get_pixel(far.0, far.1),
        original.get_pixel(far.0, far.1)
    );

    // Download link and hold-to-compare.
    let href = d
        .js("const a = document.getElementById('download'); return [a.href, a.download];")
        .await;
    assert!(href[0].as_str().unwrap().starts_with("blob:"), "{href}");
    assert!(href[1].as_str().unwrap().ends_with(".png"));
    let (rx, ry) = d.centre("#result").await;
    d.pointer(vec![
        json!({"type": "pointerMove", "duration": 0, "origin": "viewport",
               "x": rx.round() as i64, "y": ry.round() as i64}),
        json!({"type": "pointerDown", "button": 0}),
    ])
    .await;
    let holding = d
        .js("return document.getElementById('result').src === document.getElementById('original').src")
        .await;
    d.pointer(vec![json!({"type": "pointerUp", "button": 0})])
        .await;
    let released = d
        .js("return document.getElementById('result').src === document.getElementById('original').src")
        .await;
    assert_eq!((holding, released), (json!(true), json!(false)));

    let shot = d.screenshot("page.png").await;
    eprintln!("screenshot: {}", shot.display());
    d.call("DELETE", "", Value::Null).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn train_on_my_photos_then_inpaint_with_the_new_model() {
    let s = start(&[
        "--finetune-train-size",
        "32",
        "--finetune-val-size",
        "32",
        "--finetune-batch",
        "2",
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<String> = (0..4u32)
        .map(|i| {
            let p = dir.path().join(format!("photo{i}.png"));
            picture(64 + 8 * i, 48).save(&p).unwrap();
            p.display().to_string()
        })
        .collect();

    let d = Driver::start(&dir.path().join("profile")).await;
    d.call("POST", "/url", json!({"url": format!("{}/", s.url)}))
        .await;
    d.wait_for(
        "the training panel",
        "return !document.getElementById('train').hidden",
        Duration::from_secs(10),
    )
    .await;
    let files = d.find("#train-files").await;
    let files_id = files[ELEMENT].as_str().unwrap().to_owned();
    d.call(
        "POST",
        &format!("/element/{files_id}/value"),
        json!({"text": paths.join("\n")}),
    )
    .await;
    d.js("document.getElementById('train-steps').value = '6'; document.getElementById('train-name').value = 'stripes';")
        .await;
    d.click("#train-go").await;
    d.wait_for(
        "the job to finish",
        "return document.getElementById('train').dataset.state === 'done'",
        Duration::from_secs(120),
    )
    .await;
    let (progress, text) = {
        let v = d
            .js("return [document.getElementById('train-progress').value,
                         document.getElementById('train-status').textContent]")
            .await;
        (v[0].as_f64().unwrap(), v[1].as_str().unwrap().to_owned())
    };
    assert_eq!(progress, 1.0);
    assert!(
        text.contains("step 6 of 6") && text.contains("loss"),
        "{text}"
    );
    let jobs: Value = s.get("/api/v1/finetune").await.json().await.unwrap();
    let job = &jobs["jobs"][0];
    assert_eq!(job["state"], "done");
    assert_eq!(job["name"], "stripes");
    assert_eq!(
        job["images"]["train"].as_u64().unwrap() + job["images"]["holdout"].as_u64().unwrap(),
        4
    );
    let job_id = job["job_id"].as_str().unwrap().to_owned();

    // Choose it, then inpaint: the request runs on the new model.
    d.click("#train-use").await;
    assert_eq!(
        d.js("return document.getElementById('model').value").await,
        json!(job_id)
    );
    let image_path = dir.path().join("photo.png");
    picture(320, 240).save(&image_path).unwrap();
    let file = d.find("#file").await;
    let file_id = file[ELEMENT].as_str().unwrap().to_owned();
    d.call(
        "POST",
        &format!("/element/{file_id}/value"),
        json!({"text": image_path.display().to_string()}),
    )
    .await;
    d.wait_for(
        "the image to load",
        "return document.body.dataset.state === 'ready'",
        Duration::from_secs(20),
    )
    .await;
    d.drag("#mask", &[(-40, 0), (0, 0), (40, 0)]).await;
    d.click("#go").await;
    d.wait_for(
        "the result",
        "return document.body.dataset.state === 'done'",
        Duration::from_secs(120),
    )
    .await;
    let event_id = d
        .js("return document.getElementById('result').dataset.eventId")
        .await;
    let user_id = d
        .js("return localStorage.getItem('partialconv-user-id')")
        .await;
    let v: Value = s
        .get(&format!(
            "/api/v1/history?user_id={}",
            user_id.as_str().unwrap()
        ))
        .await
        .json()
        .await
        .unwrap();
    let ev = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_id"] == event_id)
        .unwrap()
        .clone();
    assert_eq!(ev["model_id"], json!(job_id));
    d.screenshot("train.png").await;
    d.call("DELETE", "", Value::Null).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_inpaint_see_my_history_and_sign_out() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    let token = server_example::auth::tokens::add(&tokens, "alice", None, false).unwrap();
    let auth = format!("tokens:{}", tokens.display());
    let s = start(&["--auth", &auth]).await;
    let image_path = dir.path().join("photo.png");
    picture(400, 300).save(&image_path).unwrap();

    let d = Driver::start(&dir.path().join("profile")).await;
    d.call("POST", "/url", json!({"url": format!("{}/", s.url)}))
        .await;
    let visible = |id: &str| format!("return !document.getElementById('{id}').hidden");
    d.wait_for(
        "the sign-in form",
        &visible("sign-in"),
        Duration::from_secs(10),
    )
    .await;
    let toolbar = d
        .js("return getComputedStyle(document.getElementById('toolbar')).display")
        .await;
    assert_eq!(toolbar, "none", "signed out, the editor is not shown");
    d.screenshot("signed-out.png").await;

    let input = d.find("#sign-in-token").await;
    let input_id = input[ELEMENT].as_str().unwrap().to_owned();
    d.call(
        "POST",
        &format!("/element/{input_id}/value"),
        json!({ "text": token }),
    )
    .await;
    d.click("#sign-in-go").await;
    d.wait_for("signing in", &visible("who"), Duration::from_secs(10))
        .await;
    let name = d
        .js("return document.getElementById('who-name').textContent")
        .await;
    assert_eq!(name, "alice");
    let cookie_visible = d.js("return document.cookie").await;
    assert_eq!(cookie_visible, "", "the session cookie is HttpOnly");

    let file = d.find("#file").await;
    let file_id = file[ELEMENT].as_str().unwrap().to_owned();
    d.call(
        "POST",
        &format!("/element/{file_id}/value"),
        json!({"text": image_path.display().to_string()}),
    )
    .await;
    d.wait_for(
        "the image to load",
        "return document.body.dataset.state === 'ready'",
        Duration::from_secs(20),
    )
    .await;
    d.drag("#mask", &[(-40, 0), (0, 0), (40, 0)]).await;
    d.click("#go").await;
    d.wait_for(
        "the result",
        "return document.body.dataset.state === 'done'",
        Duration::from_secs(120),
    )
    .await;
    let event_id = d
        .js("return document.getElementById('result').dataset.eventId")
        .await;
    let event_id = event_id.as_str().unwrap().to_owned();
    d.wait_for(
        "the history entry",
        &format!(
            "return !!document.querySelector('#history-list li[data-event-id=\"{event_id}\"]')"
        ),
        Duration::from_secs(10),
    )
    .await;
    d.screenshot("signed-in.png").await;
    // The event is alice's: the page sent no user_id of its own.
    let v: Value = s
        .client
        .get(format!("{}/api/v1/history", s.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["events"][0]["event_id"], event_id.as_str());
    assert_eq!(v["events"][0]["user_id"], "alice");

    d.click("#sign-out").await;
    d.wait_for("signing out", &visible("sign-in"), Duration::from_secs(10))
        .await;
    let entries = d
        .js("return document.querySelectorAll('#history-list li').length")
        .await;
    assert_eq!(entries, 0, "signed out, no history is shown");
    let who = d
        .js_async(
            "const done = arguments[arguments.length - 1];
             fetch('/api/v1/session').then((r) => r.json()).then((v) => done(v.user));",
        )
        .await;
    assert_eq!(who, Value::Null, "the cookie is gone");
    let history = d
        .js_async(
            "const done = arguments[arguments.length - 1];
             fetch('/api/v1/history').then((r) => done(r.status));",
        )
        .await;
    assert_eq!(history, 401);
    d.screenshot("after-sign-out.png").await;
    d.call("DELETE", "", Value::Null).await;
}
