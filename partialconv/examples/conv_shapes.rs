//! Times each convolution of the seed network (layer_size 7, width 64) at 512×512 on its own,
//! without any partial-convolution logic: the floor under `PConvUNet::forward` with
//! libtorch's CPU kernels, layer by layer (docs/benchmarks.md).
//!
//! `cargo run --release -p partialconv --example conv_shapes`

use std::time::Instant;
use tch::{Device, Kind, Tensor};
fn t(f: impl Fn() -> Tensor) -> f64 {
    let _ = f();
    let s = Instant::now();
    for _ in 0..3 {
        let _ = f();
    }
    s.elapsed().as_secs_f64() / 3.0
}
fn main() {
    let _g = tch::no_grad_guard();
    let w = 64i64;
    let l = 7;
    let width = |i: i64| w << (i - 1).min(3);
    let mut total = 0.0;
    let mut flops = 0.0;
    let mut h = 512i64;
    let mut cin = 3;
    for i in 1..=l {
        let k = match i {
            1 => 7,
            2 | 3 => 5,
            _ => 3,
        };
        let co = width(i);
        let x = Tensor::randn([1, cin, h, h], (Kind::Float, Device::Cpu));
        let wt = Tensor::randn([co, cin, k, k], (Kind::Float, Device::Cpu));
        let d = t(|| x.conv2d(&wt, None::<Tensor>, [2, 2], [k / 2, k / 2], [1, 1], 1));
        let f = 2.0 * (co * cin * k * k) as f64 * ((h / 2) * (h / 2)) as f64;
        total += d;
        flops += f;
        println!(
            "enc_{i} {cin}->{co} k{k} @{h}: {:.1} ms {:.1} GFLOP/s",
            d * 1e3,
            f / d / 1e9
        );
        h /= 2;
        cin = co;
    }
    for i in (1..=l).rev() {
        let skip = if i == 1 { 3 } else { width(i - 1) };
        let up = width(i);
        let co = if i == 1 { 3 } else { skip };
        h *= 2;
        let x = Tensor::randn([1, up + skip, h, h], (Kind::Float, Device::Cpu));
        let wt = Tensor::randn([co, up + skip, 3, 3], (Kind::Float, Device::Cpu));
        let d = t(|| x.conv2d(&wt, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1));
        let f = 2.0 * (co * (up + skip) * 9) as f64 * (h * h) as f64;
        total += d;
        flops += f;
        println!(
            "dec_{i} {}->{co} @{h}: {:.1} ms {:.1} GFLOP/s",
            up + skip,
            d * 1e3,
            f / d / 1e9
        );
    }
    println!(
        "convs total {:.0} ms, {:.1} GFLOP",
        total * 1e3,
        flops / 1e9
    );
}
