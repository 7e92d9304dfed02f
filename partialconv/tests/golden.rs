//! The layer and the U-Net against golden outputs of the independent PyTorch reference in
//! `tests/reference/` (`make_fixtures.py`), on both mask paths.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use partialconv::{
    Convention, Mask, Model, ModelMeta, PConvUNetConfig, PartialConv2d, PartialConvConfig,
};
use tch::{Device, Kind, Tensor};

const TOLERANCE: f64 = 1e-4;

struct Fixture {
    tensors: HashMap<String, Tensor>,
    meta: HashMap<String, String>,
}

impl Fixture {
    fn load(path: &Path) -> Fixture {
        let bytes = std::fs::read(path).unwrap();
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let meta = header.metadata().clone().unwrap_or_default();
        let tensors = Tensor::read_safetensors(path)
            .unwrap()
            .into_iter()
            .collect();
        Fixture { tensors, meta }
    }
    fn t(&self, name: &str) -> &Tensor {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("fixture lacks `{name}`"))
    }
    fn m(&self, key: &str) -> &str {
        self.meta
            .get(key)
            .unwrap_or_else(|| panic!("fixture metadata lacks `{key}`"))
    }
    fn i(&self, key: &str) -> i64 {
        self.m(key).parse().unwrap()
    }
    /// The U-Net a `unet_*` fixture describes, with the fixture's weights.
    fn model(&self, name: &str) -> Model {
        let config = PConvUNetConfig {
            layer_size: self.i("layer_size") as usize,
            width: self.i("width"),
            input_channels: self.i("input_channels"),
            convention: self.convention(),
            eps: 1e-8,
        };
        let model = Model::new(ModelMeta::new(config), Device::Cpu).unwrap();
        model.load_state_dict(&self.tensors, name).unwrap();
        model
    }

    fn convention(&self) -> Convention {
        match self.m("convention") {
            "scaled" => Convention::Scaled,
            "unscaled" => Convention::Unscaled,
            other => panic!("unknown convention {other}"),
        }
    }
}

fn fixtures(prefix: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with(prefix) && name.ends_with(".safetensors")
        })
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no {prefix}* fixtures in {}", dir.display());
    v
}

/// Elementwise relative error with a floor of 1% of the reference's largest magnitude, so
/// values that are zero in the reference (holes) are compared absolutely.
fn assert_close(what: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.size(), want.size(), "{what}: shape");
    let got = got.to_kind(Kind::Double);
    let want = want.to_kind(Kind::Double);
    let floor = want.abs().max().double_value(&[]) * 1e-2 + 1e-12;
    let err = ((&got - &want).abs() / want.abs().clamp_min(floor))
        .max()
        .double_value(&[]);
    assert!(
        err <= TOLERANCE,
        "{what}: max relative error {err:e} > {TOLERANCE:e}"
    );
}

/// Whether an `N×C×H×W` mask is the same in every channel.
fn shared_across_channels(mask: &Tensor) -> bool {
    mask.size()[1] == 1 || mask.eq_tensor(&mask.narrow(1, 0, 1)).all().int64_value(&[]) == 1
}

/// The mask paths a fixture can exercise: the grouped one where the mask allows it, and the
/// general per-channel one whenever the mask has one map per input channel.
fn mask_paths(mask: &Tensor, in_channels: i64) -> Vec<(&'static str, Mask)> {
    let mut paths = Vec::new();
    if shared_across_channels(mask) {
        paths.push(("grouped", Mask::shared(mask.narrow(1, 0, 1), in_channels)));
    }
    let dense = if mask.size()[1] == 1 {
        mask.expand([-1, in_channels, -1, -1], false).contiguous()
    } else {
        mask.shallow_clone()
    };
    paths.push(("per-channel", Mask::PerChannel(dense)));
    paths
}

#[test]
fn layer_matches_pytorch_reference() {
    for path in fixtures("layer_") {
        let f = Fixture::load(&path);
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let cfg = PartialConvConfig {
            stride: f.i("stride"),
            padding: f.i("padding"),
            bias: f.m("bias") == "true",
            convention: f.convention(),
            eps: f.m("eps").parse().unwrap(),
        };
        let layer = PartialConv2d::new(
            f.t("weight").shallow_clone(),
            f.tensors.get("bias").map(|b| b.shallow_clone()),
            cfg,
        );
        for (path_name, mask) in mask_paths(f.t("mask"), layer.in_channels()) {
            let (out, out_mask) = layer.forward(f.t("x"), &mask);
            assert_close(&format!("{name} [{path_name}] out"), &out, f.t("out"));
            let want_mask = f.t("out_mask");
            let got_mask = out_mask.to_dense();
            let got_mask = if want_mask.size()[1] == 1 {
                got_mask.narrow(1, 0, 1)
            } else {
                got_mask
            };
            assert_close(
                &format!("{name} [{path_name}] out_mask"),
                &got_mask,
                want_mask,
            );
        }
    }
}

