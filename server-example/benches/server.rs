//! Latency of `POST /api/v1/inpaint` through a real socket, as a client sees it.
//!
//! ```sh
//! cargo bench -p server-example --bench server -- [--model PATH] [--device cpu] [--n 30]
//!     [--write docs/benchmarks.md]
//! ```
//!
//! Not criterion: what matters here is the latency distribution under concurrent clients
//! (p50/p99 at concurrency 1 and 4) and how it splits into model time and the rest, which the
//! server reports per request in `X-Inference-Ms`, `X-Decode-Ms` and `X-Encode-Ms`.
//! With `--write FILE` the figures replace the `## Server` section of FILE (other sections are
//! kept).
//!
//! `--finetune` measures something else: p50 latency of 512×512 requests with no fine-tune
//! job, then while one trains, for the default training priority (1 intra-op thread, nice 10)
//! and for an unprotected one (every core, nice 0). With `--write` it replaces the
//! `## Server: inference while a job trains` section.

use std::io::Cursor;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use image::{imageops, DynamicImage, GrayImage, ImageFormat, Luma, RgbImage};
use server_example::pool::ModelInfo;
use server_example::{app, AppState, Config};

#[derive(Parser)]
struct Args {
    /// Model file; default: $PARTIALCONV_MODEL, else the bundled model.
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Requests per client and scenario.
    #[arg(long, default_value_t = 30)]
    n: usize,
    /// Markdown file whose `## Server` section receives the figures.
    #[arg(long)]
    write: Option<PathBuf>,
    /// Inference latency with and without a running fine-tune job, instead of the above.
    #[arg(long)]
    finetune: bool,
    // `cargo bench` passes --bench to every bench target.
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(Default, Clone, Copy)]
struct Sample {
    total_ms: f64,
    model_ms: f64,
    decode_ms: f64,
    encode_ms: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    percentile(&v, 0.5)
}

struct Stats {
    p50: f64,
    p99: f64,
    throughput: f64,
    model: f64,
    decode: f64,
    encode: f64,
}

fn stats(samples: &[Sample], wall: Duration) -> Stats {
    let mut totals: Vec<f64> = samples.iter().map(|s| s.total_ms).collect();
    totals.sort_by(f64::total_cmp);
    Stats {
        p50: percentile(&totals, 0.5),
        p99: percentile(&totals, 0.99),
        throughput: samples.len() as f64 / wall.as_secs_f64(),
        model: median(samples.iter().map(|s| s.model_ms).collect()),
        decode: median(samples.iter().map(|s| s.decode_ms).collect()),
        encode: median(samples.iter().map(|s| s.encode_ms).collect()),
    }
}

fn encode(img: DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut buf = Vec::new();
    img.write_to(&mut Cursor::new(&mut buf), format).unwrap();
    buf
}

/// The sample photo cropped and scaled to `w`×`h`, so codecs see natural image statistics.
fn photo(w: u32, h: u32) -> RgbImage {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let img = image::open(root.join("docs/img/sample.jpg"))
        .expect("docs/img/sample.jpg")
        .to_rgb8();
    imageops::resize(&img, w, h, imageops::FilterType::Triangle)
}

/// Brush-like strokes inside `bbox`, about a fifth of it.
fn strokes(w: u32, h: u32, (x0, y0, bw, bh): (u32, u32, u32, u32)) -> GrayImage {
    GrayImage::from_fn(w, h, |x, y| {
        let inside = x >= x0 && x < x0 + bw && y >= y0 && y < y0 + bh;
        let (u, v) = ((x - x0.min(x)) as f64, (y - y0.min(y)) as f64);
        let on_stroke = ((u - v).abs() < bw as f64 * 0.08)
            || ((u + v - bw as f64).abs() < bw as f64 * 0.08)
            || ((v - bh as f64 / 2.0).abs() < bh as f64 * 0.05);
        Luma([if inside && on_stroke { 255 } else { 0 }])
    })
}

