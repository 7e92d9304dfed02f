//! The partial convolution layer (Liu et al., ECCV 2018, eq. 1–2).
//!
//! A partial convolution sees only the valid pixels of each window, rescales the response by
//! how much of the window was valid, and marks its output valid wherever at least one input
//! was. Two rescaling conventions exist in the wild and both are supported exactly, see
//! [`Convention`].

use std::borrow::Borrow;

use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

/// How a window's response is rescaled by its count of valid inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Convention {
    /// NVIDIA's reference: `(W·(X⊙M)) · sum(1)/(sum(M)+eps)`, where `sum(1) = in·k·k`; outputs
    /// in holes equal the bias times zero, i.e. zero.
    Scaled,
    /// The widely used PyTorch reimplementation: divide by `sum(M)` alone, holes set to zero.
    /// The seed project's checkpoints use it.
    #[default]
    Unscaled,
}

/// Hyper-parameters of one [`PartialConv2d`], in the spirit of `tch::nn::ConvConfig`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PartialConvConfig {
    /// Step of the window, in pixels.
    pub stride: i64,
    /// Zero padding on every side, in pixels (the mask is padded as holes).
    pub padding: i64,
    /// Whether the layer has a bias, added after the renormalisation.
    pub bias: bool,
    /// How the window sum is renormalised by the valid count.
    pub convention: Convention,
    /// Guards the `Scaled` division; 1e-8 in fp32, use 1e-6 in half precision.
    pub eps: f64,
}

impl Default for PartialConvConfig {
    fn default() -> Self {
        Self {
            stride: 1,
            padding: 0,
            bias: true,
            convention: Convention::Unscaled,
            eps: 1e-8,
        }
    }
}

impl PartialConvConfig {
    /// The same configuration without a bias (for layers followed by batch norm).
    pub fn no_bias(self) -> Self {
        Self {
            bias: false,
            ..self
        }
    }
}

/// The validity mask that travels alongside the features (1 = valid, 0 = hole).
///
/// In the U-Net every block's output mask is the same for all of its channels, and
/// concatenation only stacks such groups. Keeping one single-channel map per group turns the
/// mask update from an `out×in×k×k` convolution into a weighted box sum over a handful of
/// maps, which is most of this crate's speed-up over the public implementations.
#[derive(Debug)]
pub enum Mask {
    /// `(map, channels)`: `map` is `N×1×H×W` and is shared by the next `channels` channels.
    Grouped(Vec<(Tensor, i64)>),
    /// One map per channel, `N×C×H×W`: the general case, for masks that differ by channel.
    PerChannel(Tensor),
}

impl Mask {
    /// A mask shared by all `channels` channels of the input.
    pub fn shared(map: Tensor, channels: i64) -> Self {
        Mask::Grouped(vec![(map, channels)])
    }

    /// Channels of the input the mask describes.
    pub fn channels(&self) -> i64 {
        match self {
            Mask::Grouped(groups) => groups.iter().map(|(_, c)| c).sum(),
            Mask::PerChannel(m) => m.size()[1],
        }
    }

    /// The mask as an explicit `N×C×H×W` tensor.
    pub fn to_dense(&self) -> Tensor {
        match self {
            Mask::Grouped(groups) => {
                let parts: Vec<Tensor> = groups
                    .iter()
                    .map(|(m, c)| {
                        let s = m.size();
                        m.expand([s[0], *c, s[2], s[3]], false)
                    })
                    .collect();
                Tensor::cat(&parts, 1)
            }
            Mask::PerChannel(m) => m.shallow_clone(),
        }
    }

    /// Same mask in the per-channel representation (for the general path and for tests).
    pub fn into_per_channel(self) -> Self {
        Mask::PerChannel(self.to_dense())
    }

