//! Test servers on real sockets (127.0.0.1:0), a tiny model, and image helpers.
#![allow(dead_code)] // each test binary uses a different part

pub mod process;

use std::io::Cursor;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use clap::Parser;
use image::{DynamicImage, GrayImage, ImageFormat, Luma, Rgb, RgbImage};
use partialconv::{Model, ModelMeta, PConvUNetConfig, Storage};
use server_example::{app, AppState, Config};

/// A random 4-level, width-4 network: fast on any CPU, and its output differs from its input,
/// which is all these tests need (they must not depend on the bundled model's quality).
pub fn tiny_model() -> &'static Path {
    static MODEL: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &MODEL
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("tiny.safetensors");
            let config = PConvUNetConfig {
                layer_size: 4,
                width: 4,
                ..Default::default()
            };
            Model::new(ModelMeta::new(config), tch::Device::Cpu)
                .unwrap()
                .save(&path, Storage::F32)
                .unwrap();
            (dir, path)
        })
        .1
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub url: String,
    pub state: AppState,
    /// Shared, so that a second server can start on the same data (a restart).
    pub data_dir: Arc<tempfile::TempDir>,
    pub client: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for TestServer {
    /// Graceful, so idle keep-alive connections close too and the server is really gone.
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Starts a server with the tiny model, SQLite history and an image directory in a fresh
/// temporary data dir, plus `args`; waits until `/readyz` says the model is loaded.
pub async fn start(args: &[&str]) -> TestServer {
    start_with(args, |_| {}).await
}

pub async fn start_with(args: &[&str], edit: impl FnOnce(&mut AppState)) -> TestServer {
    start_in(Arc::new(tempfile::tempdir().unwrap()), args, edit).await
}

/// A server on an existing data dir: what a restart looks like.
pub async fn start_in(
    data_dir: Arc<tempfile::TempDir>,
    args: &[&str],
    edit: impl FnOnce(&mut AppState),
) -> TestServer {
    let mut argv: Vec<String> = vec![
        "server-example".into(),
        "--data-dir".into(),
        data_dir.path().display().to_string(),
    ];
    if !args.contains(&"--remote-model") && !args.contains(&"--model") {
        argv.extend(["--model".into(), tiny_model().display().to_string()]);
    }
    // `--no-wait` is ours, not the server's: return before the model is loaded.
    argv.extend(
        args.iter()
            .filter(|a| **a != "--no-wait")
            .map(|s| s.to_string()),
    );
    let cfg = Config::parse_from(argv);
    let mut state = AppState::from_config(&cfg).await.unwrap();
    edit(&mut state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // As `main` serves it: with the peer's address, which --trusted-proxy and the rate
    // limit read.
    let router = app(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    let server = TestServer {
        addr,
        url: format!("http://{addr}"),
        state,
        data_dir,
        client: reqwest::Client::new(),
        stop: Some(stop),
    };
    if !args.contains(&"--no-wait") {
        server.wait_ready().await;
    }
    server
}

impl TestServer {
    /// Stops as `main` does on SIGTERM: the training thread saves a checkpoint of a running
    /// job and exits, then the server stops accepting requests.
    pub async fn stop(mut self) {
        if let Some(jobs) = &self.state.finetune {
            jobs.shutdown().await;
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = self.client.get(format!("{}/readyz", self.url)).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "server not ready after 60 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap()
    }

    pub async fn inpaint(&self, form: reqwest::multipart::Form) -> reqwest::Response {
        self.client
            .post(format!("{}/api/v1/inpaint", self.url))
            .multipart(form)
            .send()
            .await
            .unwrap()
    }

    pub async fn metrics(&self) -> String {
        self.get("/metrics").await.text().await.unwrap()
    }
}

/// A metric's value from Prometheus text, 0 when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// The JSON error body, checked for its shape: `{error, code}`.
pub async fn error_code(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = r.text().await.unwrap();
    assert!(
        ct.starts_with("application/json"),
        "{status}: content type {ct:?}, body {body}"
    );
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{body}");
    (status, v["code"].as_str().unwrap().to_owned())
}

/// A textured picture, so a fill never equals the original by chance.
pub fn picture(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        Rgb([
            (x * 255 / w.max(1)) as u8,
            (y * 255 / h.max(1)) as u8,
            ((x * 7 + y * 13) % 256) as u8,
        ])
    })
}

/// White (hole) inside the rectangle.
pub fn rect_mask(w: u32, h: u32, (x0, y0, x1, y1): (u32, u32, u32, u32)) -> GrayImage {
    GrayImage::from_fn(w, h, |x, y| {
        Luma([if x >= x0 && x < x1 && y >= y0 && y < y1 {
            255
        } else {
            0
        }])
    })
}

pub fn encode(img: impl Into<DynamicImage>, format: ImageFormat) -> Vec<u8> {
    let mut buf = Vec::new();
    img.into()
        .write_to(&mut Cursor::new(&mut buf), format)
        .unwrap();
    buf
}

pub fn png(img: impl Into<DynamicImage>) -> Vec<u8> {
    encode(img, ImageFormat::Png)
}

pub fn form(image: Vec<u8>, mask: Vec<u8>) -> reqwest::multipart::Form {
    reqwest::multipart::Form::new()
        .part(
            "image",
            reqwest::multipart::Part::bytes(image).file_name("image"),
        )
        .part(
            "mask",
            reqwest::multipart::Part::bytes(mask).file_name("mask"),
        )
}

/// A 64×48 picture with a 16×16 hole, as (image PNG, mask PNG).
pub fn small_pair() -> (Vec<u8>, Vec<u8>) {
    (
        png(picture(64, 48)),
        png(rect_mask(64, 48, (20, 16, 36, 32))),
    )
}

pub fn decode(bytes: &[u8]) -> RgbImage {
    image::load_from_memory(bytes).unwrap().to_rgb8()
}

/// A Display P3 ICC profile (v4, matrix/TRC, D50-adapted primaries and the sRGB curve),
/// built here so that no profile file has to be vendored. Only its bytes matter to the
/// server, which copies them through; Chromium renders with it.
pub fn display_p3_icc() -> Vec<u8> {
    fn s15(v: f64) -> [u8; 4] {
        ((v * 65536.0).round() as i32).to_be_bytes()
    }
    fn xyz(x: f64, y: f64, z: f64) -> Vec<u8> {
        let mut t = b"XYZ \0\0\0\0".to_vec();
        for v in [x, y, z] {
            t.extend_from_slice(&s15(v));
        }
        t
    }
    fn mluc(text: &str) -> Vec<u8> {
        let utf16: Vec<u8> = text.encode_utf16().flat_map(u16::to_be_bytes).collect();
        let mut t = b"mluc\0\0\0\0".to_vec();
        t.extend_from_slice(&1u32.to_be_bytes());
        t.extend_from_slice(&12u32.to_be_bytes());
        t.extend_from_slice(b"enUS");
        t.extend_from_slice(&(utf16.len() as u32).to_be_bytes());
        t.extend_from_slice(&28u32.to_be_bytes());
        t.extend_from_slice(&utf16);
        t
    }
    // The sRGB transfer function as a parametric curve (type 3).
    let mut para = b"para\0\0\0\0\0\x03\0\0".to_vec();
    for v in [2.4, 1.0 / 1.055, 0.055 / 1.055, 1.0 / 12.92, 0.04045] {
        para.extend_from_slice(&s15(v));
    }
    let mut chad = b"sf32\0\0\0\0".to_vec();
    for v in [
        1.0479, 0.0229, -0.0502, 0.0296, 0.9904, -0.0171, -0.0092, 0.0151, 0.7519,
    ] {
        chad.extend_from_slice(&s15(v));
    }
    let tags: Vec<(&[u8; 4], Vec<u8>)> = vec![
        (b"desc", mluc("Display P3")),
        (b"cprt", mluc("No copyright, use freely")),
        (b"wtpt", xyz(0.9642, 1.0, 0.8249)),
        (b"rXYZ", xyz(0.5151, 0.2412, -0.0011)),
        (b"gXYZ", xyz(0.2920, 0.6922, 0.0419)),
        (b"bXYZ", xyz(0.1571, 0.0666, 0.7841)),
        (b"rTRC", para.clone()),
        (b"gTRC", para.clone()),
        (b"bTRC", para),
        (b"chad", chad),
    ];
    let table_len = 4 + 12 * tags.len();
    let mut data = Vec::new();
    let mut table = (tags.len() as u32).to_be_bytes().to_vec();
    for (sig, body) in &tags {
        while data.len() % 4 != 0 {
            data.push(0);
        }
        let offset = 128 + table_len + data.len();
        table.extend_from_slice(*sig);
        table.extend_from_slice(&(offset as u32).to_be_bytes());
        table.extend_from_slice(&(body.len() as u32).to_be_bytes());
        data.extend_from_slice(body);
    }
    let size = 128 + table_len + data.len();
    let mut h = Vec::with_capacity(size);
    h.extend_from_slice(&(size as u32).to_be_bytes());
    h.extend_from_slice(b"\0\0\0\0"); // preferred CMM
    h.extend_from_slice(&[4, 0x30, 0, 0]); // version 4.3
    h.extend_from_slice(b"mntrRGB XYZ ");
    h.extend_from_slice(&[0x07, 0xea, 0, 12, 0, 5, 0, 0, 0, 0, 0, 0]); // 2026-12-05
    h.extend_from_slice(b"acsp");
    h.extend_from_slice(&[0; 4 + 4 + 4 + 4 + 8 + 4]); // platform … rendering intent
    for v in [0.9642, 1.0, 0.8249] {
        h.extend_from_slice(&s15(v)); // PCS illuminant, D50
    }
    h.extend_from_slice(&[0; 4 + 16 + 28]); // creator, profile id, reserved
    assert_eq!(h.len(), 128);
    h.extend_from_slice(&table);
    h.extend_from_slice(&data);
    h
}

/// A little-endian TIFF (EXIF block) with Make, Model, DateTime, Orientation 1 and a GPS
/// directory holding a latitude and longitude.
pub fn exif_with_gps() -> Vec<u8> {
    exif_oriented(1)
}

/// [`exif_with_gps`] with another orientation (6: the camera was turned a quarter right).
pub fn exif_oriented(orientation: u16) -> Vec<u8> {
    struct Entry {
        tag: u16,
        ty: u16,
        count: u32,
        data: Vec<u8>,
    }
    let ascii = |tag, s: &str| {
        let mut data = s.as_bytes().to_vec();
        data.push(0);
        Entry {
            tag,
            ty: 2,
            count: data.len() as u32,
            data,
        }
    };
    let rationals = |tag, v: [(u32, u32); 3]| Entry {
        tag,
        ty: 5,
        count: 3,
        data: v
            .iter()
            .flat_map(|(n, d)| [n.to_le_bytes(), d.to_le_bytes()].concat())
            .collect(),
    };
    // Writes one IFD at `at`, its long values right after it; returns the bytes.
    fn ifd(at: u32, entries: &[Entry]) -> Vec<u8> {
        let mut head = (entries.len() as u16).to_le_bytes().to_vec();
        let mut tail = Vec::new();
        let values_at = at + 2 + 12 * entries.len() as u32 + 4;
        for e in entries {
            head.extend_from_slice(&e.tag.to_le_bytes());
            head.extend_from_slice(&e.ty.to_le_bytes());
            head.extend_from_slice(&e.count.to_le_bytes());
            if e.data.len() <= 4 {
                let mut v = e.data.clone();
                v.resize(4, 0);
                head.extend_from_slice(&v);
            } else {
                head.extend_from_slice(&(values_at + tail.len() as u32).to_le_bytes());
                tail.extend_from_slice(&e.data);
                if tail.len() % 2 == 1 {
                    tail.push(0);
                }
            }
        }
        head.extend_from_slice(&0u32.to_le_bytes());
        head.extend_from_slice(&tail);
        head
    }
    let gps = [
        ascii(0x0001, "N"),
        rationals(0x0002, [(52, 1), (31, 1), (1234, 100)]),
        ascii(0x0003, "E"),
        rationals(0x0004, [(13, 1), (24, 1), (5678, 100)]),
    ];
    let ifd0_len = |gps_at: u32| {
        ifd(
            8,
            &[
                ascii(0x010f, "TestCam"),
                ascii(0x0110, "P3 Phone"),
                Entry {
                    tag: 0x0112,
                    ty: 3,
                    count: 1,
                    data: orientation.to_le_bytes().to_vec(),
                },
                ascii(0x0132, "2026:12:05 10:00:00"),
                Entry {
                    tag: 0x8825,
                    ty: 4,
                    count: 1,
                    data: gps_at.to_le_bytes().to_vec(),
                },
            ],
        )
    };
    let gps_at = 8 + ifd0_len(0).len() as u32;
    let mut tiff = b"II*\0\x08\0\0\0".to_vec();
    tiff.extend_from_slice(&ifd0_len(gps_at));
    tiff.extend_from_slice(&ifd(gps_at, &gps));
    tiff
}

/// A `w`×`h` JPEG with [`display_p3_icc`] and [`exif_with_gps`], as a phone writes it.
pub fn p3_jpeg_with_exif(w: u32, h: u32) -> Vec<u8> {
    jpeg_with_exif(w, h, exif_with_gps())
}

/// A `w`×`h` JPEG (as stored, before any rotation) with [`display_p3_icc`] and `exif`.
pub fn jpeg_with_exif(w: u32, h: u32, exif: Vec<u8>) -> Vec<u8> {
    use image::ImageEncoder;
    let mut buf = Vec::new();
    let mut enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, 90);
    enc.set_icc_profile(display_p3_icc()).unwrap();
    enc.set_exif_metadata(exif).unwrap();
    let img = picture(w, h);
    enc.write_image(img.as_raw(), w, h, image::ExtendedColorType::Rgb8)
        .unwrap();
    buf
}

/// The ICC profile of an encoded JPEG or PNG, as the `image` crate reads it.
pub fn jpeg_icc(bytes: &[u8]) -> Option<Vec<u8>> {
    use image::ImageDecoder;
    let mut dec = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .unwrap()
        .into_decoder()
        .unwrap();
    dec.icc_profile().unwrap()
}

/// EXIF fields of an encoded image as (tag name, value) pairs, read by kamadak-exif.
pub fn exif_fields(bytes: &[u8]) -> Vec<(String, String)> {
    match exif::Reader::new().read_from_container(&mut Cursor::new(bytes)) {
        Ok(e) => e
            .fields()
            .map(|f| (f.tag.to_string(), f.display_value().to_string()))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Whether an encoded image's EXIF has any GPS field (or a GPS directory pointer).
pub fn exif_has_gps(bytes: &[u8]) -> bool {
    match exif::Reader::new().read_from_container(&mut Cursor::new(bytes)) {
        Ok(e) => e.fields().any(|f| {
            f.tag.context() == exif::Context::Gps || f.tag == exif::Tag::GPSInfoIFDPointer
        }),
        Err(_) => false,
    }
}

/// Fine-tune jobs of the tests: the tiny model on 32×32 crops, a step takes milliseconds.
/// Small crops and batches, so jobs finish in seconds.
pub const TINY_FINETUNE: &[&str] = &[
    "--finetune-train-size",
    "32",
    "--finetune-val-size",
    "32",
    "--finetune-batch",
    "2",
    "--finetune-val-every",
    "1000",
    "--finetune-checkpoint-every",
    "2",
    "--finetune-max-steps",
    "1000000",
];

/// Smooth gradients with a soft blob that moves with `i`: a photo "domain".
pub fn photo(i: u32, w: u32, h: u32) -> Vec<u8> {
    png(RgbImage::from_fn(w, h, |x, y| {
        let (fx, fy) = (x as f32 / w as f32, y as f32 / h as f32);
        let blob = (-((fx - 0.3 - 0.05 * i as f32).powi(2) + (fy - 0.6).powi(2)) * 20.0).exp();
        Rgb([
            (255.0 * (0.2 + 0.6 * fx)) as u8,
            (255.0 * (0.3 + 0.5 * fy * (1.0 - blob))) as u8,
            (255.0 * (0.1 + 0.8 * blob)) as u8,
        ])
    }))
}

pub fn photos(n: u32) -> Vec<Vec<u8>> {
    (0..n).map(|i| photo(i, 64, 48)).collect()
}

pub fn job_form(files: Vec<Vec<u8>>) -> reqwest::multipart::Form {
    files
        .into_iter()
        .enumerate()
        .fold(reqwest::multipart::Form::new(), |f, (i, bytes)| {
            f.part(
                "images",
                reqwest::multipart::Part::bytes(bytes).file_name(format!("p{i}.png")),
            )
        })
}