async fn run(
    url: &str,
    image: &[u8],
    mask: &[u8],
    format: &str,
    clients: usize,
    n: usize,
) -> (Vec<Sample>, Duration) {
    let client = reqwest::Client::new();
    let one = |client: reqwest::Client| {
        let form = reqwest::multipart::Form::new()
            .part("image", reqwest::multipart::Part::bytes(image.to_vec()))
            .part("mask", reqwest::multipart::Part::bytes(mask.to_vec()))
            .text("format", format.to_owned());
        let url = format!("{url}/api/v1/inpaint");
        async move {
            let t = Instant::now();
            let r = client.post(url).multipart(form).send().await.unwrap();
            assert_eq!(r.status(), 200);
            let h = r.headers().clone();
            let _ = r.bytes().await.unwrap();
            let num = |k: &str| h[k].to_str().unwrap().parse::<f64>().unwrap();
            Sample {
                total_ms: t.elapsed().as_secs_f64() * 1000.0,
                model_ms: num("x-inference-ms"),
                decode_ms: num("x-decode-ms"),
                encode_ms: num("x-encode-ms"),
            }
        }
    };
    // Warm-up: first-touch allocations, libtorch's thread pool.
    for _ in 0..2 {
        one(client.clone()).await;
    }
    let t = Instant::now();
    let per_client = futures::future::join_all((0..clients).map(|_| {
        let client = client.clone();
        async move {
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(one(client.clone()).await);
            }
            v
        }
    }))
    .await;
    (per_client.into_iter().flatten().collect(), t.elapsed())
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if !args.bench {
        // `cargo test --all-targets` runs bench targets without `--bench`: measuring needs
        // a real model and minutes, so only `cargo bench` does it.
        eprintln!("server bench: run it with `cargo bench -p server-example --bench server`");
        return;
    }
    if args.finetune {
        return finetune_bench(&args).await;
    }
    let (url, _state, info, _data) = serve(&args, &[]).await;

    let small = encode(photo(512, 512).into(), ImageFormat::Png);
    let small_mask = encode(
        strokes(512, 512, (96, 96, 320, 320)).into(),
        ImageFormat::Png,
    );
    let big = encode(photo(4000, 3000).into(), ImageFormat::Jpeg);
    let big_mask = encode(
        strokes(4000, 3000, (2100, 1300, 400, 400)).into(),
        ImageFormat::Png,
    );

    let mut rows = Vec::new();
    let mut c1 = None;
    for (name, image, mask, format, clients) in [
        ("512×512 PNG → PNG", &small, &small_mask, "png", 1),
        ("512×512 PNG → PNG", &small, &small_mask, "png", 4),
        (
            "4000×3000 JPEG, hole in a 400×400 box → JPEG",
            &big,
            &big_mask,
            "jpeg",
            1,
        ),
    ] {
        let n = if clients == 1 { args.n } else { args.n / 2 };
        let (samples, wall) = run(&url, image, mask, format, clients, n.max(2)).await;
        let s = stats(&samples, wall);
        eprintln!(
            "{name}, concurrency {clients}: p50 {:.0} ms, p99 {:.0} ms, {:.2} req/s",
            s.p50, s.p99, s.throughput
        );
        if clients == 1 && c1.is_none() {
            c1 = Some(s.p50);
        }
        rows.push((name, clients, samples.len(), s));
    }

    let mut md = String::new();
    let date = date();
    md.push_str("## Server\n\n");
    md.push_str(&format!(
        "`POST /api/v1/inpaint` over a real socket, measured by the client \
         (`server-example/benches/server.rs`). Model `{}` ({}), device `{}`, 1 worker, \
         SQLite history and local image store on, as `make run` would run it. \
         {date}; {} ({} threads).\n\n",
        info.model_id,
        info.model_version,
        info.device,
        cpu_name(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    ));
    md.push_str(&format!(
        "Command: `cargo bench -p server-example --bench server -- {}`\n\n",
        argv()
    ));
    md.push_str("| Request | Concurrency | n | p50 ms | p99 ms | req/s | model ms (median) | decode ms | encode ms | rest ms (p50 − the others) |\n");
    md.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
    for (name, clients, n, s) in &rows {
        // The rest: HTTP, multipart parsing, header probe, image store, history, queueing.
        let rest = s.p50 - s.model - s.decode - s.encode;
        md.push_str(&format!(
            "| {name} | {clients} | {n} | {:.0} | {:.0} | {:.2} | {:.0} | {:.1} | {:.1} | {:.0} |\n",
            s.p50, s.p99, s.throughput, s.model, s.decode, s.encode, rest
        ));
    }
    let s = &rows[0].3;
    let overhead = s.p50 - s.model;
    md.push_str(&format!(
        "\n- Everything but the model (HTTP, decode, encode, storing the three images, the \
         history event) at 512×512, concurrency 1: {overhead:.0} ms = {:.1} % of model time \
         (target ≤ 15 %).\n",
        100.0 * overhead / s.model
    ));
    let big = &rows[2].3;
    md.push_str(&format!(
        "- 4000×3000 JPEG with the hole in a 400×400 box: p50 {:.0} ms = {:.2}× the 512×512 \
         p50 (target ≤ 2×); `auto` runs the model on a crop around the hole only.\n",
        big.p50,
        big.p50 / c1.unwrap()
    ));
    let (c1s, c4s) = (&rows[0].3, &rows[1].3);
    md.push_str(&format!(
        "- Concurrency 4 against 1 worker: {:.2} req/s vs {:.2} at concurrency 1 ({:.2}×). \
         Requests queue, and those of the same shape run as one batch when they meet in the \
         queue (the `rest` column then includes the queue wait).\n",
        c4s.throughput,
        c1s.throughput,
        c4s.throughput / c1s.throughput
    ));
    println!("{md}");
    if let Some(path) = &args.write {
        write_section(path, "## Server", &md);
    }
}

