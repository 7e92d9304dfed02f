//! What the default `telea` blend adds to a prediction: Telea's fast marching over the hole
//! plus the distance transform, against a plain paste, at the evaluation's 512².

use criterion::{criterion_group, BenchmarkId, Criterion};
use image::{DynamicImage, Rgb, RgbImage};
use partialconv::blend::telea_blend;
use partialconv::inpainter::composite;
use partialconv::masks::{HoleGenerator, RATIO_BUCKETS};
use partialconv::{Blend, Inpainter, Model, ModelMeta, PConvUNetConfig, SelfEnsemble, Strategy};

fn blend(c: &mut Criterion) {
    let side = 512;
    let photo = RgbImage::from_fn(side, side, |x, y| {
        Rgb([(x / 2) as u8, (y / 2) as u8, ((x * y) % 251) as u8])
    });
    let fill = RgbImage::from_pixel(side, side, Rgb([128, 128, 128]));
    let mut group = c.benchmark_group("blend_512");
    for bucket in [1, 4] {
        let mask = HoleGenerator::default().generate(side, side, RATIO_BUCKETS[bucket], 7);
        let label = format!("holes_{:.2}", mask.hole_ratio());
        group.bench_with_input(BenchmarkId::new("telea", &label), &mask, |b, m| {
            b.iter(|| telea_blend(&photo, &fill, m))
        });
        group.bench_with_input(BenchmarkId::new("paste", &label), &mask, |b, m| {
            b.iter(|| composite(&photo, &fill, m))
        });
        group.bench_with_input(BenchmarkId::new("distance", &label), &mask, |b, m| {
            b.iter(|| m.distance_to_known())
        });
    }
    group.finish();

    // The whole prediction with the bundled model's shape (width 32), both ways, so the
    // blend's share of a request is a ratio from one run. One forward pass, so the figures
    // stay comparable with those taken before `flips` became the default.
    let inpainter = |blend| {
        let config = PConvUNetConfig {
            width: 32,
            ..Default::default()
        };
        Inpainter::new(Model::new(ModelMeta::new(config), tch::Device::Cpu).unwrap())
            .with_blend(blend)
            .with_ensemble(SelfEnsemble::Single)
    };
    let image = DynamicImage::ImageRgb8(photo.clone());
    let mask = HoleGenerator::default().generate(side, side, RATIO_BUCKETS[2], 7);
    let mut group = c.benchmark_group("predict_512_w32");
    group.sample_size(10);
    for blend in [Blend::Paste, Blend::Telea] {
        let inp = inpainter(blend);
        group.bench_function(blend.to_string(), |b| {
            b.iter(|| inp.predict(&image, &mask, Strategy::Original).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, blend);
