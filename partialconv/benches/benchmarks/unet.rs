//! The seed architecture (layer_size 7, width 64, 25.8M parameters) at 512×512 on the CPU:
//! the grouped mask path as the inpainter runs it against the full mask convolutions of the
//! public implementations (NCHW, batch norm unfused), and the rate of one large 3×3
//! convolution for the dense-convolution bound (75.8 GFLOP, `bench::conv_flops`). Criterion
//! times each case in its own block of time, so on a shared machine the ratios drift with
//! the load: `interleaved.rs` measures the targets with the cases interleaved.

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use partialconv::bench::sample_input;
use partialconv::layer::channels_last;
use partialconv::{Mask, Model, ModelMeta, PConvUNetConfig};
use tch::{Device, Kind, Tensor};

fn forward(c: &mut Criterion) {
    let seeded = || {
        tch::manual_seed(0);
        Model::new(ModelMeta::new(PConvUNetConfig::default()), Device::Cpu).unwrap()
    };
    // Ours as the inpainter runs it (NHWC, batch norm absorbed); the public implementations'
    // way in PyTorch's default NCHW with batch norm as its own step.
    let mut model = seeded();
    model.net.absorb_bn();
    let mut public = seeded();
    public.net.set_channels_last(false);
    let (x, valid) = sample_input(512, 1, Device::Cpu, Kind::Float);
    let mut group = c.benchmark_group("unet_512_seed");
    group
        .sample_size(10)
        .measurement_time(std::time::Duration::from_secs(30));
    group.throughput(Throughput::Elements(1));
    for path in ["grouped", "per_channel"] {
        group.bench_with_input(BenchmarkId::from_parameter(path), &path, |b, &path| {
            b.iter(|| {
                let (net, mask) = match path {
                    "grouped" => (&model.net, Mask::shared(valid.shallow_clone(), 3)),
                    _ => (
                        &public.net,
                        Mask::PerChannel(valid.expand([1, 3, 512, 512], false).contiguous()),
                    ),
                };
                tch::no_grad(|| net.forward_t(&(&x * &valid), &mask, false).0)
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
