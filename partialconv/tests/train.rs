//! FineTuner on tiny synthetic photos: learning happens, checkpoints round-trip and resume,
//! and bad data gets clear errors.

use std::ops::ControlFlow;
use std::path::Path;

use image::{Rgb, RgbImage};
use partialconv::train::{FineTuner, TrainConfig};
use partialconv::{Error, PConvUNetConfig};

/// Smooth gradients with a few soft blobs: structure a small network can learn to continue.
fn write_photos(dir: &Path, n: u32) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        let img = RgbImage::from_fn(80, 72, |x, y| {
            let (fx, fy) = (x as f32 / 80.0, y as f32 / 72.0);
            let blob = (-((fx - 0.3 - 0.05 * i as f32).powi(2) + (fy - 0.6).powi(2)) * 20.0).exp();
            Rgb([
                (255.0 * (0.2 + 0.6 * fx)) as u8,
                (255.0 * (0.3 + 0.5 * fy * (1.0 - blob))) as u8,
                (255.0 * (0.1 + 0.8 * blob)) as u8,
            ])
        });
        img.save(dir.join(format!("p{i}.png"))).unwrap();
    }
}

fn tiny_config(root: &Path, steps: u64) -> TrainConfig {
    let mut cfg = TrainConfig::new(root.join("train"), root.join("model.safetensors"));
    cfg.val_data = Some(root.join("val"));
    cfg.model = PConvUNetConfig {
        layer_size: 4,
        width: 8,
        ..cfg.model
    };
    cfg.steps = steps;
    cfg.stage2_at = steps;
    cfg.batch_size = 4;
    cfg.train_size = 64;
    cfg.photo_side = 72;
    cfg.val_size = 64;
    cfg.max_val_images = 3;
    cfg.val_every = 1000;
    cfg.checkpoint_every = 5;
    cfg.lr = 1e-3;
    cfg.loader_threads = 1;
    cfg
}

fn setup() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    write_photos(&tmp.path().join("train"), 6);
    write_photos(&tmp.path().join("val"), 3);
    tmp
}