    /// `[self, other]` along channels, as the U-Net's skip connections need.
    pub fn cat(self, other: &Mask) -> Mask {
        match (self, other) {
            (Mask::Grouped(mut a), Mask::Grouped(b)) => {
                a.extend(b.iter().map(|(m, c)| (m.shallow_clone(), *c)));
                Mask::Grouped(a)
            }
            (a, b) => Mask::PerChannel(Tensor::cat(&[a.to_dense(), b.to_dense()], 1)),
        }
    }

    /// The mask at twice the resolution, for the decoder's nearest-neighbour upsampling.
    pub fn upsample_nearest2x(&self) -> Mask {
        let up = |m: &Tensor| {
            let s = m.size();
            m.upsample_nearest2d([s[2] * 2, s[3] * 2], 2.0, 2.0)
        };
        match self {
            Mask::Grouped(groups) => {
                Mask::Grouped(groups.iter().map(|(m, c)| (up(m), *c)).collect())
            }
            Mask::PerChannel(m) => Mask::PerChannel(up(m)),
        }
    }

    /// `x ⊙ M`.
    pub fn apply(&self, x: &Tensor) -> Tensor {
        match self {
            Mask::Grouped(groups) if groups.len() == 1 => x * &groups[0].0,
            Mask::Grouped(groups) => {
                let sizes: Vec<i64> = groups.iter().map(|(_, c)| *c).collect();
                let parts: Vec<Tensor> = x
                    .split_with_sizes(sizes.as_slice(), 1)
                    .iter()
                    .zip(groups)
                    .map(|(xs, (m, _))| xs * m)
                    .collect();
                Tensor::cat(&parts, 1)
            }
            Mask::PerChannel(m) => x * m,
        }
    }
}

/// A 2-D partial convolution. Weight names (`weight`, `bias`) follow `tch::nn::Conv2D`.
#[derive(Debug)]
pub struct PartialConv2d {
    /// `out × in × k × k`, registered as `weight`.
    pub weight: Tensor,
    /// `out`, registered as `bias`; `None` when the config has no bias.
    pub bias: Option<Tensor>,
    in_channels: i64,
    out_channels: i64,
    kernel_size: i64,
    config: PartialConvConfig,
}

/// Registers a partial convolution's weights under `vs` (as `tch::nn::conv2d` does).
pub fn partial_conv2d<'a, T: Borrow<nn::Path<'a>>>(
    vs: T,
    in_channels: i64,
    out_channels: i64,
    kernel_size: i64,
    config: PartialConvConfig,
) -> PartialConv2d {
    let vs = vs.borrow();
    let weight = vs.var(
        "weight",
        &[out_channels, in_channels, kernel_size, kernel_size],
        nn::init::DEFAULT_KAIMING_NORMAL,
    );
    let bias = config.bias.then(|| vs.zeros("bias", &[out_channels]));
    PartialConv2d::new(weight, bias, config)
}

impl PartialConv2d {
    /// Wraps existing tensors; `weight` is `out×in×k×k`.
    pub fn new(weight: Tensor, bias: Option<Tensor>, config: PartialConvConfig) -> Self {
        let size = weight.size();
        assert_eq!(
            size.len(),
            4,
            "partial conv weight must be out×in×k×k, got {size:?}"
        );
        assert_eq!(
            size[2], size[3],
            "only square kernels are supported, got {size:?}"
        );
        Self {
            weight,
            bias,
            in_channels: size[1],
            out_channels: size[0],
            kernel_size: size[2],
            config,
        }
    }

    /// The hyper-parameters it was built with.
    pub fn config(&self) -> &PartialConvConfig {
        &self.config
    }

    /// Channels it reads.
    pub fn in_channels(&self) -> i64 {
        self.in_channels
    }

    /// Channels it writes.
    pub fn out_channels(&self) -> i64 {
        self.out_channels
    }

    /// Side of the square window.
    pub fn kernel_size(&self) -> i64 {
        self.kernel_size
    }

