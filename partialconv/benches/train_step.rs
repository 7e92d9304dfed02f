//! One training step of the bundled architecture (width 32, 7 levels) on a batch of 4
//! 512² crops, the shape of the default model's later runs, in full precision and with bf16
//! convolutions (`TrainConfig::bf16`), the two interleaved round by round so that both see
//! the same load. A step is the forward, the pixel loss (valid L1, hole squared error, TV),
//! the backward and Adam.
//!
//! `cargo bench -p partialconv --bench train_step [-- ROUNDS]` (default 5 rounds).

use std::time::Instant;

use partialconv::bench::{median, sample_input};
use partialconv::loss::{InpaintingLoss, LossWeights};
use partialconv::train::Adam;
use partialconv::{Mask, Model, ModelMeta, Normalization, PConvUNetConfig};
use tch::{Device, Kind};

fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(5);
    tch::manual_seed(0);
    let config = PConvUNetConfig {
        width: 32,
        ..Default::default()
    };
    let mut model = Model::new(ModelMeta::new(config), Device::Cpu).unwrap();
    let mut adam = Adam::new(&model);
    let loss = InpaintingLoss {
        weights: LossWeights {
            hole: 0.0,
            hole_mse: 12.0,
            ..Default::default()
        },
        normalization: Normalization::IMAGENET,
        vgg: None,
    };
    let (gt, valid) = sample_input(512, 4, Device::Cpu, Kind::Float);
    let mask = Mask::shared(valid.shallow_clone(), 3);
    let mut step = |model: &mut Model, bf16: bool| {
        model.net.train_compute = bf16.then_some(Kind::BFloat16);
        let start = Instant::now();
        let (output, _) = model.net.forward_t(&(&gt * &valid), &mask, true);
        let terms = loss.compute(&valid, &output, &gt);
        adam.zero_grad();
        terms.total.backward();
        adam.step(1e-6);
        start.elapsed().as_secs_f64()
    };
    let (mut fp32, mut bf16) = (vec![], vec![]);
    // Round 0 warms up oneDNN's kernels for both and is not counted.
    for round in 0..=rounds {
        let a = step(&mut model, false);
        let b = step(&mut model, true);
        if round > 0 {
            fp32.push(a);
            bf16.push(b);
        }
    }
    let (a, b) = (median(fp32), median(bf16));
    println!("train step, w32, 4×512², pixel loss, median of {rounds} interleaved rounds:");
    println!(
        "  fp32 {a:.2} s   bf16 convolutions {b:.2} s   speed-up {:.2}×",
        a / b
    );
}
