//! The `partialconv` binary: happy paths and every bad input the CLI promises to name.

use std::path::PathBuf;
use std::process::{Command, Output};

use image::{GenericImageView, GrayImage, Luma, Rgb, RgbImage};
use partialconv::{HoleMask, Model, ModelMeta, PConvUNetConfig, Storage};
use tch::Device;

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let f = Fixture {
            dir: tempfile::tempdir().unwrap(),
        };
        tch::manual_seed(1);
        let config = PConvUNetConfig {
            layer_size: 4,
            width: 4,
            ..Default::default()
        };
        Model::new(ModelMeta::new(config), Device::Cpu)
            .unwrap()
            .save(&f.path("model.safetensors"), Storage::F32)
            .unwrap();
        photo(40, 30).save(f.path("img.png")).unwrap();
        hole_mask(40, 30).save(f.path("mask.png")).unwrap();
        f
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_partialconv"))
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap()
    }
    fn predict(&self, image: &str, mask: &str, model: &str, extra: &[&str]) -> Output {
        let mut args = vec![
            "predict", "--image", image, "--mask", mask, "--output", "out.png", "--model", model,
        ];
        args.extend_from_slice(extra);
        self.run(&args)
    }
}

fn photo(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        Rgb([(x * 6) as u8, (y * 8) as u8, ((x + y) * 3) as u8])
    })
}

/// A white square in the middle: the hole.
fn hole_mask(w: u32, h: u32) -> GrayImage {
    GrayImage::from_fn(w, h, |x, y| {
        Luma([if (10..20).contains(&x) && (8..18).contains(&y) {
            255
        } else {
            0
        }])
    })
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_bad_input(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "exit status, stderr: {err}");
    assert_eq!(
        err.trim().lines().count(),
        1,
        "one-line message expected: {err}"
    );
    for n in needles {
        assert!(err.contains(n), "`{n}` missing from: {err}");
    }
}