    /// `sum(M)` over each window, as an `N×1×H'×W'` map for grouped masks or `N×out×H'×W'`
    /// for per-channel ones. Exact: the inputs are 0/1 and the weights small integers.
    /// Stores the weight in NHWC order (`true`) or PyTorch's default NCHW. Convolutions give
    /// the same values either way; on the CPU, NHWC spares oneDNN a reorder of every weight on
    /// every call, which dominates layers with small maps and large weights. `set_data` keeps
    /// the variable's identity, so the VarStore, loading and the optimizer see the new layout.
    pub fn set_channels_last(&mut self, on: bool) {
        let weight = if on {
            channels_last(&self.weight)
        } else {
            self.weight.contiguous()
        };
        tch::no_grad(|| self.weight.set_data(&weight));
    }

    /// The inference form of [`forward_masked`](Self::forward_masked) with `weight` and
    /// `bias` in place of the layer's own (batch norm absorbed into them, see
    /// `PConvUNet::absorb_bn`): `(W·(X⊙M))·ratio + b·update`, computed in place. The result is
    /// zero wherever `update` is, so callers need not mask it again.
    pub fn forward_fused(
        &self,
        x_masked: &Tensor,
        mask: &Mask,
        weight: &Tensor,
        bias: Option<&Tensor>,
    ) -> (Tensor, Mask) {
        let (s, p) = (self.config.stride, self.config.padding);
        let raw = in_kind_of(weight, x_masked, |x| {
            x.conv2d(weight, None::<Tensor>, [s, s], [p, p], [1, 1], 1)
        });
        self.finish_fused(raw, mask, bias)
    }

    /// The rest of [`forward_fused`](Self::forward_fused) once `raw = W·(X⊙M)` is known,
    /// however it was computed.
    pub fn finish_fused(&self, raw: Tensor, mask: &Mask, bias: Option<&Tensor>) -> (Tensor, Mask) {
        let mut out = raw;
        let window_sum = self.window_sum(mask);
        let slide = (self.in_channels * self.kernel_size * self.kernel_size) as f64;
        let update = window_sum.clamp(0.0, 1.0);
        // Both conventions as one factor that is 0 in holes: the convolution of a fully
        // masked window is 0 already, so only the bias needs the update mask.
        let ratio = match self.config.convention {
            Convention::Scaled => (&window_sum + self.config.eps).reciprocal() * slide * &update,
            Convention::Unscaled => {
                window_sum
                    .masked_fill(&window_sum.eq(0.0), 1.0)
                    .reciprocal()
                    * &update
            }
        };
        out *= &ratio;
        if let Some(b) = bias {
            let _ = out.addcmul_(&b.view([1, -1, 1, 1]), &update);
        }
        let mask = match mask {
            Mask::Grouped(_) => Mask::shared(update, self.out_channels),
            Mask::PerChannel(_) => Mask::PerChannel(update),
        };
        (out, mask)
    }

    fn window_sum(&self, mask: &Mask) -> Tensor {
        let (k, s, p) = (self.kernel_size, self.config.stride, self.config.padding);
        match mask {
            Mask::Grouped(groups) => {
                let maps: Vec<&Tensor> = groups.iter().map(|(m, _)| m).collect();
                let stacked = if maps.len() == 1 {
                    maps[0].shallow_clone()
                } else {
                    Tensor::cat(&maps, 1)
                };
                let counts: Vec<f32> = groups.iter().map(|(_, c)| *c as f32).collect();
                let kernel = Tensor::from_slice(&counts)
                    .to_kind(stacked.kind())
                    .to_device(stacked.device())
                    .view([1, groups.len() as i64, 1, 1])
                    .expand([1, groups.len() as i64, k, k], false)
                    .contiguous();
                stacked.conv2d(&kernel, None::<Tensor>, [s, s], [p, p], [1, 1], 1)
            }
            // What the public implementations do: a full out×in×k×k convolution of ones.
            Mask::PerChannel(m) => {
                let ones = Tensor::ones(
                    [self.out_channels, self.in_channels, k, k],
                    (m.kind(), m.device()),
                );
                m.conv2d(&ones, None::<Tensor>, [s, s], [p, p], [1, 1], 1)
            }
        }
    }

