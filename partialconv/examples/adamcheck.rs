//! Checks `train::Adam` (ours, checkpointable) against tch's built-in Adam on one fixed batch:
//! both print the same losses step for step.
//!
//! `cargo run --release -p partialconv --example adamcheck`

use partialconv::loss::{InpaintingLoss, LossWeights};
use partialconv::{Convention, Mask, Model, ModelMeta, PConvUNetConfig};
use tch::nn::OptimizerConfig;
use tch::{Device, Kind, Tensor};
fn main() {
    for ours in [false, true] {
        tch::manual_seed(0);
        let config = PConvUNetConfig {
            layer_size: 5,
            width: 8,
            convention: Convention::Scaled,
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
        let mut adam = partialconv::train::Adam::new(&model);
        for step in 0..100 {
            let (out, _) = model.net.forward_t(
                &(&gt * &valid),
                &Mask::shared(valid.shallow_clone(), 3),
                true,
            );
            let t = loss.compute(&valid, &out, &gt);
            if ours {
                adam.zero_grad();
                t.total.backward();
                adam.step(1e-3);
            } else {
                opt.backward_step(&t.total);
            }
            if step % 25 == 0 || step == 99 {
                println!("ours={ours} {step} valid {:.4} hole {:.4}", t.valid, t.hole);
            }
        }
    }
}