#[test]
fn unet_matches_pytorch_reference() {
    for path in fixtures("unet_") {
        let f = Fixture::load(&path);
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let mut model = f.model(&name);
        let config = model.meta.config;
        for (channels_last, absorb_bn) in [(true, false), (false, false), (true, true)] {
            model.net.set_channels_last(channels_last);
            if absorb_bn {
                model.net.absorb_bn();
            }
            let layout = match (channels_last, absorb_bn) {
                (true, false) => "NHWC",
                (false, false) => "NCHW",
                _ => "NHWC, batch norm absorbed",
            };
            for (path_name, mask) in mask_paths(f.t("mask"), config.input_channels) {
                let (out, out_mask) =
                    tch::no_grad(|| model.net.forward_t(f.t("input"), &mask, false));
                let case = format!("{name} [{path_name}, {layout}]");
                assert_close(&format!("{case} output"), &out, f.t("output"));
                assert_close(
                    &format!("{case} output_mask"),
                    &out_mask.to_dense(),
                    f.t("output_mask"),
                );
            }
        }
    }
}

#[test]
fn both_mask_paths_agree_on_random_masks() {
    tch::manual_seed(7);
    let config = PConvUNetConfig {
        layer_size: 4,
        width: 4,
        ..Default::default()
    };
    let model = Model::new(ModelMeta::new(config), Device::Cpu).unwrap();
    for trial in 0..4 {
        let x = Tensor::randn([2, 3, 32, 48], (Kind::Float, Device::Cpu));
        let valid = Tensor::rand([2, 1, 32, 48], (Kind::Float, Device::Cpu))
            .gt(0.3 + 0.15 * trial as f64)
            .to_kind(Kind::Float);
        let grouped = Mask::shared(valid.shallow_clone(), 3);
        let per_channel = Mask::PerChannel(valid.expand([-1, 3, -1, -1], false).contiguous());
        let (a, ma) = tch::no_grad(|| model.net.forward_t(&x, &grouped, false));
        let (b, mb) = tch::no_grad(|| model.net.forward_t(&x, &per_channel, false));
        assert_close("grouped vs per-channel output", &a, &b);
        assert_close(
            "grouped vs per-channel mask",
            &ma.to_dense(),
            &mb.to_dense(),
        );
    }
}

/// Mixed precision (`train_compute`) changes the training passes only: they stay within
/// bf16's rounding of the fp32 pass and still send fp32 gradients to fp32 weights, while
/// inference keeps matching the reference exactly.
#[test]
fn bf16_training_passes_stay_near_fp32_and_leave_inference_exact() {
    for path in fixtures("unet_") {
        let f = Fixture::load(&path);
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let mut model = f.model(&name);
        let config = model.meta.config;
        let (_, mask) = mask_paths(f.t("mask"), config.input_channels).remove(0);
        let x = f.t("input");
        // Training passes update the running statistics; reloading the fixture resets them.
        let (fp32, _) = tch::no_grad(|| model.net.forward_t(x, &mask, true));
        model.load_state_dict(&f.tensors, &name).unwrap();
        model.net.train_compute = Some(Kind::BFloat16);
        let (bf16, _) = model.net.forward_t(x, &mask, true);
        assert_eq!(bf16.kind(), Kind::Float, "{name}: output kind");
        let err =
            (&bf16 - &fp32).abs().max().double_value(&[]) / fp32.abs().max().double_value(&[]);
        assert!(err > 0.0, "{name}: the bf16 pass computed in fp32");
        assert!(err < 3e-2, "{name}: bf16 pass off by {err:e} of the range");
        bf16.square().sum(Kind::Float).backward();
        for (key, var) in model.vs.variables() {
            if var.requires_grad() {
                assert_eq!(var.kind(), Kind::Float, "{name}: {key} kind");
                assert_eq!(var.grad().kind(), Kind::Float, "{name}: {key} grad kind");
                assert!(var.grad().abs().sum(Kind::Double).double_value(&[]) > 0.0);
            }
        }
        model.load_state_dict(&f.tensors, &name).unwrap();
        let (out, _) = tch::no_grad(|| model.net.forward_t(x, &mask, false));
        assert_close(
            &format!("{name} inference with bf16 training on"),
            &out,
            f.t("output"),
        );
    }
}

/// bf16 inference (`set_conv_kind`, what `Precision::Bf16` does) rounds each convolution's
/// input and weights to bf16's 8-bit significand, a relative error of at most u = 2⁻⁸ each,
/// and accumulates in fp32; through the 2L convolutions of the U-Net these add up at most
/// linearly, so the output stays within 2u·2L of the range of the fp32 reference. The masks
/// never leave fp32, so they match exactly.
#[test]
fn bf16_inference_stays_within_bf16_rounding_of_the_reference() {
    let u = 2f64.powi(-8);
    for path in fixtures("unet_") {
        let f = Fixture::load(&path);
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let mut model = f.model(&name);
        let config = model.meta.config;
        model.net.absorb_bn();
        model.net.set_conv_kind(Kind::BFloat16);
        let tolerance = 2.0 * u * (2 * config.layer_size) as f64;
        for (path_name, mask) in mask_paths(f.t("mask"), config.input_channels) {
            let (out, out_mask) = tch::no_grad(|| model.net.forward_t(f.t("input"), &mask, false));
            assert_eq!(out.kind(), Kind::Float, "{name}: output kind");
            let want = f.t("output");
            let err =
                (&out - want).abs().max().double_value(&[]) / want.abs().max().double_value(&[]);
            assert!(err > 0.0, "{name} [{path_name}]: computed in fp32");
            assert!(
                err < tolerance,
                "{name} [{path_name}]: off by {err:e} of the range > {tolerance:e}"
            );
            assert_close(
                &format!("{name} [{path_name}] bf16 output_mask"),
                &out_mask.to_dense(),
                f.t("output_mask"),
            );
        }
    }
}