fn date() -> String {
    std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// The bench's own arguments, for the command line in the report.
fn argv() -> String {
    std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect::<Vec<_>>()
        .join(" ")
}

/// A server on a fresh data dir with the bench's model plus `extra` flags, once its model is
/// loaded.
async fn serve(args: &Args, extra: &[&str]) -> (String, AppState, ModelInfo, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    let mut argv = vec![
        "server-example".to_owned(),
        "--data-dir".to_owned(),
        data.path().display().to_string(),
        "--device".to_owned(),
        args.device.clone(),
        "--max-upload-mb".to_owned(),
        "64".to_owned(),
    ];
    if let Some(m) = &args.model {
        argv.extend(["--model".to_owned(), m.display().to_string()]);
    }
    argv.extend(extra.iter().map(|s| s.to_string()));
    let cfg = Config::parse_from(argv);
    let state = AppState::from_config(&cfg).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let router = app(state.clone());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let server_example::backend::Backend::Local(pool) = &*state.backend else {
        unreachable!("no --remote-model here")
    };
    let info = loop {
        match pool.readiness() {
            Ok(info) => break info,
            Err(None) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(Some(e)) => panic!("model: {e}"),
        }
    };
    (url, state, info, data)
}

async fn job_status(client: &reqwest::Client, url: &str, id: &str) -> serde_json::Value {
    client
        .get(format!("{url}/api/v1/finetune/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// p50 at concurrency 1 with no job, then while a job trains, for one training priority.
async fn with_and_without_job(
    args: &Args,
    flags: &[&str],
    image: &[u8],
    mask: &[u8],
) -> (ModelInfo, [Stats; 2], Stats, f64) {
    let mut extra = vec!["--finetune-max-steps", "1000000"];
    extra.extend_from_slice(flags);
    let (url, state, info, _data) = serve(args, &extra).await;
    // The first requests of a process run slower for a while (allocator and libtorch
    // caches warming up; two warm-up requests were not enough): discard a full round.
    run(&url, image, mask, "png", 1, args.n).await;
    let (before, wall) = run(&url, image, mask, "png", 1, args.n).await;
    let before = stats(&before, wall);
    // A job on crops of the sample photo, long enough to outlast the measurement.
    let client = reqwest::Client::new();
    let mut form = reqwest::multipart::Form::new()
        .text("steps", "1000000")
        .text("user_id", "bench");
    for i in 0..8u32 {
        let crop = imageops::crop_imm(&photo(1024, 768), 64 * i, 48 * i, 512, 384).to_image();
        form = form.part(
            "images",
            reqwest::multipart::Part::bytes(encode(crop.into(), ImageFormat::Png))
                .file_name(format!("{i}.png")),
        );
    }
    let r = client
        .post(format!("{url}/api/v1/finetune"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let v: serde_json::Value = r.json().await.unwrap();
    let id = v["job_id"].as_str().unwrap().to_owned();
    let first = loop {
        let v = job_status(&client, &url, &id).await;
        assert_ne!(v["state"], "failed", "{v}");
        if v["step"].as_u64().unwrap_or(0) >= 1 {
            break v["step"].as_u64().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (busy, wall) = run(&url, image, mask, "png", 1, args.n).await;
    let busy = stats(&busy, wall);
    let last = job_status(&client, &url, &id).await["step"]
        .as_u64()
        .unwrap();
    let steps_per_s = (last - first) as f64 / wall.as_secs_f64();
    let r = client
        .delete(format!("{url}/api/v1/finetune/{id}"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    // Idle again once the job is cancelled: the two baselines bracket the job, so a change
    // in other load on the machine shows up as a gap between them.
    let (after, wall) = run(&url, image, mask, "png", 1, args.n).await;
    let after = stats(&after, wall);
    if let Some(jobs) = &state.finetune {
        jobs.shutdown().await;
    }
    (info, [before, after], busy, steps_per_s)
}

async fn finetune_bench(args: &Args) {
    let image = encode(photo(512, 512).into(), ImageFormat::Png);
    let mask = encode(
        strokes(512, 512, (96, 96, 320, 320)).into(),
        ImageFormat::Png,
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let all = cores.to_string();
    let load_before = load_average();
    let mut rows = Vec::new();
    let mut model = None;
    for (name, flags) in [
        (
            "default: `--finetune-threads 1 --finetune-nice 10`",
            vec!["--finetune-threads", "1", "--finetune-nice", "10"],
        ),
        (
            "unprotected: `--finetune-threads <cores> --finetune-nice 0`",
            vec!["--finetune-threads", all.as_str(), "--finetune-nice", "0"],
        ),
    ] {
        let (info, idle, busy, steps) = with_and_without_job(args, &flags, &image, &mask).await;
        eprintln!(
            "{name}: p50 {:.0} ms before, {:.0} ms with a job ({steps:.2} steps/s), {:.0} ms after",
            idle[0].p50, busy.p50, idle[1].p50
        );
        model.get_or_insert(info);
        rows.push((name, idle, busy, steps));
    }
    let info = model.unwrap();
    let load_after = load_average();
    let mut md = String::from("## Server: inference while a job trains\n\n");
    md.push_str(&format!(
        "`POST /api/v1/inpaint`, 512×512 PNG → PNG, concurrency 1, {} requests with the job training, \
         measured by the client (`server-example/benches/server.rs --finetune`). Model `{}` \
         ({}), device `{}`, 1 inference worker. The job fine-tunes that model on 8 crops of \
         the sample photo with the default job settings (256² crops, batch 4, no VGG terms). \
         Each row is its own server, warmed up with {} requests; no-job latency is measured \
         with {} requests before the job starts and again after it is cancelled. \
         {}; {} ({cores} threads); load average (1 min) {load_before} before, \
         {load_after} after.\n\n",
        args.n,
        info.model_id,
        info.model_version,
        info.device,
        args.n,
        args.n,
        date(),
        cpu_name(),
    ));
    md.push_str(&format!(
        "Command: `cargo bench -p server-example --bench server -- {}`\n\n",
        argv()
    ));
    md.push_str("| Training thread | p50 ms, no job (before / after) | p50 ms, job training | ratio to no job | p99 ms, job training | training steps/s meanwhile |\n");
    md.push_str("|---|---|---|---|---|---|\n");
    for (name, [before, after], busy, steps) in &rows {
        md.push_str(&format!(
            "| {name} | {:.0} / {:.0} | {:.0} | {:.2}× | {:.0} | {steps:.2} |\n",
            before.p50,
            after.p50,
            busy.p50,
            2.0 * busy.p50 / (before.p50 + after.p50),
            busy.p99
        ));
    }
    println!("{md}");
    if let Some(path) = &args.write {
        write_section(path, "## Server: inference while a job trains", &md);
    }
}

/// The 1-minute load average: other work on the machine skews every figure here.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

/// A relative `path` is taken from the workspace root: `cargo bench` runs benches in the
/// package folder.
fn write_section(path: &std::path::Path, heading: &str, md: &str) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = &root.join(path);
    let old = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n".into());
    std::fs::write(path, replace_section(&old, heading, md)).unwrap();
    eprintln!("wrote the `{heading}` section of {}", path.display());
}

/// `old` with its `heading` section (up to the next `## `) replaced by `section`, or with
/// `section` appended.
fn replace_section(old: &str, heading: &str, section: &str) -> String {
    let start = old
        .find(&format!("\n{heading}\n"))
        .map(|i| i + 1)
        .or_else(|| old.starts_with(&format!("{heading}\n")).then_some(0));
    match start {
        Some(s) => {
            let end = old[s + 1..]
                .find("\n## ")
                .map_or(old.len(), |e| s + 1 + e + 1);
            format!("{}{}\n{}", &old[..s], section.trim_end(), &old[end..])
        }
        None => format!("{}\n\n{}", old.trim_end(), section),
    }
}
