//! `cargo bench -p partialconv`: every group under `benchmarks/`.
use criterion::criterion_main;

mod benchmarks;

criterion_main! {
    benchmarks::unet::benches,
    benchmarks::masks::benches,
    benchmarks::blend::benches,
}