#[test]
fn loss_falls_and_validation_psnr_rises() {
    tch::manual_seed(0);
    let tmp = setup();
    let mut tuner = FineTuner::new(tiny_config(tmp.path(), 30)).unwrap();
    let before = tuner.validate().unwrap().mean_psnr();
    let mut losses = Vec::new();
    let mut steps_seen = Vec::new();
    let summary = tuner
        .run(|p| {
            losses.push(p.loss);
            steps_seen.push(p.step);
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(
        steps_seen,
        (1..=30).collect::<Vec<u64>>(),
        "the callback sees every step"
    );
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (first, last) = (mean(&losses[..8]), mean(&losses[22..]));
    eprintln!("loss {first:.3} → {last:.3}");
    assert!(
        last < 0.8 * first,
        "loss did not fall: {first:.3} → {last:.3}"
    );
    let after = summary
        .last_val
        .expect("validation at the last step")
        .mean_psnr();
    eprintln!("psnr {before:.2} → {after:.2}");
    assert!(
        after > before + 1.0,
        "validation PSNR did not rise: {before:.2} → {after:.2} dB"
    );
    assert!(tmp.path().join("model.safetensors").exists());
    for file in [
        "log.csv",
        "progress.png",
        "samples.png",
        "checkpoint.safetensors",
    ] {
        assert!(
            tmp.path().join("model.safetensors.run").join(file).exists(),
            "{file} missing"
        );
    }
}

#[test]
fn checkpoint_round_trips_and_resume_keeps_the_step() {
    tch::manual_seed(1);
    let tmp = setup();
    let mut first = FineTuner::new(tiny_config(tmp.path(), 10)).unwrap();
    first.run(|_| ControlFlow::Continue(())).unwrap();
    let mut resumed = FineTuner::new(tiny_config(tmp.path(), 14)).unwrap();
    assert_eq!(resumed.step(), 10);
    let a = first.model().vs.variables();
    for (name, t) in resumed.model().vs.variables() {
        assert!(t.equal(&a[&name]), "{name} changed across the checkpoint");
    }
    let mut seen = Vec::new();
    resumed
        .run(|p| {
            seen.push(p.step);
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(seen, vec![11, 12, 13, 14]);
}

#[test]
fn a_callback_can_stop_training_and_the_checkpoint_is_kept() {
    let tmp = setup();
    let mut tuner = FineTuner::new(tiny_config(tmp.path(), 50)).unwrap();
    let err = tuner
        .run(|p| {
            if p.step == 3 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap_err();
    assert!(matches!(err, Error::Interrupted { step: 3 }), "{err}");
    assert_eq!(
        FineTuner::new(tiny_config(tmp.path(), 50)).unwrap().step(),
        3
    );
}

#[test]
fn failed_checkpoint_write_keeps_the_previous_one() {
    let tmp = setup();
    let mut tuner = FineTuner::new(tiny_config(tmp.path(), 5)).unwrap();
    tuner.run(|_| ControlFlow::Continue(())).unwrap();
    let run = tmp.path().join("model.safetensors.run");
    let good = std::fs::read(run.join("checkpoint.safetensors")).unwrap();
    // A directory where the temporary file must go makes the next write fail.
    std::fs::create_dir(run.join("checkpoint.writing")).unwrap();
    assert!(tuner.save_checkpoint().is_err());
    assert_eq!(
        std::fs::read(run.join("checkpoint.safetensors")).unwrap(),
        good
    );
}

#[test]
fn unreadable_images_are_skipped_and_counted() {
    let tmp = setup();
    std::fs::write(tmp.path().join("train/broken.jpg"), b"not a jpeg").unwrap();
    let tuner = FineTuner::new(tiny_config(tmp.path(), 1)).unwrap();
    assert_eq!(tuner.skipped_images(), 1);
}

#[test]
fn fewer_than_two_usable_images_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    write_photos(&tmp.path().join("train"), 1);
    std::fs::write(tmp.path().join("train/broken.png"), b"nope").unwrap();
    write_photos(&tmp.path().join("val"), 1);
    let err = FineTuner::new(tiny_config(tmp.path(), 1))
        .err()
        .expect("must fail")
        .to_string();
    assert!(
        err.contains("only 1 usable image")
            && err.contains("1 unreadable")
            && err.contains("at least 2"),
        "{err}"
    );
}

#[test]
fn a_wrong_vgg_file_is_a_clear_error() {
    let tmp = setup();
    std::fs::write(tmp.path().join("vgg.safetensors"), b"junk").unwrap();
    let mut cfg = tiny_config(tmp.path(), 1);
    cfg.vgg = Some(tmp.path().join("vgg.safetensors"));
    let err = FineTuner::new(cfg).err().expect("must fail").to_string();
    assert!(
        err.contains("vgg.safetensors") && err.contains("not a VGG19 feature file"),
        "{err}"
    );
}

#[test]
fn a_crop_size_the_network_cannot_halve_is_a_clear_error() {
    let tmp = setup();
    let mut cfg = tiny_config(tmp.path(), 1);
    cfg.train_size = 40; // four levels need a multiple of 16
    let err = FineTuner::new(cfg).err().expect("must fail");
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("training size 40") && msg.contains("multiple of 16"),
        "{msg}"
    );
}

#[test]
fn a_run_cut_by_its_time_budget_validates_its_last_step() {
    let tmp = setup();
    let mut cfg = tiny_config(tmp.path(), 1000);
    cfg.time_budget = Some(std::time::Duration::from_millis(1));
    let summary = FineTuner::new(cfg)
        .unwrap()
        .run(|_| ControlFlow::Continue(()))
        .unwrap();
    assert!(summary.steps < 1000, "the budget must cut the run");
    let val = summary.last_val.expect("the last step is validated");
    assert_eq!(val.step, summary.steps);
}

#[test]
fn a_time_budget_plan_shrinks_and_grows_back_with_the_pace_but_never_past_the_request() {
    use partialconv::train::plan_for_budget;
    use std::time::Duration;
    let requested = (2000, 1500);
    // A slow stretch (3 s a step, 1000 s left) at step 100: 100 + 0.95·1000/3 steps.
    let (steps, stage2) = plan_for_budget(100, 3.0, Duration::from_secs(1000), requested, 1500);
    assert_eq!(steps, 416);
    assert_eq!(stage2, 312, "stage 2 keeps its three quarters");
    // The pace recovers (1 s a step, 900 s left): the plan grows again.
    let (steps, stage2) = plan_for_budget(200, 1.0, Duration::from_secs(900), requested, stage2);
    assert_eq!((steps, stage2), (1055, 791));
    // Faster than the request needs: the request caps it.
    assert_eq!(
        plan_for_budget(300, 0.01, Duration::from_secs(900), requested, stage2),
        requested
    );
    // Once stage 2 has begun it is not moved, and at least one more step is planned.
    assert_eq!(
        plan_for_budget(900, 50.0, Duration::from_secs(10), requested, 791),
        (901, 791)
    );
}

#[test]
fn snapshots_are_saved_every_n_steps_and_average() {
    let tmp = setup();
    let mut cfg = tiny_config(tmp.path(), 6);
    cfg.snapshot_every = Some(3);
    FineTuner::new(cfg)
        .unwrap()
        .run(|_| ControlFlow::Continue(()))
        .unwrap();
    let dir = tmp.path().join("model.safetensors.run/snapshots");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    let stems: Vec<_> = names
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(stems, ["step-0000003", "step-0000006"]);
    let avg = partialconv::average::average_files(&names, tch::Device::Cpu).unwrap();
    assert_eq!(avg.meta.config.width, 8);
}

#[test]
fn bf16_mixed_precision_training_learns_and_saves_fp32_weights() {
    tch::manual_seed(0);
    let tmp = setup();
    let mut cfg = tiny_config(tmp.path(), 30);
    cfg.bf16 = true;
    let mut tuner = FineTuner::new(cfg).unwrap();
    let before = tuner.validate().unwrap().mean_psnr();
    let mut losses = Vec::new();
    let summary = tuner
        .run(|p| {
            losses.push(p.loss);
            ControlFlow::Continue(())
        })
        .unwrap();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (first, last) = (mean(&losses[..8]), mean(&losses[22..]));
    assert!(
        last < 0.8 * first,
        "loss did not fall: {first:.3} → {last:.3}"
    );
    let after = summary.last_val.unwrap().mean_psnr();
    assert!(
        after > before + 1.0,
        "validation PSNR did not rise: {before:.2} → {after:.2} dB"
    );
    let saved = tch::Tensor::read_safetensors(tmp.path().join("model.safetensors")).unwrap();
    assert!(saved
        .iter()
        .all(|(name, t)| t.kind() == tch::Kind::Float || !name.contains("weight")));
}
