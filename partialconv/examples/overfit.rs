//! Why models trained from scratch use the `Scaled` convention: both conventions overfit one
//! fixed batch with the same optimiser, and `Unscaled` (which divides each window by up to
//! in·k² valid inputs) barely moves while `Scaled` learns.
//!
//! `cargo run --release -p partialconv --example overfit`

use partialconv::loss::{InpaintingLoss, LossWeights};
use partialconv::{Convention, Mask, Model, ModelMeta, PConvUNetConfig};
use tch::nn::OptimizerConfig;
use tch::{Device, Kind, Tensor};

fn main() {
    for convention in [Convention::Unscaled, Convention::Scaled] {
        tch::manual_seed(0);
        let config = PConvUNetConfig {
            layer_size: 4,
            width: 8,
            convention,
            ..Default::default()
        };
        let model = Model::new(ModelMeta::new(config), Device::Cpu).unwrap();
        let noise = (Tensor::rand([4, 3, 64, 64], (Kind::Float, Device::Cpu)) - 0.5) * 2.0;
        let gt = noise.avg_pool2d([9, 9], [1, 1], [4, 4], false, true, None::<i64>) * 3.0;
        let valid = Tensor::rand([4, 1, 64, 64], (Kind::Float, Device::Cpu))
            .gt(0.3)
            .to_kind(Kind::Float);
        let loss = InpaintingLoss {
            weights: LossWeights::default(),
            normalization: Default::default(),
            vgg: None,
        };
        let mut opt = tch::nn::Adam::default().build(&model.vs, 1e-3).unwrap();
        let mut first = None;
        let mut last = 0.0;
        for _ in 0..200 {
            let (out, _) = model.net.forward_t(
                &(&gt * &valid),
                &Mask::shared(valid.shallow_clone(), 3),
                true,
            );
            let terms = loss.compute(&valid, &out, &gt);
            opt.backward_step(&terms.total);
            last = terms.total.double_value(&[]);
            first.get_or_insert(last);
        }
        println!(
            "{convention:?}: loss {:.4} → {last:.4} after 200 steps",
            first.unwrap()
        );
    }
}
