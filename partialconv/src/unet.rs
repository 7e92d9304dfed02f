//! The partial-convolution U-Net of Liu et al. (2018), section 3.2 and supplementary table.
//!
//! Depth and widths are data ([`PConvUNetConfig`]), so the seed's 7-level model, the paper's
//! 8-level one and narrow "lite" variants are the same code. Variable names follow the
//! paper's `enc_i`/`dec_i` numbering: `enc_1.conv.weight`, `enc_2.bn.running_mean`, ...

use serde::{Deserialize, Serialize};
use tch::nn::{self, ModuleT};
use tch::{Device, Tensor};

use crate::layer::{
    channels_last, partial_conv2d, Convention, Mask, PartialConv2d, PartialConvConfig,
};

/// Shape of a [`PConvUNet`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PConvUNetConfig {
    /// Number of encoder (and decoder) levels; inputs must be multiples of `2^layer_size`.
    pub layer_size: usize,
    /// Channels of the first encoder level; the paper's 64 doubles up to `8·width`.
    pub width: i64,
    pub input_channels: i64,
    pub convention: Convention,
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

#[derive(Debug, Clone, Copy)]
enum Activation {
    Relu,
    LeakyRelu,
    Linear,
}

/// Partial conv, optional batch norm, activation: the paper's "PConv-BN-ReLU" unit.
#[derive(Debug)]
struct PConvBlock {
    conv: PartialConv2d,
    bn: Option<nn::BatchNorm>,
    activation: Activation,
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
        let bn = bn.then(|| nn::batch_norm2d(&vs / "bn", c_out, Default::default()));
        Self {
            conv,
            bn,
            activation,
        }
    }

    /// `bn_train`: whether batch norm uses (and updates) batch statistics.
    /// `x_masked` is the block's input already multiplied by `mask`.
    fn forward(&self, x_masked: &Tensor, mask: &Mask, bn_train: bool) -> (Tensor, Mask) {
        let (h, mask) = self.conv.forward_masked(x_masked, mask);
        let h = match &self.bn {
            Some(bn) => bn.forward_t(&h, bn_train),
            None => h,
        };
        let h = match self.activation {
            Activation::Relu => h.relu(),
            // tch's leaky_relu has a fixed 0.01 slope; the paper uses 0.2.
            Activation::LeakyRelu => h.maximum(&(&h * 0.2)),
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
}

impl PConvUNet {
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
        Self {
            config,
            encoder,
            decoder,
            freeze_enc_bn: false,
        }
    }

    pub fn config(&self) -> &PConvUNetConfig {
        &self.config
    }

    /// `x`: `N×C×H×W` features (already multiplied by the mask or not: the first layer masks
    /// them anyway); `mask`: 1 = valid. Returns the prediction and the final mask.
    pub fn forward_t(&self, x: &Tensor, mask: &Mask, train: bool) -> (Tensor, Mask) {
        let x = if x.device() == Device::Cpu {
            channels_last(x)
        } else {
            x.shallow_clone()
        };
        // Each skip is kept as `h ⊙ M`: the decoder needs only the masked values.
        let mut skips: Vec<(Tensor, Mask)> = Vec::with_capacity(self.config.layer_size + 1);
        let (mut h, mut m) = (mask.apply(&x), clone_mask(mask));
        for block in &self.encoder {
            let (h_next, m_next) = block.forward(&h, &m, train && !self.freeze_enc_bn);
            skips.push((h, m));
            h = m_next.apply(&h_next);
            m = m_next;
        }
        for (i, block) in self.decoder.iter().enumerate().rev() {
            let (skip_h, skip_m) = skips.pop().expect("one skip per level");
            let s = h.size();
            // Nearest upsampling commutes with masking, so the concatenation is built from
            // parts masked at their own (lower) resolution instead of masked after joining.
            let h_up = h.upsample_nearest2d([s[2] * 2, s[3] * 2], 2.0, 2.0);
            let m_cat = m.upsample_nearest2x().cat(&skip_m);
            let h_cat = Tensor::cat(&[h_up, skip_h], 1);
            let (h_next, m_next) = block.forward(&h_cat, &m_cat, train);
            (h, m) = (h_next, m_next);
            if i > 0 {
                h = m.apply(&h);
            }
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
