//! The seed architecture (layer_size 7, width 64, 25.8M parameters) at 512×512 on the CPU:
//! the grouped mask path against the full mask convolutions of the public implementations,
//! and both against the dense-convolution bound (the network's 75.8 GFLOP at the rate of one
//! large 3×3 convolution, timed in the same run; 75.8 GFLOP is twice the network's
//! multiply-adds at 512×512, as `examples/conv_shapes.rs` counts them).

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use partialconv::bench::sample_input;
use partialconv::layer::channels_last;
use partialconv::{Mask, Model, ModelMeta, PConvUNetConfig};
use tch::{Device, Kind, Tensor};

fn forward(c: &mut Criterion) {
    tch::manual_seed(0);
    let model = Model::new(ModelMeta::new(PConvUNetConfig::default()), Device::Cpu).unwrap();
    let (x, valid) = sample_input(512, 1, Device::Cpu, Kind::Float);
    let mut group = c.benchmark_group("unet_512_seed");
    group
        .sample_size(10)
        .measurement_time(std::time::Duration::from_secs(30));
    group.throughput(Throughput::Elements(1));
    for path in ["grouped", "per_channel"] {
        group.bench_with_input(BenchmarkId::from_parameter(path), &path, |b, &path| {
            b.iter(|| {
                let mask = match path {
                    "grouped" => Mask::shared(valid.shallow_clone(), 3),
                    // Channels-last like the features, so both paths get the same kernels.
                    _ => Mask::PerChannel(channels_last(&valid.expand([1, 3, 512, 512], false))),
                };
                tch::no_grad(|| model.net.forward_t(&(&x * &valid), &mask, false).0)
            })
        });
    }
    group.finish();

    // The bound's denominator: a 256→256 3×3 convolution on 1×256×128×128 (19.3 GFLOP), in
    // both layouts; the faster one gives the stricter bound.
    let mut group = c.benchmark_group("dense_conv_256x128x128");
    group.sample_size(10);
    let input = Tensor::randn([1, 256, 128, 128], (Kind::Float, Device::Cpu));
    let weight = Tensor::randn([256, 256, 3, 3], (Kind::Float, Device::Cpu));
    let flop = 2.0 * 256.0 * 256.0 * 9.0 * 128.0 * 128.0;
    group.throughput(Throughput::Elements(flop as u64));
    group.bench_function("conv3x3", |b| {
        b.iter(|| tch::no_grad(|| input.conv2d(&weight, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1)))
    });
    let (input, weight) = (channels_last(&input), channels_last(&weight));
    group.bench_function("conv3x3_channels_last", |b| {
        b.iter(|| tch::no_grad(|| input.conv2d(&weight, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1)))
    });
    group.finish();
}

criterion_group!(benches, forward);
