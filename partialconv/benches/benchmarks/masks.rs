//! The hole generator and the `auto` planner, which run per training sample and per request.

use criterion::{criterion_group, BenchmarkId, Criterion};
use partialconv::inpainter::choose;
use partialconv::masks::HoleGenerator;

fn masks(c: &mut Criterion) {
    let g = HoleGenerator::default();
    let mut group = c.benchmark_group("hole_generator");
    for size in [256u32, 512] {
        group.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, &size| {
            let mut seed = 0;
            b.iter(|| {
                seed += 1;
                g.generate_any(size, size, seed)
            })
        });
    }
    group.finish();
    let mask = g.generate(4000, 3000, (0.01, 0.1), 3);
    c.bench_function("auto_plan_12mp", |b| {
        b.iter(|| choose(4000, 3000, &mask.component_boxes(), 512))
    });
}

criterion_group!(benches, masks);