    /// Returns the features and the updated mask.
    pub fn forward(&self, x: &Tensor, mask: &Mask) -> (Tensor, Mask) {
        self.forward_masked(&mask.apply(x), mask)
    }

    /// [`forward`](Self::forward) for an input that is already `x ⊙ M`, e.g. when the caller
    /// masked the parts of a concatenation before joining them.
    pub fn forward_masked(&self, x_masked: &Tensor, mask: &Mask) -> (Tensor, Mask) {
        self.forward_masked_in(x_masked, mask, None)
    }

    /// [`forward_masked`](Self::forward_masked) with the convolution's products computed in
    /// `compute` (bf16 for mixed-precision training). Only the convolution is cast: the
    /// weight stays in its own kind, so the optimizer updates full-precision values, and the
    /// mask arithmetic, batch norm and loss that follow run in the input's kind.
    pub fn forward_masked_in(
        &self,
        x_masked: &Tensor,
        mask: &Mask,
        compute: Option<Kind>,
    ) -> (Tensor, Mask) {
        let (s, p) = (self.config.stride, self.config.padding);
        debug_assert_eq!(
            mask.channels(),
            self.in_channels,
            "mask channels must match the input"
        );
        let conv = |x: &Tensor, w: &Tensor| x.conv2d(w, None::<Tensor>, [s, s], [p, p], [1, 1], 1);
        let raw = match compute.filter(|&k| k != x_masked.kind()) {
            Some(k) => conv(&x_masked.to_kind(k), &self.weight.to_kind(k)).to_kind(x_masked.kind()),
            None => conv(x_masked, &self.weight),
        };
        let window_sum = tch::no_grad(|| self.window_sum(mask));
        let bias = self.bias.as_ref().map(|b| b.view([1, -1, 1, 1]));
        let (out, update) = match self.config.convention {
            Convention::Scaled => {
                let slide = (self.in_channels * self.kernel_size * self.kernel_size) as f64;
                let (ratio, update) = tch::no_grad(|| {
                    let update = window_sum.clamp(0.0, 1.0);
                    let ratio = (&window_sum + self.config.eps).reciprocal() * slide * &update;
                    (ratio, update)
                });
                let out = match &bias {
                    Some(b) => (raw * ratio + b) * &update,
                    None => raw * ratio,
                };
                (out, update)
            }
            Convention::Unscaled => {
                let (inv, holes, update) = tch::no_grad(|| {
                    let holes = window_sum.eq(0.0);
                    let inv = window_sum.masked_fill(&holes, 1.0).reciprocal();
                    let update = holes.logical_not().to_kind(window_sum.kind());
                    (inv, holes, update)
                });
                let out = raw * inv;
                let out = match &bias {
                    Some(b) => out + b,
                    None => out,
                };
                (out.masked_fill(&holes, 0.0), update)
            }
        };
        let mask = match mask {
            Mask::Grouped(_) => Mask::shared(update, self.out_channels),
            Mask::PerChannel(_) => Mask::PerChannel(update),
        };
        (out, mask)
    }
}

/// The same values in NHWC order (PyTorch's `channels_last`), which oneDNN's CPU convolutions
/// run without reordering. Element-wise ops, batch norm, upsampling and `cat` keep the layout.
pub fn channels_last(t: &Tensor) -> Tensor {
    t.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

/// `conv(x)` computed in `weight`'s kind (bf16 or fp16 after
/// [`PConvUNet::set_conv_kind`](crate::nn::unet::PConvUNet::set_conv_kind)), its result
/// returned in `x`'s kind, so that everything around the convolution stays fp32.
pub(crate) fn in_kind_of(
    weight: &Tensor,
    x: &Tensor,
    conv: impl FnOnce(&Tensor) -> Tensor,
) -> Tensor {
    if weight.kind() == x.kind() {
        return conv(x);
    }
    conv(&x.to_kind(weight.kind())).to_kind(x.kind())
}
