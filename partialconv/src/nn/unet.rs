//! The partial-convolution U-Net of Liu et al. (2018), section 3.2 and supplementary table.
//!
//! Depth and widths are data ([`PConvUNetConfig`]), so the seed's 7-level model, the paper's
//! 8-level one and narrow "lite" variants are the same code. Variable names follow the
//! paper's `enc_i`/`dec_i` numbering: `enc_1.conv.weight`, `enc_2.bn.running_mean`, ...

use serde::{Deserialize, Serialize};
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

use crate::nn::layer::{
    channels_last, in_kind_of, partial_conv2d, Convention, Mask, PartialConv2d, PartialConvConfig,
};

/// Shape of a [`PConvUNet`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PConvUNetConfig {
    /// Number of encoder (and decoder) levels; inputs must be multiples of `2^layer_size`.
    pub layer_size: usize,
    /// Channels of the first encoder level; the paper's 64 doubles up to `8·width`.
    pub width: i64,
    /// Channels of the input image (3 for RGB).
    pub input_channels: i64,
    /// How every partial convolution renormalises; imported checkpoints are `Unscaled`.
    pub convention: Convention,
    /// Guards the `Scaled` division (see [`PartialConvConfig::eps`](crate::PartialConvConfig)).
    #[serde(default = "default_eps")]
    pub eps: f64,
}

fn default_eps() -> f64 {
    1e-8
}

impl Default for PConvUNetConfig {
    /// The seed project's network: 7 levels, width 64, 25.8M parameters.
    fn default() -> Self {
        Self {
            layer_size: 7,
            width: 64,
            input_channels: 3,
            convention: Convention::Unscaled,
            eps: 1e-8,
        }
    }
}

impl PConvUNetConfig {
    /// The paper's network, for 512×512 inputs.
    pub fn paper() -> Self {
        Self {
            layer_size: 8,
            ..Default::default()
        }
    }

    /// Inputs must have sides divisible by this.
    pub fn multiple(&self) -> i64 {
        1 << self.layer_size
    }

    /// Output channels of encoder level `i` (1-based).
    fn encoder_width(&self, i: usize) -> i64 {
        self.width << (i - 1).min(3)
    }

    /// Kernel sizes 7, 5, 5, 3, 3, ...
    fn encoder_kernel(i: usize) -> i64 {
        match i {
            1 => 7,
            2 | 3 => 5,
            _ => 3,
        }
    }

    /// Why the configuration cannot be built, if it cannot (a depth outside 4..=10, ...).
    pub fn validate(&self) -> Result<(), String> {
        if !(4..=10).contains(&self.layer_size) {
            return Err(format!(
                "layer_size must be within 4..=10, got {}",
                self.layer_size
            ));
        }
        if self.width < 1 || self.input_channels < 1 {
            return Err(format!(
                "width and input_channels must be positive, got {} and {}",
                self.width, self.input_channels
            ));
        }
        Ok(())
    }
}

/// The decoder's LeakyReLU slope (paper, §3.2).
const LEAKY_SLOPE: f64 = 0.2;

#[derive(Debug, Clone, Copy)]
enum Activation {
    Relu,
    LeakyRelu,
    Linear,
}

/// Batch norm's epsilon (PyTorch's default), needed again to absorb it into the convolution.
const BN_EPS: f64 = 1e-5;

/// Batch norm's running-statistics momentum (PyTorch's default), needed again to read a
/// batch's statistics back out of the running ones in [`PConvUNet::recalibrate_bn`].
const BN_MOMENTUM: f64 = 0.1;

/// Partial conv, optional batch norm, activation: the paper's "PConv-BN-ReLU" unit.
#[derive(Debug)]
struct PConvBlock {
    conv: PartialConv2d,
    bn: Option<nn::BatchNorm>,
    activation: Activation,
    /// Weight and bias with batch norm absorbed, for inference (see `PConvUNet::absorb_bn`).
    fused: Option<Fused>,
}

#[derive(Debug)]
struct Fused {
    conv: FusedConv,
    bias: Option<Tensor>,
    /// The LeakyReLU slope as a tensor on the weights' device, made once: `prelu` takes it
    /// as a tensor, and a fresh CPU scalar each call would be an extra host-to-GPU copy.
    slope: Tensor,
}

#[derive(Debug)]
enum FusedConv {
    /// Encoder blocks: the weight scaled by batch norm.
    Plain(Tensor),
    /// Decoder blocks: the same, split at the concatenation.
    SubPixel(SubPixel),
}

