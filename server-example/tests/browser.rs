//! The web page in headless Chromium, driven over WebDriver (chromedriver).
//!
//! Needs the Debian packages `chromium` and `chromium-driver`; the test fails without them.
//! It speaks the W3C WebDriver protocol directly (a few JSON calls), so no browser-automation
//! crate is needed. Screenshots of each state are saved under `$CARGO_TARGET_TMPDIR/browser/`.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
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
    /// A desktop window of 1400×1000 CSS pixels.
    async fn start(profile: &Path) -> Self {
        Self::start_with(profile, "--window-size=1400,1000", json!({})).await
    }

    /// A phone: 390×844 CSS pixels at 3 device pixels each, with a touch screen.
    async fn start_phone(profile: &Path) -> Self {
        let emulation = json!({"mobileEmulation": {"deviceMetrics": {
            "width": 390, "height": 844, "pixelRatio": 3.0, "touch": true,
        }}});
        Self::start_with(profile, "--window-size=390,844", emulation).await
    }

    /// `options` are added to `goog:chromeOptions`.
    async fn start_with(profile: &Path, window: &str, options: Value) -> Self {
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
        let mut chrome = json!({
            "binary": chromium(),
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run",
                format!("--user-data-dir={}", profile.display()),
                window,
            ],
        });
        for (k, v) in options.as_object().unwrap() {
            chrome[k] = v.clone();
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": chrome,
            "goog:loggingPrefs": {"browser": "ALL"},
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

    async fn open(&self, url: &str) {
        self.call("POST", "/url", json!({ "url": url })).await;
    }

    /// Gives a file to an `<input type=file>`, as picking it in the file chooser does.
    async fn upload(&self, css: &str, path: &Path) {
        let input = self.find(css).await;
        let id = input[ELEMENT].as_str().unwrap().to_owned();
        self.call(
            "POST",
            &format!("/element/{id}/value"),
            json!({"text": path.display().to_string()}),
        )
        .await;
    }

    /// Uploads a picture and waits until it is on the stage.
    async fn upload_picture(&self, path: &Path) {
        self.upload("#file", path).await;
        self.wait_for(
            "the image to load",
            "return document.body.dataset.state === 'ready'",
            Duration::from_secs(20),
        )
        .await;
    }

    /// Clicks Go and waits for a result other than the one shown before; returns its event id.
    async fn go(&self) -> String {
        let before = self.event_id().await;
        self.click("#go").await;
        let script = format!(
            "const r = document.getElementById('result');
             return document.body.dataset.state === 'done' && !r.closest('[hidden]')
               && r.dataset.eventId !== '' && r.dataset.eventId !== {}",
            json!(before)
        );
        self.wait_for("the result", &script, Duration::from_secs(120))
            .await;
        self.event_id().await
    }

    /// The user id the page made for itself (`--auth none`).
    async fn user_id(&self) -> String {
        let v = self
            .js("return localStorage.getItem('partialconv-user-id')")
            .await;
        v.as_str().unwrap().to_owned()
    }

    /// The event id of the result on show ('' for none).
    async fn event_id(&self) -> String {
        let v = self
            .js("return document.getElementById('result').dataset.eventId || ''")
            .await;
        v.as_str().unwrap().to_owned()
    }

    /// An element's box in viewport coordinates: (left, top, width, height).
    async fn rect(&self, css: &str) -> (f64, f64, f64, f64) {
        let v = self
            .js(&format!(
                "const r = document.querySelector('{css}').getBoundingClientRect();
                 return [r.left, r.top, r.width, r.height];"
            ))
            .await;
        let f = |i: usize| v[i].as_f64().unwrap();
        (f(0), f(1), f(2), f(3))
    }

    /// The zoom as the page shows it, e.g. 337 for "337 %".
    async fn zoom_percent(&self) -> f64 {
        let v = self
            .js("return document.getElementById('zoom-level').textContent")
            .await;
        let text = v.as_str().unwrap();
        text.strip_suffix(" %")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("zoom level {text:?}"))
    }

    /// One turn of the mouse wheel at a viewport point (negative `delta_y`: towards the
    /// screen, which zooms in).
    async fn wheel(&self, (x, y): (i64, i64), delta_y: i64) {
        self.call(
            "POST",
            "/actions",
            json!({"actions": [{"type": "wheel", "id": "wheel", "actions": [
                {"type": "scroll", "origin": "viewport", "x": x, "y": y,
                 "deltaX": 0, "deltaY": delta_y, "duration": 0},
            ]}]}),
        )
        .await;
    }

    /// A mouse drag with `button` held, through viewport points.
    async fn mouse_drag(&self, button: u32, points: &[(i64, i64)]) {
        let mut actions = vec![
            json!({"type": "pointerMove", "duration": 0, "origin": "viewport",
                   "x": points[0].0, "y": points[0].1}),
            json!({"type": "pointerDown", "button": button}),
        ];
        for &(x, y) in &points[1..] {
            actions.push(
                json!({"type": "pointerMove", "duration": 50, "origin": "viewport",
                                "x": x, "y": y}),
            );
        }
        actions.push(json!({"type": "pointerUp", "button": button}));
        self.pointer(actions).await;
    }

    /// Fingers on a touch screen: each presses at the first point of its path, moves through
    /// the others in step with the other fingers, and lifts after the last.
    async fn touch(&self, fingers: &[Vec<(i64, i64)>]) {
        let sources: Vec<Value> = fingers
            .iter()
            .enumerate()
            .map(|(i, path)| {
                let at = |(x, y): (i64, i64), duration: u64| {
                    json!({"type": "pointerMove", "duration": duration, "origin": "viewport",
                           "x": x, "y": y})
                };
                let mut actions = vec![at(path[0], 0), json!({"type": "pointerDown", "button": 0})];
                actions.extend(path[1..].iter().map(|&p| at(p, 100)));
                actions.push(json!({"type": "pointerUp", "button": 0}));
                json!({"type": "pointer", "id": format!("finger{i}"),
                       "parameters": {"pointerType": "touch"}, "actions": actions})
            })
            .collect();
        self.call("POST", "/actions", json!({ "actions": sources }))
            .await;
    }

    /// Fetches a URL from the page (with its cookies) and returns the body.
    async fn fetch_bytes(&self, url: &str) -> Vec<u8> {
        let b64 = self
            .js_async(&format!(
                "const done = arguments[arguments.length - 1];
                 fetch({})
                   .then(r => r.blob())
                   .then(b => {{ const f = new FileReader();
                                f.onload = () => done(f.result.split(',')[1]);
                                f.readAsDataURL(b); }});",
                json!(url)
            ))
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap())
            .unwrap()
    }

    /// From now until the page reloads, the text fields of each form the page sends are kept
    /// in `window.sentForms`; the requests themselves go out unchanged.
    async fn spy_on_forms(&self) {
        self.js("window.sentForms = [];
             const send = XMLHttpRequest.prototype.send;
             XMLHttpRequest.prototype.send = function (body) {
               if (body instanceof FormData) {
                 window.sentForms.push(Object.fromEntries(
                   [...body.entries()].filter(([, v]) => typeof v === 'string')));
               }
               return send.call(this, body);
             };")
            .await;
    }

    async fn sent_forms(&self) -> Vec<Value> {
        let v = self.js("return window.sentForms").await;
        v.as_array().unwrap().clone()
    }

    /// What the page wrote to the console at warning level or above since the last call:
    /// script errors, failed loads, CSP violations.
    async fn console_problems(&self) -> Vec<String> {
        let v = self
            .call("POST", "/se/log", json!({"type": "browser"}))
            .await;
        v.as_array()
            .unwrap()
            .iter()
            .filter(|e| e["level"] == "SEVERE" || e["level"] == "WARNING")
            .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
            .collect()
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

/// The repository's sample photo (640×427), for screenshots that look like real use.
fn sample_photo() -> PathBuf {
    // Canonical: chromedriver refuses a path with `..` in it.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/img/sample.jpg")
        .canonicalize()
        .unwrap()
}

/// A brush stroke in image coordinates: from, to, radius.
type Stroke = ((f64, f64), (f64, f64), f64);

/// The distance from `p` to the segment `ab`.
fn to_segment(p: (f64, f64), a: (f64, f64), b: (f64, f64)) -> f64 {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len2 = dx * dx + dy * dy;
    let t = if len2 == 0.0 {
        0.0
    } else {
        (((p.0 - a.0) * dx + (p.1 - a.1) * dy) / len2).clamp(0.0, 1.0)
    };
    (p.0 - a.0 - t * dx).hypot(p.1 - a.1 - t * dy)
}

/// Checks an exported mask against round brush strokes, pixel by pixel: a pixel whose centre
/// lies within radius − 1 of a stroke must be set and one farther than radius + 1 from every
/// stroke must be clear. The 2 px band between is the brush's antialiased edge.
fn assert_strokes(m: &GrayImage, strokes: &[Stroke]) {
    let (mut core, mut set) = (0u32, 0u32);
    for (x, y, p) in m.enumerate_pixels() {
        let c = (x as f64 + 0.5, y as f64 + 0.5);
        // How far inside (negative: outside) the nearest stroke's edge the pixel is.
        let depth = strokes
            .iter()
            .map(|&(a, b, r)| r - to_segment(c, a, b))
            .fold(f64::NEG_INFINITY, f64::max);
        assert!(
            p[0] == 0 || p[0] == 255,
            "({x},{y}) is {} in the mask",
            p[0]
        );
        let white = p[0] == 255;
        if depth >= 1.0 {
            assert!(
                white,
                "({x},{y}) is {depth:.2} px inside a stroke, not in the mask"
            );
            core += 1;
        } else if depth <= -1.0 {
            assert!(
                !white,
                "({x},{y}) is {:.2} px outside the strokes, in the mask",
                -depth
            );
        }
        set += white as u32;
    }
    assert!(core > 0 && set > 0, "{core} core pixels, {set} set");
}

/// How many pixels two masks of one size disagree on, and how many the first has set.
fn mask_difference(a: &GrayImage, b: &GrayImage) -> (usize, usize) {
    assert_eq!(a.dimensions(), b.dimensions());
    let differ = a.pixels().zip(b.pixels()).filter(|(p, q)| p != q).count();
    (differ, a.pixels().filter(|p| p[0] == 255).count())
}

/// The same strokes, replayed: equal but for a few pixels of antialiased edge (a stroke is
/// drawn piece by piece while the pointer moves, and in one path when undo replays it).
fn assert_same_mask(a: &GrayImage, b: &GrayImage, what: &str) {
    let (differ, set) = mask_difference(a, b);
    assert!(set > 0, "{what}: the mask is empty");
    assert!(
        differ * 100 <= set,
        "{what}: {differ} of {set} pixels differ"
    );
}

fn is_empty(m: &GrayImage) -> bool {
    m.pixels().all(|p| p[0] == 0)
}

/// The image pixel under a viewport point, given the canvas's box (left, top, width, height)
/// on screen and the image's size.
fn image_at(r: (f64, f64, f64, f64), (w, h): (u32, u32), (x, y): (i64, i64)) -> (f64, f64) {
    (
        (x as f64 - r.0) * w as f64 / r.2,
        (y as f64 - r.1) * h as f64 / r.3,
    )
}

/// The viewport point (whole CSS pixels, as WebDriver sends them) over an image point.
fn view_at(r: (f64, f64, f64, f64), (w, h): (u32, u32), (x, y): (f64, f64)) -> (i64, i64) {
    (
        (r.0 + x * r.2 / w as f64).round() as i64,
        (r.1 + y * r.3 / h as f64).round() as i64,
    )
}

/// The download link gives the server's stored JPEG, named .jpg, with the `icc` profile and
/// without a location.
async fn assert_jpeg_download(d: &Driver, s: &TestServer, icc: &[u8], what: &str) {
    let link = d
        .js("const a = document.getElementById('download'); return [a.href, a.download];")
        .await;
    let href = link[0].as_str().unwrap();
    assert!(
        href.starts_with(&format!("{}/images/", s.url)),
        "{what}: {link}"
    );
    assert!(
        link[1].as_str().unwrap().ends_with(".jpg"),
        "{what}: {link}"
    );
    let bytes = d.fetch_bytes(href).await;
    assert_eq!(&bytes[..3], &[0xFF, 0xD8, 0xFF], "{what}: not a JPEG");
    assert_eq!(
        jpeg_icc(&bytes).as_deref(),
        Some(icc),
        "{what}: the colour profile"
    );
    assert!(!exif_has_gps(&bytes), "{what}: the location is still there");
    // And the rest of EXIF is kept, so the check above is not passing on lost EXIF.
    assert!(
        exif_fields(&bytes).iter().any(|(t, _)| t == "Make"),
        "{what}: the camera's EXIF is gone"
    );
}

/// The history event with this id, from the server.
async fn history_event(s: &TestServer, user_id: &str, event_id: &str) -> Value {
    let v: Value = s
        .get(&format!("/api/v1/history?user_id={user_id}"))
        .await
        .json()
        .await
        .unwrap();
    v["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_id"] == event_id)
        .unwrap_or_else(|| panic!("no event {event_id} in {v}"))
        .clone()
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
    d.open(&format!("{}/", s.url)).await;
    d.upload_picture(&image_path).await;
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
    let event_id = d.go().await;
    let user_id = d.user_id().await;
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

    // Download: the server's stored bytes (not a canvas export), named for their type.
    let href = d
        .js("const a = document.getElementById('download'); return [a.href, a.download];")
        .await;
    assert_eq!(
        href[0],
        format!("{}{}", s.url, ev["result_url"].as_str().unwrap()),
        "{href}"
    );
    assert!(href[1].as_str().unwrap().ends_with(".png"));
    // Hold-to-compare.
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
    assert_eq!(d.console_problems().await, Vec::<String>::new());
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
    d.open(&format!("{}/", s.url)).await;
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
    d.upload_picture(&image_path).await;
    d.drag("#mask", &[(-40, 0), (0, 0), (40, 0)]).await;
    let event_id = d.go().await;
    let ev = history_event(&s, &d.user_id().await, &event_id).await;
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
    d.open(&format!("{}/", s.url)).await;
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

    d.upload_picture(&image_path).await;
    d.drag("#mask", &[(-40, 0), (0, 0), (40, 0)]).await;
    let event_id = d.go().await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zoomed_brushing_gives_the_exact_mask() {
    let s = start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let photo = sample_photo();
    let size = image::image_dimensions(&photo).unwrap();
    let w = size.0;
    let d = Driver::start(&dir.path().join("profile")).await;
    d.open(&format!("{}/", s.url)).await;
    d.upload_picture(&photo).await;

    // Fit: the whole picture fills the stage one way, and the label says the real scale.
    let fit = d.zoom_percent().await;
    let r = d.rect("#mask").await;
    let stage = d.rect("#stage").await;
    assert!(
        r.2 <= stage.2 + 0.5
            && r.3 <= stage.3 + 0.5
            && (r.2 >= stage.2 - 1.0 || r.3 >= stage.3 - 1.0),
        "canvas {r:?} in stage {stage:?}"
    );
    assert!(
        (r.2 / w as f64 * 100.0 - fit).abs() <= 0.5,
        "{fit} % for {r:?}"
    );
    d.screenshot("zoom-fit.png").await;

    // A brush of 12 image pixels, whatever the zoom.
    d.js("const s = document.getElementById('size'); s.value = 12; s.dispatchEvent(new Event('input'));")
        .await;
    assert_eq!(
        d.js("return document.getElementById('size-value').textContent")
            .await,
        "12 px"
    );

    // Two wheel turns over the left launch tower: the picture grows around the pointer.
    let at = view_at(r, size, (195.0, 250.0));
    let before = image_at(r, size, at);
    d.wheel(at, -300).await;
    d.wheel(at, -300).await;
    let z = d.zoom_percent().await;
    let r = d.rect("#mask").await;
    assert!(z > 3.0 * fit, "{fit} % → {z} %");
    assert!((r.2 / w as f64 * 100.0 - z).abs() <= 0.5, "{z} % for {r:?}");
    let after = image_at(r, size, at);
    assert!(
        (after.0 - before.0).abs() < 0.05 && (after.1 - before.1).abs() < 0.05,
        "the point under the wheel moved: {before:?} → {after:?}"
    );
    d.screenshot("zoom-wheel.png").await;

    // A middle-button drag pans by exactly the drag, and paints nothing.
    let (sx, sy) = (stage.0 + stage.2 / 2.0, stage.1 + stage.3 / 2.0);
    let (sx, sy) = (sx.round() as i64, sy.round() as i64);
    d.mouse_drag(1, &[(sx, sy), (sx - 60, sy - 40)]).await;
    let r1 = d.rect("#mask").await;
    assert_eq!(
        ((r1.0 - r.0).round(), (r1.1 - r.1).round()),
        (-60.0, -40.0),
        "{r:?} → {r1:?}"
    );
    // So does a drag with the space bar held.
    d.call(
        "POST",
        "/actions",
        json!({"actions": [
            {"type": "pointer", "id": "mouse", "parameters": {"pointerType": "mouse"}, "actions": [
                {"type": "pointerMove", "duration": 0, "origin": "viewport", "x": sx, "y": sy},
                {"type": "pause"},
                {"type": "pointerDown", "button": 0},
                {"type": "pointerMove", "duration": 50, "origin": "viewport", "x": sx + 30, "y": sy + 20},
                {"type": "pointerUp", "button": 0},
                {"type": "pause"},
            ]},
            {"type": "key", "id": "keyboard", "actions": [
                {"type": "pause"},
                {"type": "keyDown", "value": " "},
                {"type": "pause"},
                {"type": "pause"},
                {"type": "pause"},
                {"type": "keyUp", "value": " "},
            ]},
        ]}),
    )
    .await;
    let r = d.rect("#mask").await;
    assert_eq!(
        ((r.0 - r1.0).round(), (r.1 - r1.1).round()),
        (30.0, 20.0),
        "{r1:?} → {r:?}"
    );
    assert!(is_empty(&d.export_mask().await), "panning painted");
    d.screenshot("zoom-panned.png").await;

    // A short stroke lands on exactly the image pixels under the pointer.
    let (a, b) = (
        view_at(r, size, (186.0, 236.0)),
        view_at(r, size, (204.0, 266.0)),
    );
    for p in [a, b] {
        assert!(
            p.0 > stage.0 as i64
                && p.0 < (stage.0 + stage.2) as i64
                && p.1 > stage.1 as i64
                && p.1 < (stage.1 + stage.3) as i64,
            "{p:?} is off the stage {stage:?}"
        );
    }
    d.mouse_drag(0, &[a, b]).await;
    // The round cursor, left where the stroke ended, shows the 12 px brush at this zoom.
    let c = d.rect("#cursor").await;
    assert!(
        (c.2 - 12.0 * z / 100.0).abs() <= 1.0,
        "cursor {c:?} at {z} %"
    );
    d.screenshot("zoom-stroke.png").await;
    let first: Stroke = (image_at(r, size, a), image_at(r, size, b), 6.0);
    let m = d.export_mask().await;
    assert_eq!(m.dimensions(), size);
    assert_strokes(&m, &[first]);

    // Keys: 0 fits, 1 is 100 %, + and − step; the toggle button swaps fit and 100 %.
    d.keys("0").await;
    assert_eq!(d.zoom_percent().await, fit);
    d.keys("1").await;
    assert_eq!(d.zoom_percent().await, 100.0);
    d.keys("+").await;
    assert_eq!(d.zoom_percent().await, 141.0);
    d.keys("-").await;
    assert_eq!(d.zoom_percent().await, 100.0);
    d.click("#zoom-toggle").await;
    assert_eq!(d.zoom_percent().await, fit);
    d.click("#zoom-toggle").await;
    assert_eq!(d.zoom_percent().await, 100.0);
    d.keys("0").await;

    // The README's picture: zoomed on the tower, brushed along it with a wider brush.
    let r = d.rect("#mask").await;
    d.wheel(view_at(r, size, (193.0, 256.0)), -300).await;
    d.js("const s = document.getElementById('size'); s.value = 34; s.dispatchEvent(new Event('input'));")
        .await;
    let r = d.rect("#mask").await;
    let (a, b) = (
        view_at(r, size, (199.0, 158.0)),
        view_at(r, size, (187.0, 348.0)),
    );
    d.mouse_drag(0, &[a, ((a.0 + b.0) / 2, (a.1 + b.1) / 2), b])
        .await;
    // The brush cursor over the tower, and no focus ring left by the clicks above.
    let over = view_at(r, size, (230.0, 300.0));
    d.pointer(vec![
        json!({"type": "pointerMove", "duration": 0, "origin": "viewport", "x": over.0, "y": over.1}),
    ])
    .await;
    d.js("document.activeElement.blur()").await;
    let shot = d.screenshot("editor.png").await;
    let second: Stroke = (image_at(r, size, a), image_at(r, size, b), 17.0);
    let m = d.export_mask().await;
    assert_strokes(&m, &[first, second]);
    eprintln!("editor screenshot: {}", shot.display());
    assert_eq!(d.console_problems().await, Vec::<String>::new());
    d.call("DELETE", "", Value::Null).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continue_from_the_result_and_undo_across_edits() {
    let s = start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let image_path = dir.path().join("photo.png");
    picture(480, 360).save(&image_path).unwrap();
    let d = Driver::start(&dir.path().join("profile")).await;
    d.open(&format!("{}/", s.url)).await;
    d.upload_picture(&image_path).await;
    d.spy_on_forms().await;
    let original_src = "return document.getElementById('original').src";
    let first_input = d.js(original_src).await;
    let user_id = d.user_id().await;

    // The first edit.
    d.drag("#mask", &[(-80, -40), (0, -40), (80, -40)]).await;
    let m1 = d.export_mask().await;
    let e1 = d.go().await;
    let ev1 = history_event(&s, &user_id, &e1).await;
    let download = d
        .js("const a = document.getElementById('download'); return [a.href, a.download];")
        .await;
    assert_eq!(
        download[0],
        format!("{}{}", s.url, ev1["result_url"].as_str().unwrap())
    );
    assert!(
        download[1].as_str().unwrap().ends_with(".png"),
        "{download}"
    );
    d.screenshot("chain-first-result.png").await;

    // Continue: the result is the new input, with a clean mask and no result yet.
    d.click("#continue").await;
    d.wait_for(
        "the result as the new input",
        &format!(
            "return document.body.dataset.state === 'ready' && document.getElementById('original').src !== {first_input}"
        ),
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(
        d.js("return document.getElementById('result-stage').hidden")
            .await,
        json!(true)
    );
    assert!(is_empty(&d.export_mask().await));
    d.screenshot("chain-continued.png").await;

    // The second edit.
    d.drag("#mask", &[(-60, 60), (0, 60), (60, 60)]).await;
    let m2 = d.export_mask().await;
    let e2 = d.go().await;
    assert_ne!(e1, e2);
    let forms = d.sent_forms().await;
    assert_eq!(forms.len(), 2, "{forms:?}");
    assert!(forms[0].get("parent_event_id").is_none(), "{forms:?}");
    assert_eq!(forms[1]["parent_event_id"], e1.as_str());
    // A PNG chain stays PNG; the next image is a lossless PNG either way.
    assert_eq!(forms[1]["format"], "png");
    // The server recorded the chain, and the second edit began from the first result, pixel
    // for pixel.
    let ev2 = history_event(&s, &user_id, &e2).await;
    assert_eq!(ev2["parent_event_id"], e1.as_str(), "{ev2}");
    let first_result = decode(
        &s.get(ev1["result_url"].as_str().unwrap())
            .await
            .bytes()
            .await
            .unwrap(),
    );
    let second_input = decode(
        &s.get(ev2["original_url"].as_str().unwrap())
            .await
            .bytes()
            .await
            .unwrap(),
    );
    assert!(
        first_result == second_input,
        "the second edit's input is not the first result"
    );
    d.screenshot("chain-second-result.png").await;

    // Undo: the second stroke, then the whole second edit, back to the first with its
    // input, strokes and result.
    d.click("#undo").await;
    assert!(is_empty(&d.export_mask().await));
    assert_eq!(d.event_id().await, e2);
    d.click("#undo").await;
    assert_eq!(d.js(original_src).await, first_input);
    assert_same_mask(&d.export_mask().await, &m1, "the first edit's strokes");
    assert_eq!(d.event_id().await, e1);
    let href = d
        .js("return document.getElementById('download').href")
        .await;
    assert_eq!(
        href,
        format!("{}{}", s.url, ev1["result_url"].as_str().unwrap())
    );
    d.screenshot("chain-undone.png").await;
    // Undo goes on into the first edit's strokes.
    d.click("#undo").await;
    assert!(is_empty(&d.export_mask().await));
    assert_eq!(
        d.js("return document.getElementById('undo').disabled")
            .await,
        json!(true)
    );

    // Redo walks forward again: the stroke, the second edit, its stroke.
    d.click("#redo").await;
    assert_same_mask(&d.export_mask().await, &m1, "the first stroke again");
    d.click("#redo").await;
    assert_ne!(d.js(original_src).await, first_input);
    assert!(is_empty(&d.export_mask().await));
    assert_eq!(d.event_id().await, e2);
    d.click("#redo").await;
    assert_same_mask(&d.export_mask().await, &m2, "the second edit's stroke");
    assert_eq!(
        d.js("return document.getElementById('redo').disabled")
            .await,
        json!(true)
    );
    d.screenshot("chain-redone.png").await;
    assert_eq!(d.console_problems().await, Vec::<String>::new());
    d.call("DELETE", "", Value::Null).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jpeg_keeps_its_colour_profile_and_loses_its_location() {
    let s = start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let jpeg = p3_jpeg_with_exif(320, 240);
    let p3 = display_p3_icc();
    assert!(exif_has_gps(&jpeg), "the photo has a location to lose");
    assert_eq!(jpeg_icc(&jpeg).as_ref(), Some(&p3));
    let image_path = dir.path().join("photo.jpg");
    std::fs::write(&image_path, &jpeg).unwrap();

    let d = Driver::start(&dir.path().join("profile")).await;
    d.open(&format!("{}/", s.url)).await;
    d.upload_picture(&image_path).await;
    d.spy_on_forms().await;
    d.drag("#mask", &[(-50, 0), (0, 0), (50, 0)]).await;
    let e1 = d.go().await;

    // The download is the server's JPEG: the same profile, no GPS.
    assert_jpeg_download(&d, &s, &p3, "the first result").await;
    d.screenshot("jpeg-result.png").await;

    // Continuing sends the lossless master and asks for a JPEG back, so it stays a JPEG.
    d.click("#continue").await;
    d.wait_for(
        "the result as the new input",
        "return document.body.dataset.state === 'ready'",
        Duration::from_secs(20),
    )
    .await;
    d.drag("#mask", &[(0, -40), (0, 0), (0, 40)]).await;
    let e2 = d.go().await;
    // The second edit's input was the lossless master (a PNG), not the first JPEG.
    let ev2 = history_event(&s, &d.user_id().await, &e2).await;
    assert!(
        ev2["original_url"].as_str().unwrap().ends_with(".png"),
        "{ev2}"
    );
    let forms = d.sent_forms().await;
    assert!(forms[0].get("format").is_none(), "{forms:?}");
    assert_eq!(forms[1]["format"], "jpeg", "{forms:?}");
    assert_eq!(forms[1]["parent_event_id"], e1.as_str());
    assert_jpeg_download(&d, &s, &p3, "the second result").await;
    d.screenshot("jpeg-second-result.png").await;
    assert_eq!(d.console_problems().await, Vec::<String>::new());
    d.call("DELETE", "", Value::Null).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_persist_across_a_reload_and_go_with_each_request() {
    let s = start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let image_path = dir.path().join("photo.png");
    picture(320, 240).save(&image_path).unwrap();
    let d = Driver::start(&dir.path().join("profile")).await;
    d.open(&format!("{}/", s.url)).await;
    let controls = "const v = (id) => document.getElementById(id);
        return [v('ensemble').value, v('strategy').value, v('format').value,
                v('mask-grow').value, v('keep-gps').checked];";
    assert_eq!(
        d.js(controls).await,
        json!(["", "auto", "same", "0", false]),
        "the defaults"
    );

    // Chosen with the controls, as a person does: a menu, the slider's arrow keys, a box.
    d.click("#settings-toggle").await;
    assert_eq!(
        d.js("return [document.getElementById('settings').hidden, document.getElementById('settings-toggle').getAttribute('aria-expanded')]")
            .await,
        json!([false, "true"])
    );
    d.click("#ensemble option[value=single]").await;
    d.click("#format option[value=png]").await;
    d.click("#mask-grow").await; // the middle of −16..16
    d.keys("\u{E014}\u{E014}\u{E014}").await; // → three times
    d.click("#keep-gps").await;
    let chosen = json!(["single", "auto", "png", "3", true]);
    assert_eq!(d.js(controls).await, chosen);
    assert_eq!(
        d.js("return document.getElementById('mask-grow-value').textContent")
            .await,
        "3 px"
    );
    let stored = d
        .js("return JSON.parse(localStorage.getItem('partialconv-settings'))")
        .await;
    assert_eq!(
        stored,
        json!({"ensemble": "single", "strategy": "auto", "format": "png", "mask_grow": 3, "keep_gps": true})
    );
    d.screenshot("settings.png").await;

    // After a reload they are still there.
    d.call("POST", "/refresh", json!({})).await;
    d.wait_for(
        "the page",
        "return document.readyState === 'complete' && !!document.getElementById('settings-toggle')",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(d.js(controls).await, chosen, "after a reload");

    // And the next request carries them: the server answers with the single pass.
    d.upload_picture(&image_path).await;
    d.spy_on_forms().await;
    d.drag("#mask", &[(-40, 0), (0, 0), (40, 0)]).await;
    d.go().await;
    let forms = d.sent_forms().await;
    let form = &forms[0];
    assert_eq!(
        (
            &form["ensemble"],
            &form["format"],
            &form["mask_grow"],
            &form["keep_gps"]
        ),
        (&json!("single"), &json!("png"), &json!("3"), &json!("true")),
        "{form}"
    );
    assert!(
        form.get("strategy").is_none(),
        "auto is the server's default: {form}"
    );
    let timing = d
        .js("return document.getElementById('timing').textContent")
        .await;
    assert!(timing.as_str().unwrap().ends_with("· single"), "{timing}");
    // The panel shows what each quality has cost on this server.
    d.click("#settings-toggle").await;
    let latency = d
        .wait_for(
            "the measured latency",
            "const li = document.querySelector('#latency-list li[data-ensemble=single]');
             return !document.getElementById('latency').hidden && li && li.textContent",
            Duration::from_secs(10),
        )
        .await;
    let latency = latency.as_str().unwrap();
    let mean = latency
        .strip_prefix("single: ")
        .and_then(|t| t.strip_suffix(" s (1)"))
        .and_then(|t| t.parse::<f64>().ok());
    assert!(mean.is_some_and(|m| m >= 0.0), "{latency}");
    d.screenshot("settings-after-go.png").await;
    assert_eq!(d.console_problems().await, Vec::<String>::new());
    d.call("DELETE", "", Value::Null).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_brushes_pinches_and_sees_the_result() {
    let s = start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let image_path = dir.path().join("photo.png");
    let size = (800u32, 600u32);
    picture(size.0, size.1).save(&image_path).unwrap();
    let d = Driver::start_phone(&dir.path().join("profile")).await;
    d.open(&format!("{}/", s.url)).await;
    assert_eq!(d.js("return window.innerWidth").await, 390);
    d.upload_picture(&image_path).await;

    // The toolbar wraps onto several rows.
    let toolbar = d.rect("#toolbar").await;
    let go = d.rect("#go").await;
    assert!(
        toolbar.3 > 2.0 * go.3,
        "toolbar {toolbar:?}, a button {go:?}"
    );
    assert!(toolbar.2 <= 390.0);
    d.screenshot("phone-loaded.png").await;

    // One finger brushes.
    let r = d.rect("#mask").await;
    let (cx, cy) = (
        (r.0 + r.2 / 2.0).round() as i64,
        (r.1 + r.3 / 2.0).round() as i64,
    );
    d.touch(&[vec![(cx - 60, cy), (cx, cy), (cx + 60, cy)]])
        .await;
    let m = d.export_mask().await;
    let under = |p: (i64, i64)| {
        let (x, y) = image_at(r, size, p);
        m.get_pixel(x as u32, y as u32)[0]
    };
    assert_eq!(under((cx, cy)), 255, "the touch stroke");
    assert_eq!(under((cx, cy - 60)), 0, "away from the touch stroke");

    // Two fingers spread apart: the picture zooms around them, and nothing is painted.
    let z0 = d.zoom_percent().await;
    let before = image_at(r, size, (cx, cy));
    d.touch(&[
        vec![(cx - 20, cy - 10), (cx - 40, cy - 20), (cx - 60, cy - 30)],
        vec![(cx + 20, cy + 10), (cx + 40, cy + 20), (cx + 60, cy + 30)],
    ])
    .await;
    let z1 = d.zoom_percent().await;
    assert!(z1 > 2.5 * z0, "{z0} % → {z1} %");
    let after = image_at(d.rect("#mask").await, size, (cx, cy));
    assert!(
        (after.0 - before.0).abs() < 0.5 && (after.1 - before.1).abs() < 0.5,
        "the point between the fingers moved: {before:?} → {after:?}"
    );
    assert_eq!(d.export_mask().await, m, "the pinch painted");
    d.screenshot("phone-pinched.png").await;

    // The result fits the screen: no sideways scrolling.
    d.go().await;
    d.js("document.getElementById('result').scrollIntoView({block: 'center'})")
        .await;
    let widths = d
        .js("return [document.documentElement.scrollWidth, window.innerWidth]")
        .await;
    assert!(
        widths[0].as_f64().unwrap() <= widths[1].as_f64().unwrap(),
        "the page scrolls sideways: {widths}"
    );
    let result = d.rect("#result").await;
    assert!(
        result.0 >= 0.0 && result.0 + result.2 <= 390.0 && result.2 > 100.0,
        "result at {result:?}"
    );
    d.screenshot("phone-result.png").await;
    assert_eq!(d.console_problems().await, Vec::<String>::new());
    d.call("DELETE", "", Value::Null).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mask_tools_grow_shrink_and_invert_as_the_server_would() {
    let s = start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let image_path = dir.path().join("photo.png");
    picture(240, 180).save(&image_path).unwrap();
    let d = Driver::start(&dir.path().join("profile")).await;
    d.open(&format!("{}/", s.url)).await;
    d.upload_picture(&image_path).await;
    d.js("const s = document.getElementById('size'); s.value = 16; s.dispatchEvent(new Event('input'));")
        .await;
    // A stroke with a bend, and one reaching over the picture's edge.
    d.drag("#mask", &[(-80, -30), (0, 10), (40, -40)]).await;
    d.drag("#mask", &[(60, 50), (320, 50)]).await;
    let m0 = d.export_mask().await;
    let (w, h) = m0.dimensions();
    assert!(
        (0..h).any(|y| m0.get_pixel(w - 1, y)[0] == 255),
        "the second stroke reaches the right edge"
    );
    // The server's own `mask_grow`, as the reference.
    let grown = |m: &GrayImage, px: i32| -> GrayImage {
        partialconv::imaging::masks::HoleMask::from_u8(w, h, m.as_raw())
            .grown(px)
            .unwrap()
            .to_gray()
    };
    let inverted = |m: &GrayImage| {
        let mut m = m.clone();
        m.pixels_mut().for_each(|p| p[0] = 255 - p[0]);
        m
    };

    d.click("#grow").await;
    let m1 = d.export_mask().await;
    assert!(m1 == grown(&m0, 4), "Grow is not the server's 4 px growth");
    d.click("#shrink").await;
    let m2 = d.export_mask().await;
    assert!(
        m2 == grown(&m1, -4),
        "Shrink is not the server's 4 px shrinking"
    );
    assert_ne!(m2, m1);
    d.click("#invert").await;
    let m3 = d.export_mask().await;
    assert!(m3 == inverted(&m2), "Invert");
    d.screenshot("mask-tools.png").await;

    // Each is a step of its own for Undo and Redo.
    d.click("#undo").await;
    assert_same_mask(&d.export_mask().await, &m2, "undo Invert");
    d.click("#undo").await;
    assert_same_mask(&d.export_mask().await, &m1, "undo Shrink");
    d.click("#undo").await;
    assert_same_mask(&d.export_mask().await, &m0, "undo Grow");
    d.click("#redo").await;
    d.click("#redo").await;
    d.click("#redo").await;
    let again = d.export_mask().await;
    assert_same_mask(&inverted(&again), &inverted(&m3), "redo all three");
    assert_eq!(d.console_problems().await, Vec::<String>::new());
    d.call("DELETE", "", Value::Null).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuing_without_a_readable_history_leaves_the_parent_out() {
    // Such a server refuses a parent it cannot check; the page does not send one.
    let s = start(&["--history", "none"]).await;
    let dir = tempfile::tempdir().unwrap();
    let image_path = dir.path().join("photo.png");
    picture(200, 150).save(&image_path).unwrap();
    let d = Driver::start(&dir.path().join("profile")).await;
    d.open(&format!("{}/", s.url)).await;
    d.wait_for(
        "the history note",
        "return document.getElementById('history-note').textContent === 'This server keeps no history.'",
        Duration::from_secs(10),
    )
    .await;
    d.upload_picture(&image_path).await;
    d.spy_on_forms().await;
    d.drag("#mask", &[(-40, 0), (40, 0)]).await;
    let e1 = d.go().await;
    d.click("#continue").await;
    d.wait_for(
        "the result as the new input",
        "return document.body.dataset.state === 'ready'",
        Duration::from_secs(20),
    )
    .await;
    d.drag("#mask", &[(0, -40), (0, 40)]).await;
    let e2 = d.go().await;
    assert_ne!(e1, e2);
    let forms = d.sent_forms().await;
    assert_eq!(forms.len(), 2);
    assert!(forms[1].get("parent_event_id").is_none(), "{forms:?}");
    d.screenshot("no-history-chain.png").await;
    // The browser logs the one 501 that told the page so, and nothing else.
    let problems = d.console_problems().await;
    assert!(
        problems.len() == 1
            && problems[0].contains("/api/v1/history?")
            && problems[0].contains("501"),
        "{problems:?}"
    );
    d.call("DELETE", "", Value::Null).await;
}
