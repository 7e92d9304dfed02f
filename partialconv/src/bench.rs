//! Timing helpers shared by `partialconv bench` and the criterion benches.

use std::time::Instant;

use tch::{Device, Kind, Tensor};

use crate::error::Result;
use crate::infer::precision::Precision;
use crate::model::Model;
use crate::nn::layer::Mask;

/// A random `N×3×S×S` input and a mask with a centred square hole of a quarter of the area.
pub fn sample_input(size: i64, batch: i64, device: Device, kind: Kind) -> (Tensor, Tensor) {
    let x = Tensor::randn([batch, 3, size, size], (kind, device));
    let valid = Tensor::ones([batch, 1, size, size], (kind, device));
    let _ = valid
        .narrow(2, size / 4, size / 2)
        .narrow(3, size / 4, size / 2)
        .fill_(0.0);
    (x, valid)
}

/// Median wall time of `iters` inference forwards (after one warm-up), in milliseconds.
/// `half` converts the model to fp16 in place first (a CUDA feature: CPU fp16 conv is slow);
/// `precision` is the kind the convolutions compute in, as the inpainter runs them.
pub fn median_forward_ms(
    model: &mut Model,
    size: i64,
    batch: i64,
    iters: usize,
    half: bool,
    precision: Precision,
) -> Result<f64> {
    let device = model.vs.device();
    let kind = if half { Kind::Half } else { Kind::Float };
    if half {
        model.vs.half();
    }
    // As the inpainter runs it.
    model.net.absorb_bn();
    let precision = precision.resolve(device);
    if !half && precision != Precision::Fp32 {
        model.net.set_conv_kind(precision.kind());
    }
    let (x, valid) = sample_input(size, batch, device, kind);
    let channels = model.net.config().input_channels;
    let mut times = Vec::with_capacity(iters);
    for i in 0..=iters {
        let start = Instant::now();
        tch::no_grad(|| {
            let _ = model.net.forward_t(
                &(&x * &valid),
                &Mask::shared(valid.shallow_clone(), channels),
                false,
            );
        });
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
        if i > 0 {
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(median(times))
}

/// The middle value (the upper one of an even count); the benches' summary of noisy times.
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Floating-point operations (2 per multiply-add) of the network's feature convolutions on
/// one `size×size` image: the numerator of the dense-convolution bound. 75.8 GFLOP for the
/// seed architecture at 512.
pub fn conv_flops(config: &crate::PConvUNetConfig, size: i64) -> f64 {
    let width = |i: usize| config.width << (i - 1).min(3);
    let mut flops = 0.0;
    let (mut side, mut c_in) = (size, config.input_channels);
    for i in 1..=config.layer_size {
        let k = match i {
            1 => 7,
            2 | 3 => 5,
            _ => 3,
        };
        side /= 2;
        flops += 2.0 * (width(i) * c_in * k * k) as f64 * (side * side) as f64;
        c_in = width(i);
    }
    for i in (1..=config.layer_size).rev() {
        let skip = if i == 1 {
            config.input_channels
        } else {
            width(i - 1)
        };
        let out = if i == 1 { config.input_channels } else { skip };
        side *= 2;
        flops += 2.0 * (out * (width(i) + skip) * 9) as f64 * (side * side) as f64;
    }
    flops
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_network_is_75_8_gflop_at_512() {
        let gflop = conv_flops(&crate::PConvUNetConfig::default(), 512) / 1e9;
        assert!((gflop - 75.8).abs() < 0.05, "{gflop}");
    }
}