/// A decoder convolution of `cat(upsample₂(h), skip)` computed without building either:
/// by linearity it is `conv(upsample₂(h), W_up) + conv(skip, W_skip)`, and a 3×3 convolution
/// of a nearest-upsampled map is, for each of the four output phases, a 3×3 convolution of
/// the low-resolution map with taps summed (one row and one column of each is zero). The
/// four phases run as one convolution with 4× the output channels, interleaved by
/// `pixel_shuffle`. Same multiply-adds, but the upsampled map and the concatenation, the
/// decoder's largest tensors (67×512² for the seed network's last layer), never exist.
#[derive(Debug)]
struct SubPixel {
    /// `4·out × up × 3 × 3`, phase `(py, px)` of output channel `c` at `4c + 2py + px`.
    phases: Tensor,
    /// `out × skip × 3 × 3`.
    skip: Tensor,
}

impl SubPixel {
    fn new(weight: &Tensor, up: i64) -> Self {
        let [c_out, c_in, k, _] = weight.size()[..] else {
            unreachable!("conv weights are 4-d")
        };
        assert_eq!(k, 3, "decoder convolutions are 3×3");
        let (kind, device) = (weight.kind(), weight.device());
        // Which original tap (column) feeds which low-resolution tap (row), per phase: phase 0
        // reads offsets (−1, 0, 0), phase 1 reads (0, 0, +1).
        let taps = [
            [1f32, 0., 0., 0., 1., 1., 0., 0., 0.],
            [0f32, 0., 0., 1., 1., 0., 0., 0., 1.],
        ]
        .map(|t| {
            Tensor::from_slice(&t)
                .view([3, 3])
                .to_kind(kind)
                .to_device(device)
        });
        let w_up = weight.narrow(1, 0, up);
        let mut phases = Vec::with_capacity(4);
        for ry in &taps {
            for rx in &taps {
                phases.push(Tensor::einsum(
                    "ay,ciyx,bx->ciab",
                    &[ry, &w_up, rx],
                    None::<i64>,
                ));
            }
        }
        let phases = Tensor::stack(&phases, 1).reshape([4 * c_out, up, 3, 3]);
        let skip = weight.narrow(1, up, c_in - up);
        let (phases, skip) = if weight.is_contiguous() {
            (phases.contiguous(), skip.contiguous())
        } else {
            (channels_last(&phases), channels_last(&skip))
        };
        Self { phases, skip }
    }

    /// `conv(cat(upsample₂(h), skip), W)` for 3×3, stride 1, padding 1, computed in the
    /// weights' kind and returned in `h`'s.
    fn conv(&self, h: &Tensor, skip: &Tensor) -> Tensor {
        let conv = |w: &Tensor, x: &Tensor| {
            in_kind_of(w, x, |x| {
                x.conv2d(w, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1)
            })
        };
        let up = conv(&self.phases, h).pixel_shuffle(2);
        let mut out = conv(&self.skip, skip);
        out += up;
        out
    }

    fn convert(&mut self, kind: Kind) {
        self.phases = same_layout(&self.phases, self.phases.to_kind(kind));
        self.skip = same_layout(&self.skip, self.skip.to_kind(kind));
    }
}

impl PConvBlock {
    #[allow(clippy::too_many_arguments)]
    fn new(
        vs: nn::Path,
        cfg: &PConvUNetConfig,
        c_in: i64,
        c_out: i64,
        k: i64,
        stride: i64,
        bn: bool,
        activation: Activation,
    ) -> Self {
        let conv_cfg = PartialConvConfig {
            stride,
            padding: k / 2,
            // Batch norm would cancel a bias; only the last, linear layer keeps one.
            bias: !bn && matches!(activation, Activation::Linear),
            convention: cfg.convention,
            eps: cfg.eps,
        };
        let conv = partial_conv2d(&vs / "conv", c_in, c_out, k, conv_cfg);
        let bn_cfg = nn::BatchNormConfig {
            eps: BN_EPS,
            momentum: BN_MOMENTUM,
            ..Default::default()
        };
        let bn = bn.then(|| nn::batch_norm2d(&vs / "bn", c_out, bn_cfg));
        Self {
            conv,
            bn,
            activation,
            fused: None,
        }
    }

