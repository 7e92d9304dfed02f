//! `checkpoint::import_pth` on checkpoints of the public PyTorch reimplementation, written by
//! `tests/reference/make_checkpoints.py` with real torch in both `torch.save` formats, and on
//! malicious pickles.

mod common;

use std::path::Path;

use common::reference_dir;

use partialconv::{checkpoint, Mask, Model};
use tch::{Device, Kind, Tensor};

fn expected() -> std::collections::HashMap<String, Tensor> {
    Tensor::read_safetensors(reference_dir().join("naoto_expected.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

fn assert_close(what: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.size(), want.size(), "{what}: shape");
    let scale = want.abs().max().double_value(&[]);
    let err = (got.to_kind(Kind::Double) - want.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
        / scale;
    assert!(
        err <= 1e-4,
        "{what}: max error {err:e} of the reference's range"
    );
}

fn check_import(file: &str) {
    let src = reference_dir().join(file);
    let model = checkpoint::import_pth(&src).unwrap_or_else(|e| panic!("{file}: {e}"));
    let c = model.meta.config;
    assert_eq!(
        (c.layer_size, c.width, c.input_channels),
        (4, 64, 3),
        "{file}: inferred config"
    );
    assert_eq!(c.convention, partialconv::Convention::Unscaled);
    assert_eq!(
        model.meta.normalization,
        partialconv::Normalization::IMAGENET
    );
    // Through a file round trip, as `partialconv import` does.
    let dst = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{file}.safetensors"));
    model.save(&dst, partialconv::Storage::F32).unwrap();
    let model = Model::load(&dst, Device::Cpu).unwrap();
    let e = expected();
    let mask = &e["mask"];
    let (out, out_mask) = tch::no_grad(|| {
        model
            .net
            .forward_t(&e["input"], &Mask::shared(mask.narrow(1, 0, 1), 3), false)
    });
    assert_close(&format!("{file} output"), &out, &e["output"]);
    assert_close(
        &format!("{file} output mask"),
        &out_mask.to_dense(),
        &e["output_mask"],
    );
}

#[test]
fn imports_zip_checkpoint() {
    check_import("naoto_zip.pth");
}

#[test]
fn imports_legacy_checkpoint() {
    check_import("naoto_legacy.pth");
}

#[test]
fn reads_strided_views_exactly() {
    let bytes = std::fs::read(reference_dir().join("naoto_zip.pth")).unwrap();
    let file = checkpoint::torch_pickle::read_pth(&bytes).unwrap();
    let e = expected();
    for (key, want) in [
        ("extra.t", "extra_t"),
        ("extra.offset", "extra_offset"),
        ("extra.shared_w_t", "extra_shared_w_t"),
    ] {
        let raw = &file.tensors[key];
        let got = Tensor::from_slice(&raw.to_f32_vec().unwrap())
            .reshape(raw.shape.iter().map(|&d| d as i64).collect::<Vec<_>>());
        assert!(
            got.equal(&e[want].to_kind(Kind::Float)),
            "{key} differs from torch's contiguous copy"
        );
    }
}

#[test]
fn malicious_pickles_are_rejected_without_running() {
    let marker = Path::new("/tmp/pwned");
    let _ = std::fs::remove_file(marker);
    for file in ["malicious.pth", "malicious_legacy.pth"] {
        let err = checkpoint::import_pth(&reference_dir().join(file))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("forbidden") && (err.contains("system") || err.contains("eval")),
            "{file}: {err}"
        );
    }
    assert!(!marker.exists(), "a payload ran");
}
