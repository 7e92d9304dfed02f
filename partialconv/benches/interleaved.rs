//! The core performance targets as ratios, with the compared runs interleaved: round after
//! round, one forward on the grouped mask path, one on the full mask convolutions in each
//! layout, and one dense 3×3 convolution in each layout; then the grouped path and the dense
//! convolution again with the convolutions in bf16 (`Precision::Bf16`), against a bf16 dense
//! bound measured the same way. A shared machine's load drifts over minutes, and
//! criterion times each case in its own block of time, so its ratios drift with the load;
//! interleaving gives every case the same conditions.
//!
//! `cargo bench -p partialconv --bench interleaved [-- ROUNDS]` (default 7 rounds).

use std::time::Instant;

use partialconv::bench::{conv_flops, median, sample_input};
use partialconv::layer::channels_last;
use partialconv::{Mask, Model, ModelMeta, PConvUNetConfig};
use tch::{Device, Kind, Tensor};

fn seconds(f: impl FnOnce() -> Tensor) -> f64 {
    let start = Instant::now();
    let _ = tch::no_grad(f);
    start.elapsed().as_secs_f64()
}

fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(7);
    let config = PConvUNetConfig::default();
    let seeded = |channels_last: bool| {
        tch::manual_seed(0);
        let mut model = Model::new(ModelMeta::new(config), Device::Cpu).unwrap();
        model.net.set_channels_last(channels_last);
        model
    };
    // The public implementations run PyTorch's default NCHW layout, with batch norm as a
    // separate step.
    let (mut model, nchw_model) = (seeded(true), seeded(false));
    // Batch norm absorbed, as the inpainter runs it.
    model.net.absorb_bn();
    let mut bf16_model = seeded(true);
    bf16_model.net.absorb_bn();
    bf16_model.net.set_conv_kind(Kind::BFloat16);
    let (x, valid) = sample_input(512, 1, Device::Cpu, Kind::Float);
    let x = &x * &valid;
    let dense_in = Tensor::randn([1, 256, 128, 128], (Kind::Float, Device::Cpu));
    let dense_w = Tensor::randn([256, 256, 3, 3], (Kind::Float, Device::Cpu));
    let (dense_in_cl, dense_w_cl) = (channels_last(&dense_in), channels_last(&dense_w));
    let (dense_in_bf16, dense_w_bf16) = (
        channels_last(&dense_in.to_kind(Kind::BFloat16)),
        channels_last(&dense_w.to_kind(Kind::BFloat16)),
    );
    let dense_flop = 2.0 * 256.0 * 256.0 * 9.0 * 128.0 * 128.0;

    let mut t = [vec![], vec![], vec![], vec![], vec![], vec![], vec![]];
    for round in 0..=rounds {
        let grouped = seconds(|| {
            let mask = Mask::shared(valid.shallow_clone(), 3);
            model.net.forward_t(&x, &mask, false).0
        });
        let per_channel = seconds(|| {
            let mask = Mask::PerChannel(channels_last(&valid.expand([1, 3, 512, 512], false)));
            model.net.forward_t(&x, &mask, false).0
        });
        let public = seconds(|| {
            let mask = Mask::PerChannel(valid.expand([1, 3, 512, 512], false).contiguous());
            nchw_model.net.forward_t(&x, &mask, false).0
        });
        let nchw = seconds(|| dense_in.conv2d(&dense_w, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1));
        let nhwc =
            seconds(|| dense_in_cl.conv2d(&dense_w_cl, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1));
        let grouped_bf16 = seconds(|| {
            let mask = Mask::shared(valid.shallow_clone(), 3);
            bf16_model.net.forward_t(&x, &mask, false).0
        });
        let dense_bf16 = seconds(|| {
            dense_in_bf16.conv2d(&dense_w_bf16, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1)
        });
        // Round 0 warms up allocators and oneDNN's kernel caches.
        if round > 0 {
            let all = [
                grouped,
                per_channel,
                public,
                nchw,
                nhwc,
                grouped_bf16,
                dense_bf16,
            ];
            for (v, s) in t.iter_mut().zip(all) {
                v.push(s);
            }
        }
    }
    let [grouped, per_channel, public, nchw, nhwc, grouped_bf16, dense_bf16] = t.map(median);
    let flop = conv_flops(&config, 512);
    let best_rate = dense_flop / nchw.min(nhwc);
    let bound = flop / best_rate;
    println!("seed architecture at 512x512, {rounds} interleaved rounds, medians:");
    println!(
        "  grouped mask path, NHWC (ours)       {:8.1} ms",
        grouped * 1e3
    );
    println!(
        "  full mask convolutions, NHWC         {:8.1} ms",
        per_channel * 1e3
    );
    println!(
        "  full mask convolutions, NCHW (public) {:7.1} ms",
        public * 1e3
    );
    for (name, s) in [("NCHW", nchw), ("channels-last", nhwc)] {
        println!(
            "  dense 3x3 256->256 @128 {name:>14}: {:6.1} ms = {:5.1} GFLOP/s",
            s * 1e3,
            dense_flop / s / 1e9
        );
    }
    println!(
        "  dense bound: {:.1} GFLOP / {:.1} GFLOP/s = {:.1} ms",
        flop / 1e9,
        best_rate / 1e9,
        bound * 1e3
    );
    println!(
        "speed-up over the public implementations' way (full mask convolutions, NCHW): {:.2}x \
         (target >= 2.5x)",
        public / grouped
    );
    println!(
        "speed-up over full mask convolutions in the same layout: {:.2}x",
        per_channel / grouped
    );
    println!(
        "grouped path / dense bound: {:.2}x (target <= 1.4x)",
        grouped / bound
    );
    let bound_bf16 = flop / (dense_flop / dense_bf16);
    println!(
        "bf16: grouped path {:.1} ms; dense 3x3 channels-last {:.1} ms = {:.1} GFLOP/s, bound {:.1} ms",
        grouped_bf16 * 1e3,
        dense_bf16 * 1e3,
        dense_flop / dense_bf16 / 1e9,
        bound_bf16 * 1e3
    );
    println!(
        "bf16: {:.2}x faster than fp32; grouped path / bf16 dense bound: {:.2}x",
        grouped / grouped_bf16,
        grouped_bf16 / bound_bf16
    );
}