#[test]
fn predict_fills_only_the_hole() {
    let f = Fixture::new();
    let o = f.predict(
        "img.png",
        "mask.png",
        "model.safetensors",
        &["--strategy", "original"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = image::open(f.path("out.png")).unwrap().to_rgb8();
    let (input, mask) = (photo(40, 30), hole_mask(40, 30));
    assert_eq!(out.dimensions(), input.dimensions());
    for (x, y, p) in out.enumerate_pixels() {
        if mask.get_pixel(x, y)[0] == 0 {
            assert_eq!(
                p,
                input.get_pixel(x, y),
                "pixel ({x},{y}) outside the hole changed"
            );
        }
    }
}

#[test]
fn mask_grow_fills_a_disk_wider_and_is_bounded() {
    let f = Fixture::new();
    let o = f.predict(
        "img.png",
        "mask.png",
        "model.safetensors",
        &["--strategy", "original", "--mask-grow", "2"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = image::open(f.path("out.png")).unwrap().to_rgb8();
    let input = photo(40, 30);
    // The hole is x 10..20, y 8..18: two more pixels each side are filled, and no more.
    let grown = HoleMask::from_image(&image::DynamicImage::ImageLuma8(hole_mask(40, 30)))
        .grown(2)
        .unwrap();
    for (x, y, p) in out.enumerate_pixels() {
        if !grown.get(x, y) {
            assert_eq!(
                p,
                input.get_pixel(x, y),
                "({x},{y}) is outside the grown hole"
            );
        }
    }
    assert_ne!(
        out.get_pixel(9, 12),
        input.get_pixel(9, 12),
        "one pixel left of the hole"
    );
    let o = f.predict(
        "img.png",
        "mask.png",
        "model.safetensors",
        &["--mask-grow", "-17"],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("-16..=16"), "{}", stderr(&o));
}

#[test]
fn missing_files_are_named() {
    let f = Fixture::new();
    assert_bad_input(
        &f.predict("nope.png", "mask.png", "model.safetensors", &[]),
        &["nope.png", "No such file"],
    );
    assert_bad_input(
        &f.predict("img.png", "nomask.png", "model.safetensors", &[]),
        &["nomask.png"],
    );
    assert_bad_input(
        &f.predict("img.png", "mask.png", "nomodel.safetensors", &[]),
        &["nomodel.safetensors"],
    );
}

#[test]
fn non_images_and_truncated_images_are_named() {
    let f = Fixture::new();
    std::fs::write(f.path("notes.png"), "this is text").unwrap();
    assert_bad_input(
        &f.predict("notes.png", "mask.png", "model.safetensors", &[]),
        &["notes.png", "not a readable image"],
    );
    let png = std::fs::read(f.path("img.png")).unwrap();
    std::fs::write(f.path("cut.png"), &png[..png.len() / 2]).unwrap();
    assert_bad_input(
        &f.predict("cut.png", "mask.png", "model.safetensors", &[]),
        &["cut.png", "not a readable image"],
    );
}

#[test]
fn mask_size_mismatch_suggests_resize_mask() {
    let f = Fixture::new();
    hole_mask(20, 15).save(f.path("small_mask.png")).unwrap();
    assert_bad_input(
        &f.predict("img.png", "small_mask.png", "model.safetensors", &[]),
        &["small_mask.png", "20×15", "40×30", "--resize-mask"],
    );
    let o = f.predict(
        "img.png",
        "small_mask.png",
        "model.safetensors",
        &["--resize-mask"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn bad_models_are_named() {
    let f = Fixture::new();
    std::fs::write(
        f.path("corrupt.safetensors"),
        b"\x10\x00\x00\x00\x00\x00\x00\x00garbage",
    )
    .unwrap();
    assert_bad_input(
        &f.predict("img.png", "mask.png", "corrupt.safetensors", &[]),
        &["corrupt.safetensors"],
    );
    // A valid safetensors file whose header claims a deeper network than its tensors hold.
    let mut bytes = std::fs::read(f.path("model.safetensors")).unwrap();
    let needle = br#"\"layer_size\":4"#;
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("header holds layer_size");
    bytes[at + needle.len() - 1] = b'5';
    std::fs::write(f.path("deeper.safetensors"), &bytes).unwrap();
    assert_bad_input(
        &f.predict("img.png", "mask.png", "deeper.safetensors", &[]),
        &["deeper.safetensors", "missing tensor", "_5."],
    );
    let o = f.run(&["info", "corrupt.safetensors"]);
    assert_bad_input(&o, &["corrupt.safetensors"]);
}

#[test]
fn empty_mask_returns_the_input_with_a_note() {
    let f = Fixture::new();
    GrayImage::new(40, 30).save(f.path("empty.png")).unwrap();
    let o = f.predict("img.png", "empty.png", "model.safetensors", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("no hole"), "{}", stderr(&o));
    assert_eq!(
        image::open(f.path("out.png")).unwrap().to_rgb8(),
        photo(40, 30)
    );
}

#[test]
fn batch_goes_on_past_bad_files_and_fails_at_the_end() {
    let f = Fixture::new();
    for d in ["imgs", "masks"] {
        std::fs::create_dir(f.path(d)).unwrap();
    }
    photo(40, 30).save(f.path("imgs/a.png")).unwrap();
    hole_mask(40, 30).save(f.path("masks/a.png")).unwrap();
    std::fs::write(f.path("imgs/b.png"), "not an image").unwrap();
    hole_mask(40, 30).save(f.path("masks/b.png")).unwrap();
    photo(40, 30).save(f.path("imgs/c.jpg")).unwrap(); // no mask with this stem
    let o = f.run(&[
        "batch",
        "--images",
        "imgs",
        "--masks",
        "masks",
        "--output",
        "out",
        "--model",
        "model.safetensors",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("b.png") && err.contains("c.jpg") && err.contains("1 of 3"),
        "{err}"
    );
    assert!(f.path("out/a.png").exists());
    assert!(!f.path("out/b.png").exists());
}

#[test]
fn rgba_brush_layer_and_alpha_are_handled() {
    let f = Fixture::new();
    // A transparent canvas with one opaque-ish stroke: alpha > 0 marks the hole.
    let brush = image::RgbaImage::from_fn(40, 30, |x, _| {
        image::Rgba([0, 0, 0, if (5..9).contains(&x) { 200 } else { 0 }])
    });
    brush.save(f.path("brush.png")).unwrap();
    let rgba = image::RgbaImage::from_fn(40, 30, |x, y| {
        image::Rgba([x as u8 * 6, y as u8 * 8, 9, 77])
    });
    rgba.save(f.path("rgba.png")).unwrap();
    let o = f.predict("rgba.png", "brush.png", "model.safetensors", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = image::open(f.path("out.png")).unwrap();
    assert!(out.color().has_alpha());
    for (x, y, p) in out.pixels() {
        assert_eq!(p[3], 77, "alpha at ({x},{y})");
        if !(5..9).contains(&x) {
            assert_eq!(p, *rgba.get_pixel(x, y));
        }
    }
}

#[test]
fn info_and_bench_report() {
    let f = Fixture::new();
    let o = f.run(&["info", "model.safetensors"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let info: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(info["config"]["layer_size"], 4);
    assert!(info["parameters"].as_u64().unwrap() > 1000);
    let o = f.run(&[
        "bench",
        "--model",
        "model.safetensors",
        "--size",
        "32",
        "--iters",
        "3",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let line: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(line["median_ms"].as_f64().unwrap() > 0.0);
}

#[test]
fn unknown_strategy_and_device_are_rejected() {
    let f = Fixture::new();
    let o = f.predict(
        "img.png",
        "mask.png",
        "model.safetensors",
        &["--strategy", "magic"],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("magic"));
    let o = f.predict(
        "img.png",
        "mask.png",
        "model.safetensors",
        &["--device", "tpu"],
    );
    assert_bad_input(&o, &["tpu"]);
    if !tch::Cuda::is_available() {
        let o = f.predict(
            "img.png",
            "mask.png",
            "model.safetensors",
            &["--device", "cuda"],
        );
        assert_bad_input(&o, &["cuda", "not available"]);
    }
}

#[test]
fn blend_changes_the_fill_ensembles_are_accepted_and_unknown_names_are_named() {
    let f = Fixture::new();
    let mut outs = Vec::new();
    for extra in [
        &[][..],
        &["--blend", "paste"],
        &["--mirror"],
        &["--ensemble", "single"],
    ] {
        let mut args = vec!["--strategy", "original"];
        args.extend_from_slice(extra);
        let o = f.predict("img.png", "mask.png", "model.safetensors", &args);
        assert!(o.status.success(), "{extra:?}: {}", stderr(&o));
        outs.push(image::open(f.path("out.png")).unwrap().to_rgb8());
    }
    assert_ne!(outs[0], outs[1], "--blend paste made no difference");
    // What the ensemble changes is tested on the library (tests/properties.rs): this tiny
    // random network's fill of a 10 px square rounds to the same pixels either way.
    for (flag, name) in [("--blend", "soft"), ("--ensemble", "dihedral")] {
        let o = f.predict("img.png", "mask.png", "model.safetensors", &[flag, name]);
        assert_eq!(o.status.code(), Some(2), "{flag} {name}");
        assert!(stderr(&o).contains(name), "{}", stderr(&o));
    }
}

#[test]
fn auto_device_picks_cuda_only_where_present() {
    let f = Fixture::new();
    let o = f.predict(
        "img.png",
        "mask.png",
        "model.safetensors",
        &["--device", "auto"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        partialconv::inpainter::parse_device("auto").unwrap(),
        tch::Device::cuda_if_available()
    );
}

#[test]
fn average_writes_a_loadable_model_and_needs_two() {
    let f = Fixture::new();
    let o = f.run(&[
        "average",
        "model.safetensors",
        "model.safetensors",
        "--out",
        "avg.safetensors",
        "--half",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let avg = Model::load(&f.path("avg.safetensors"), Device::Cpu).unwrap();
    let model = Model::load(&f.path("model.safetensors"), Device::Cpu).unwrap();
    assert_eq!(avg.meta.config, model.meta.config);
    let o = f.run(&["average", "model.safetensors", "--out", "one.safetensors"]);
    assert!(!o.status.success());
    assert!(!f.path("one.safetensors").exists());
    let o = f.run(&[
        "average",
        "model.safetensors",
        "missing.safetensors",
        "--out",
        "x",
    ]);
    assert_bad_input(&o, &["missing.safetensors"]);
}

#[test]
fn recalibrate_bn_rewrites_the_statistics_records_itself_and_names_an_empty_folder() {
    let f = Fixture::new();
    std::fs::create_dir(f.path("photos")).unwrap();
    for i in 0..3 {
        photo(48, 40)
            .save(f.path(&format!("photos/{i}.png")))
            .unwrap();
    }
    let args = |data: &'static str| {
        [
            "recalibrate-bn",
            "--model",
            "model.safetensors",
            "--data",
            data,
            "--out",
            "bn.safetensors",
            "--batches",
            "2",
            "--batch-size",
            "2",
            "--train-size",
            "32",
            "--device",
            "cpu",
        ]
    };
    let o = f.run(&args("photos"));
    assert!(o.status.success(), "{}", stderr(&o));
    let before = Model::load(&f.path("model.safetensors"), Device::Cpu).unwrap();
    let after = Model::load(&f.path("bn.safetensors"), Device::Cpu).unwrap();
    let (old, new) = (before.vs.variables(), after.vs.variables());
    let moved = |name: &str| !new[name].equal(&old[name]);
    assert!(moved("enc_2.bn.running_var") && moved("dec_2.bn.running_mean"));
    assert!(old
        .keys()
        .filter(|n| !n.contains("running_"))
        .all(|n| !moved(n)));
    let record = &after.meta.training["bn_recalibrated"];
    assert_eq!(record["batches"], 2, "{}", after.meta.training);
    assert_eq!(record["train_size"], 32);

    std::fs::create_dir(f.path("empty")).unwrap();
    let o = f.run(&args("empty"));
    assert_bad_input(&o, &["empty", "no readable photos"]);
}
