//! The Rust side of the Python-overhead benchmark (`bench/overhead.py` runs both sides):
//! the median time of `Inpainter::predict` on one image and mask, inputs decoded once,
//! outside the timing, as the Python side does.
//!
//! ```text
//! bench_predict --model M --image I --mask K [--strategy original] [--iters 10]
//! bench_predict --make-model M --width 48      # a random-weight model to time with
//! ```
//! Prints one JSON line: `{"median_ms": .., "times_ms": [..], ..}`.

use std::path::PathBuf;
use std::time::Instant;

use partialconv::{io, Inpainter, Model, ModelMeta, PConvUNetConfig, Storage, Strategy};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (mut model, mut image, mut mask, mut make_model) = (None, None, None, None);
    let (mut strategy, mut iters, mut width) = (Strategy::Original, 10usize, 48i64);
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
