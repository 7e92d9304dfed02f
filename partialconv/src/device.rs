//! Which libtorch device to run on, from the names the CLI, the server and Python accept.

use tch::Device;

use crate::error::{Error, Result};

/// Whether the CPU computes bf16 natively. Elsewhere oneDNN emulates it, and a 512² × 4
/// training step took 37 s against 4 s in fp32 (an AVX2-only EPYC, `docs/fine-tuning.md`).
pub fn cpu_has_native_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx512bf16");
    #[cfg(not(target_arch = "x86_64"))]
    return true;
}

/// Parses `auto` (the first GPU when CUDA is present, else the CPU), `cpu`, `cuda` or
/// `cuda:N`, failing clearly where a named GPU is absent.
pub fn parse_device(s: &str) -> Result<Device> {
    let cuda = |i: usize| {
        if !tch::Cuda::is_available() {
            return Err(Error::Device(
                s.into(),
                "CUDA is not available on this machine".into(),
            ));
        }
        let n = tch::Cuda::device_count() as usize;
        if i >= n {
            return Err(Error::Device(
                s.into(),
                format!("only {n} CUDA device(s) present"),
            ));
        }
        Ok(Device::Cuda(i))
    };
    match s {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(0),
        _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => cuda(i),
            _ => Err(Error::Device(
                s.into(),
                "expected auto, cpu, cuda or cuda:N".into(),
            )),
        },
    }
}
