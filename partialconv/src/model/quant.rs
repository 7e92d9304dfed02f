//! Per-output-channel symmetric int8 storage for convolution weights ([`Storage::Int8`]).
//!
//! Each output channel `o` of a weight `W[o, i, kh, kw]` gets its own scale
//! `s[o] = max |W[o]| / 127`, and is stored as `q = round(W / s)` in `[-127, 127]`: a quarter
//! of fp32's bytes, with the rounding error of each weight at most `s[o] / 2`. The file keeps
//! `q` under the weight's own name (dtype `I8`) and `s` beside it under
//! `<name>`[`SCALE_SUFFIX`] (dtype `F32`); everything else (biases, batch norm) is fp16.
//! Loading multiplies back once, so inference runs in fp32 exactly as with any other file.
//!
//! [`Storage::Int8`]: super::Storage::Int8

use tch::{Kind, Tensor};

/// Suffix of the tensor that holds a quantised weight's per-output-channel scales.
pub const SCALE_SUFFIX: &str = ".scale";

/// Largest magnitude stored; symmetric, so `-128` is never used and `q = 0` is exactly zero.
const QMAX: f64 = 127.0;

/// Whether `name`/`t` is stored as int8: the 4-D convolution weights, which hold nearly all
/// of the network's bytes.
pub fn is_quantized(name: &str, t: &Tensor) -> bool {
    name.ends_with(".weight") && t.dim() == 4
}

/// `(q, s)` for a weight of shape `[out, ...]`: `q` int8 of the same shape, `s` fp32 `[out]`.
/// A channel of zeros gets scale 0 and stays zero.
pub fn quantize_per_channel(w: &Tensor) -> (Tensor, Tensor) {
    // Contiguous: the network keeps its weights channels-last.
    let w = w.detach().to_kind(Kind::Float).contiguous();
    let out = w.size()[0];
    let scale = w.abs().view([out, -1]).amax([1].as_slice(), false) / QMAX;
    // A zero scale divides by one instead: its channel is all zeros anyway.
    let divisor = scale.where_scalarother(&scale.gt(0.0), 1.0);
    let shape = per_channel_shape(&w);
    let q = (w / divisor.view(shape.as_slice()))
        .round()
        .clamp(-QMAX, QMAX)
        .to_kind(Kind::Int8);
    (q, scale)
}

/// `q · s` per output channel, in fp32.
pub fn dequantize_per_channel(q: &Tensor, scale: &Tensor) -> Tensor {
    let shape = per_channel_shape(q);
    q.to_kind(Kind::Float) * scale.to_kind(Kind::Float).view(shape.as_slice())
}

/// `[out, 1, 1, ...]`, for broadcasting a per-channel vector over a weight.
fn per_channel_shape(t: &Tensor) -> Vec<i64> {
    let mut shape = vec![1i64; t.dim()];
    shape[0] = -1;
    shape
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_error_is_at_most_half_a_step_per_channel() {
        tch::manual_seed(3);
        // Channels of very different magnitude: a shared scale would flatten the small ones.
        let mags = Tensor::from_slice(&[1e-3f32, 0.1, 5.0, 0.0]).view([4, 1, 1, 1]);
        let w = Tensor::randn([4, 6, 3, 3], (Kind::Float, tch::Device::Cpu)) * &mags;
        let (q, s) = quantize_per_channel(&w);
        assert_eq!(q.kind(), Kind::Int8);
        assert_eq!(s.size(), [4]);
        let back = dequantize_per_channel(&q, &s);
        let err = (&back - &w).abs().view([4, -1]).amax([1].as_slice(), false);
        for o in 0..4 {
            let (e, step) = (err.double_value(&[o]), s.double_value(&[o]));
            assert!(
                e <= step / 2.0 * (1.0 + 1e-6),
                "channel {o}: {e} > {step}/2"
            );
        }
        // The largest weight of each non-zero channel lands on ±127 exactly.
        let qmax = q
            .abs()
            .to_kind(Kind::Int)
            .view([4, -1])
            .amax([1].as_slice(), false);
        assert_eq!(Vec::<i32>::try_from(&qmax).unwrap(), [127, 127, 127, 0]);
        assert_eq!(s.double_value(&[3]), 0.0);
        assert_eq!(back.get(3).abs().sum(Kind::Float).double_value(&[]), 0.0);
    }

    #[test]
    fn only_four_dimensional_weights_are_quantised() {
        let conv = Tensor::zeros([2, 3, 3, 3], (Kind::Float, tch::Device::Cpu));
        let bias = Tensor::zeros([2], (Kind::Float, tch::Device::Cpu));
        assert!(is_quantized("enc_1.conv.weight", &conv));
        assert!(!is_quantized("enc_1.conv.bias", &bias));
        assert!(!is_quantized("enc_2.bn.weight", &bias));
    }
}
