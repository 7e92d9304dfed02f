//! The number format the network's convolutions compute in.
//!
//! Only the convolutions change kind, as in mixed-precision training: their weights are
//! converted once, when the precision is set, and each convolution's input is rounded to
//! that kind while its products are accumulated in fp32 by oneDNN (or cuDNN). The
//! partial-convolution ratio and update maps, the masks, the folded batch norm's shift, the
//! activations between layers, the self-ensemble's average, the blend and the composite stay
//! fp32.
//!
//! On a CPU with native bf16 (AVX512-BF16, AMX) a bf16 convolution runs about twice as fast
//! as fp32 (`docs/benchmarks.md`); elsewhere oneDNN emulates bf16 and it is several times
//! slower, which is why [`Precision::Auto`] never picks it there.

use std::fmt;
use std::str::FromStr;

use tch::{Device, Kind};

use crate::device::cpu_has_native_bf16;
use crate::error::{Error, Result};

/// The kind the convolutions compute in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Precision {
    /// Single precision: the reference, exact against PyTorch.
    #[default]
    Fp32,
    /// bfloat16 (8-bit significand, fp32's range): for CPUs with native bf16.
    Bf16,
    /// IEEE half precision: for CUDA.
    Fp16,
    /// bf16 on a CPU with native bf16, fp16 on CUDA, fp32 otherwise.
    Auto,
}

impl Precision {
    /// Every precision, as the CLI lists them.
    pub const ALL: [Precision; 4] = [
        Precision::Fp32,
        Precision::Bf16,
        Precision::Fp16,
        Precision::Auto,
    ];

    /// The name the CLI, the server and Python take.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
            Precision::Fp16 => "fp16",
            Precision::Auto => "auto",
        }
    }

    /// What `self` means on `device`: never `Auto`. Asking for bf16 on a CPU that only
    /// emulates it, or fp16 on a CPU, is honoured with a warning, as training does.
    pub fn resolve(self, device: Device) -> Precision {
        let cpu = device == Device::Cpu;
        match self {
            Precision::Auto if cpu && cpu_has_native_bf16() => Precision::Bf16,
            Precision::Auto if cpu => Precision::Fp32,
            Precision::Auto => Precision::Fp16,
            Precision::Bf16 if cpu && !cpu_has_native_bf16() => {
                tracing::warn!(
                    "this CPU has no AVX512-BF16, so bf16 convolutions are emulated and slower \
                     than fp32"
                );
                self
            }
            Precision::Fp16 if cpu => {
                tracing::warn!("fp16 convolutions on a CPU are slower than fp32; fp16 is for CUDA");
                self
            }
            p => p,
        }
    }

    /// The tensor kind of a resolved precision (`Auto` reads as fp32).
    pub fn kind(self) -> Kind {
        match self {
            Precision::Bf16 => Kind::BFloat16,
            Precision::Fp16 => Kind::Half,
            Precision::Fp32 | Precision::Auto => Kind::Float,
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Precision::ALL
            .into_iter()
            .find(|p| p.name() == s.trim().to_ascii_lowercase())
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "unknown precision `{s}`: expected fp32, bf16, fp16 or auto"
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_auto_resolves_to_a_real_kind() {
        for p in Precision::ALL {
            assert_eq!(p.name().parse::<Precision>().unwrap(), p);
            assert_ne!(p.resolve(Device::Cpu), Precision::Auto);
        }
        assert!("int4".parse::<Precision>().is_err());
        let auto = Precision::Auto.resolve(Device::Cpu);
        let want = if cpu_has_native_bf16() {
            Precision::Bf16
        } else {
            Precision::Fp32
        };
        assert_eq!(auto, want);
        assert_eq!(Precision::Auto.resolve(Device::Cuda(0)), Precision::Fp16);
    }
}