    /// Folds inference batch norm, `γ·(z − μ)/√(σ² + ε) + β`, into the convolution: the
    /// partial convolution's rescaling and masking act per pixel and batch norm per channel,
    /// so the two commute.
    /// `up`: for a decoder block, how many input channels come from the upsampled map.
    fn absorb_bn(&mut self, up: Option<i64>) {
        let conv = &self.conv;
        let (weight, bias) = tch::no_grad(|| match &self.bn {
            Some(bn) => {
                let std = (&bn.running_var + BN_EPS).sqrt();
                let scale = match &bn.ws {
                    Some(gamma) => gamma / std,
                    None => std.reciprocal(),
                };
                let shift = match &bn.bs {
                    Some(beta) => beta - &bn.running_mean * &scale,
                    None => -(&bn.running_mean * &scale),
                };
                let shift = match &conv.bias {
                    Some(b) => shift + b * &scale,
                    None => shift,
                };
                (&conv.weight * scale.view([-1, 1, 1, 1]), Some(shift))
            }
            None => (conv.weight.copy(), conv.bias.as_ref().map(Tensor::copy)),
        });
        let slope = Tensor::from(LEAKY_SLOPE)
            .to_kind(weight.kind())
            .to_device(weight.device());
        let conv = match up {
            Some(up) => FusedConv::SubPixel(tch::no_grad(|| SubPixel::new(&weight, up))),
            None => FusedConv::Plain(weight),
        };
        self.fused = Some(Fused { conv, bias, slope });
    }

    /// The inference path after [`absorb_bn`](Self::absorb_bn): the output is already
    /// masked, since every activation maps 0 to 0.
    fn forward_fused(&self, x_masked: &Tensor, mask: &Mask) -> Option<(Tensor, Mask)> {
        let f = self.fused.as_ref()?;
        let FusedConv::Plain(weight) = &f.conv else {
            return None;
        };
        let (h, mask) = self
            .conv
            .forward_fused(x_masked, mask, weight, f.bias.as_ref());
        Some(self.activate_fused(h, mask, &f.slope))
    }

    /// A decoder block after `absorb_bn`, from the masked low-resolution map and the masked
    /// skip; `mask` is the concatenation's.
    fn forward_sub_pixel(&self, h: &Tensor, skip: &Tensor, mask: &Mask) -> Option<(Tensor, Mask)> {
        let f = self.fused.as_ref()?;
        let FusedConv::SubPixel(sub_pixel) = &f.conv else {
            return None;
        };
        let raw = sub_pixel.conv(h, skip);
        let (h, mask) = self.conv.finish_fused(raw, mask, f.bias.as_ref());
        Some(self.activate_fused(h, mask, &f.slope))
    }

    fn activate_fused(&self, mut h: Tensor, mask: Mask, slope: &Tensor) -> (Tensor, Mask) {
        let h = match self.activation {
            Activation::Relu => h.relu_(),
            Activation::LeakyRelu => h.internal_prelu_kernel(slope),
            Activation::Linear => h,
        };
        (h, mask)
    }

    /// `bn_train`: whether batch norm uses (and updates) batch statistics.
    /// `x_masked` is the block's input already multiplied by `mask`.
    fn forward(
        &self,
        x_masked: &Tensor,
        mask: &Mask,
        bn_train: bool,
        compute: Option<Kind>,
    ) -> (Tensor, Mask) {
        let (h, mask) = self.conv.forward_masked_in(x_masked, mask, compute);
        let h = match &self.bn {
            Some(bn) => bn.forward_t(&h, bn_train),
            None => h,
        };
        let h = match self.activation {
            Activation::Relu => h.relu(),
            // tch's leaky_relu has a fixed 0.01 slope; the paper uses 0.2.
            Activation::LeakyRelu => h.maximum(&(&h * LEAKY_SLOPE)),
            Activation::Linear => h,
        };
        (h, mask)
    }
}

/// The masked U-Net.
#[derive(Debug)]
pub struct PConvUNet {
    config: PConvUNetConfig,
    /// `enc_1..=enc_L`.
    encoder: Vec<PConvBlock>,
    /// `dec_1..=dec_L`, applied in reverse.
    decoder: Vec<PConvBlock>,
    /// Fine-tuning stage 2 (paper §4): encoder BN uses running statistics while its affine
    /// parameters keep training.
    pub freeze_enc_bn: bool,
    /// Mixed precision: training passes (`train = true`) compute their convolutions in this
    /// kind, e.g. bf16 (a training step 1.2× faster on an AVX512-BF16 CPU, 1.7× with AMX;
    /// `docs/benchmarks.md`). Inference and validation stay in full precision.
    pub train_compute: Option<Kind>,
    channels_last: bool,
}

