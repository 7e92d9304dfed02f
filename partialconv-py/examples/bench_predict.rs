//! The Rust side of the Python-overhead benchmark (`bench/overhead.py` runs both sides):
//! the median time of `Inpainter::predict` on one image and mask, inputs decoded once,
//! outside the timing, as the Python side does.
//!
//! ```text
//! bench_predict --model M --image I --mask K [--strategy original] [--iters 10]
//! bench_predict --make-model M --width 48      # a random-weight model to time with
//! ```
//! Prints one JSON line: `{"median_ms": .., "times_ms": [..], ..}`. With `--serve`, it
//! instead predicts once per line read from stdin and answers each with the wall and the
//! thread CPU milliseconds it took, so that the caller can pair its own calls with these one
//! by one. `--threads N` sets libtorch's intra-op threads.

use std::path::PathBuf;
use std::time::Instant;

use partialconv::{io, Inpainter, Model, ModelMeta, PConvUNetConfig, Storage, Strategy};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (mut model, mut image, mut mask, mut make_model) = (None, None, None, None);
    let (mut strategy, mut iters, mut width) = (Strategy::Original, 10usize, 48i64);
    let mut serve = false;
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--model" => model = Some(PathBuf::from(value()?)),
            "--image" => image = Some(PathBuf::from(value()?)),
            "--mask" => mask = Some(PathBuf::from(value()?)),
            "--make-model" => make_model = Some(PathBuf::from(value()?)),
            "--strategy" => strategy = value()?.parse()?,
            "--iters" => iters = value()?.parse()?,
            "--width" => width = value()?.parse()?,
            "--serve" => serve = true,
            "--threads" => tch::set_num_threads(value()?.parse()?),
            _ => return Err(format!("unknown argument {flag}").into()),
        }
    }
    if let Some(out) = make_model {
        let config = PConvUNetConfig {
            width,
            ..Default::default()
        };
        Model::new(ModelMeta::new(config), tch::Device::Cpu)?.save(&out, Storage::F32)?;
        return Ok(());
    }
    let inpainter = Inpainter::load(model.as_deref(), tch::Device::Cpu)?;
    let image = io::read_image(&image.ok_or("--image is required")?)?;
    let mask = io::read_mask(&mask.ok_or("--mask is required")?)?;
    // One warm-up: libtorch allocates and picks kernels on the first call.
    inpainter.predict(&image, &mask, strategy)?;
    if serve {
        use std::io::{BufRead, Write};
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready")?;
        out.flush()?;
        for line in std::io::stdin().lock().lines() {
            line?;
            let (start, cpu) = (Instant::now(), thread_cpu_ms()?);
            inpainter.predict(&image, &mask, strategy)?;
            let wall = start.elapsed().as_secs_f64() * 1e3;
            writeln!(out, "{wall:.3} {:.3}", thread_cpu_ms()? - cpu)?;
            out.flush()?;
        }
        return Ok(());
    }
    let mut times: Vec<f64> = (0..iters)
        .map(|_| {
            let start = Instant::now();
            inpainter.predict(&image, &mask, strategy)?;
            Ok(start.elapsed().as_secs_f64() * 1e3)
        })
        .collect::<partialconv::Result<_>>()?;
    let raw = times.clone();
    times.sort_by(f64::total_cmp);
    println!(
        "{{\"median_ms\": {:.3}, \"times_ms\": {:?}, \"iters\": {iters}, \"threads\": {}}}",
        times[times.len() / 2],
        raw,
        tch::get_num_threads()
    );
    Ok(())
}

/// CPU time of the calling thread, which does all the work with one intra-op thread: unlike
/// wall time, it hardly changes with the load other processes put on a shared machine.
/// Python's `time.thread_time()` reads the same clock.
fn thread_cpu_ms() -> std::io::Result<f64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat")?;
    let ns: f64 = stat
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| std::io::Error::other("unexpected /proc/thread-self/schedstat"))?;
    Ok(ns / 1e6)
}