impl PConvUNet {
    /// A freshly initialised network whose variables live under `vs`, named as the public
    /// PyTorch reimplementation names them (`enc_1.conv.input_conv.weight`, ...).
    pub fn new(vs: &nn::Path, config: PConvUNetConfig) -> Self {
        let c = &config;
        let mut encoder = Vec::with_capacity(c.layer_size);
        let mut decoder = Vec::with_capacity(c.layer_size);
        let mut c_prev = c.input_channels;
        for i in 1..=c.layer_size {
            let c_out = c.encoder_width(i);
            let k = PConvUNetConfig::encoder_kernel(i);
            encoder.push(PConvBlock::new(
                vs / format!("enc_{i}"),
                c,
                c_prev,
                c_out,
                k,
                2,
                i > 1,
                Activation::Relu,
            ));
            c_prev = c_out;
        }
        for i in 1..=c.layer_size {
            let skip = if i == 1 {
                c.input_channels
            } else {
                c.encoder_width(i - 1)
            };
            let up = c.encoder_width(i);
            let block = if i == 1 {
                PConvBlock::new(
                    vs / "dec_1",
                    c,
                    up + skip,
                    c.input_channels,
                    3,
                    1,
                    false,
                    Activation::Linear,
                )
            } else {
                PConvBlock::new(
                    vs / format!("dec_{i}"),
                    c,
                    up + skip,
                    skip,
                    3,
                    1,
                    true,
                    Activation::LeakyRelu,
                )
            };
            decoder.push(block);
        }
        let mut net = Self {
            config,
            encoder,
            decoder,
            freeze_enc_bn: false,
            train_compute: None,
            channels_last: false,
        };
        // oneDNN's CPU convolutions are fastest on NHWC (docs/benchmarks.md); CUDA keeps
        // PyTorch's default.
        net.set_channels_last(vs.device() == Device::Cpu);
        net
    }

    /// Runs the network in NHWC order (PyTorch's `channels_last`) or NCHW. Both compute the
    /// same values; NHWC is the CPU default.
    pub fn set_channels_last(&mut self, on: bool) {
        for block in self.encoder.iter_mut().chain(&mut self.decoder) {
            block.conv.set_channels_last(on);
        }
        self.channels_last = on;
    }

    /// Whether it runs in NHWC order; see [`PConvUNet::set_channels_last`].
    pub fn is_channels_last(&self) -> bool {
        self.channels_last
    }

    /// Folds every batch norm into its convolution for inference (as candle's `absorb_bn`),
    /// which removes a pass over each feature map and lets the masking, bias and activation
    /// run in place. `forward_t(.., train = false)` then uses the folded weights, so call it
    /// again after the weights, their device or their dtype change;
    /// [`clear_absorbed_bn`](Self::clear_absorbed_bn) returns to the plain path. The inpainter does this once
    /// at load.
    pub fn absorb_bn(&mut self) {
        for block in &mut self.encoder {
            block.absorb_bn(None);
        }
        for (i, block) in self.decoder.iter_mut().enumerate() {
            block.absorb_bn(Some(self.config.encoder_width(i + 1)));
        }
    }

    /// Replaces every batch norm's running statistics by their plain mean over `batches`
    /// (`(x, mask)` as for [`forward_t`](Self::forward_t)), each layer seeing the batch
    /// statistics of the layers before it, as in training. Training keeps an exponential
    /// average over its last few dozen batches, which is noisy for small batches and, for a
    /// weight average ([`crate::train::average`]), describes none of the averaged weights; this is
    /// SWA's `update_bn` (Izmailov et al. 2018). Returns the number of batches used.
    pub fn recalibrate_bn(&mut self, batches: impl IntoIterator<Item = (Tensor, Mask)>) -> usize {
        let (freeze, compute) = (self.freeze_enc_bn, self.train_compute);
        (self.freeze_enc_bn, self.train_compute) = (false, None);
        self.clear_absorbed_bn();
        let bns: Vec<&nn::BatchNorm> = self
            .encoder
            .iter()
            .chain(&self.decoder)
            .filter_map(|b| b.bn.as_ref())
            .collect();
        let mut sums: Vec<(Tensor, Tensor)> = bns
            .iter()
            .map(|bn| (bn.running_mean.zeros_like(), bn.running_var.zeros_like()))
            .collect();
        let mut n = 0;
        tch::no_grad(|| {
            for (x, mask) in batches {
                for bn in &bns {
                    // From zero, one update leaves exactly `momentum × batch statistic`.
                    let _ = bn.running_mean.shallow_clone().zero_();
                    let _ = bn.running_var.shallow_clone().zero_();
                }
                let _ = self.forward_t(&x, &mask, true);
                for (bn, (mean, var)) in bns.iter().zip(&mut sums) {
                    *mean += &bn.running_mean / BN_MOMENTUM;
                    *var += &bn.running_var / BN_MOMENTUM;
                }
                n += 1;
            }
            if n > 0 {
                for (bn, (mean, var)) in bns.iter().zip(&sums) {
                    bn.running_mean.shallow_clone().copy_(&(mean / n as f64));
                    bn.running_var.shallow_clone().copy_(&(var / n as f64));
                }
            }
        });
        (self.freeze_enc_bn, self.train_compute) = (freeze, compute);
        n
    }

    /// Converts the folded convolution weights of [`PConvUNet::absorb_bn`] to `kind`
    /// (`BFloat16`, `Half`), so that inference computes its convolutions in it
    /// ([`crate::infer::precision`]); `Float` after another kind loses what that kind
    /// rounded off. Blocks without folded weights (training) are left alone.
    pub fn set_conv_kind(&mut self, kind: Kind) {
        tch::no_grad(|| {
            for block in self.encoder.iter_mut().chain(&mut self.decoder) {
                if let Some(fused) = &mut block.fused {
                    match &mut fused.conv {
                        FusedConv::Plain(w) => *w = same_layout(w, w.to_kind(kind)),
                        FusedConv::SubPixel(sub_pixel) => sub_pixel.convert(kind),
                    }
                }
            }
        });
    }

    /// Drops the folded weights of [`PConvUNet::absorb_bn`], so that inference uses the batch
    /// norms again (needed before training a network that was folded).
    pub fn clear_absorbed_bn(&mut self) {
        for block in self.encoder.iter_mut().chain(&mut self.decoder) {
            block.fused = None;
        }
    }

    /// The shape it was built with.
    pub fn config(&self) -> &PConvUNetConfig {
        &self.config
    }

    /// `x`: `N×C×H×W` features (already multiplied by the mask or not: the first layer masks
    /// them anyway); `mask`: 1 = valid. Returns the prediction and the final mask.
    pub fn forward_t(&self, x: &Tensor, mask: &Mask, train: bool) -> (Tensor, Mask) {
        let x = if self.channels_last {
            channels_last(x)
        } else {
            x.shallow_clone()
        };
        // Each skip is kept as `h ⊙ M`: the decoder needs only the masked values.
        let mut skips: Vec<(Tensor, Mask)> = Vec::with_capacity(self.config.layer_size + 1);
        let (mut h, mut m) = (mask.apply(&x), clone_mask(mask));
        let compute = self.train_compute.filter(|_| train);
        // After `absorb_bn`, inference takes the fused path, whose outputs come masked.
        for block in &self.encoder {
            let (h_next, m_next) = match (!train).then(|| block.forward_fused(&h, &m)).flatten() {
                Some(out) => out,
                None => {
                    let (h_next, m_next) =
                        block.forward(&h, &m, train && !self.freeze_enc_bn, compute);
                    (m_next.apply(&h_next), m_next)
                }
            };
            skips.push((h, m));
            (h, m) = (h_next, m_next);
        }
        for (i, block) in self.decoder.iter().enumerate().rev() {
            let (skip_h, skip_m) = skips.pop().expect("one skip per level");
            let m_cat = m.upsample_nearest2x().cat(&skip_m);
            if let Some(out) = (!train)
                .then(|| block.forward_sub_pixel(&h, &skip_h, &m_cat))
                .flatten()
            {
                (h, m) = out;
                continue;
            }
            let s = h.size();
            // Nearest upsampling commutes with masking, so the concatenation is built from
            // parts masked at their own (lower) resolution instead of masked after joining.
            let h_up = h.upsample_nearest2d([s[2] * 2, s[3] * 2], 2.0, 2.0);
            let h_cat = Tensor::cat(&[h_up, skip_h], 1);
            let (h_next, m_next) = block.forward(&h_cat, &m_cat, train, compute);
            // The last layer's output is the prediction, not masked.
            h = if i > 0 { m_next.apply(&h_next) } else { h_next };
            m = m_next;
        }
        (h.contiguous(), m)
    }
}

fn clone_mask(mask: &Mask) -> Mask {
    match mask {
        Mask::Grouped(g) => Mask::Grouped(g.iter().map(|(t, c)| (t.shallow_clone(), *c)).collect()),
        Mask::PerChannel(t) => Mask::PerChannel(t.shallow_clone()),
    }
}

/// `converted` in `original`'s memory layout: channels-last weights stay channels-last.
fn same_layout(original: &Tensor, converted: Tensor) -> Tensor {
    if original.is_contiguous() {
        converted.contiguous()
    } else {
        channels_last(&converted)
    }
}
