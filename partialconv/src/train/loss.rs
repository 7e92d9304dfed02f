//! The paper's training loss (Liu et al. 2018, eq. 3–7):
//! `L_valid + 6·L_hole + 0.05·L_perceptual + 120·(L_style_out + L_style_comp) + 0.1·L_tv`,
//! plus an optional squared-error term on the hole that the paper does not have.

use tch::{Kind, Tensor};

use crate::model::{denormalize, Normalization};
use crate::nn::vgg::Vgg19Features;

/// Weights of the loss terms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossWeights {
    /// L1 outside the hole (the paper's 1).
    pub valid: f64,
    /// L1 inside the hole (the paper's 6).
    pub hole: f64,
    /// VGG feature distance of the output and of the composite (the paper's 0.05).
    pub perceptual: f64,
    /// Gram-matrix distance of the same features (the paper's 120).
    pub style: f64,
    /// Total variation of the composite (the paper's 0.1).
    pub tv: f64,
    /// Mean squared error on the hole; 0 in the paper. L1 pulls each hole pixel toward the
    /// median of the plausible fills and L2 toward their mean, which is what PSNR rewards.
    pub hole_mse: f64,
}

impl Default for LossWeights {
    /// The paper's weights.
    fn default() -> Self {
        Self {
            valid: 1.0,
            hole: 6.0,
            perceptual: 0.05,
            style: 120.0,
            tv: 0.1,
            hole_mse: 0.0,
        }
    }
}

/// Each term (already weighted) and their sum; `hole` holds both hole terms.
#[derive(Debug)]
pub struct LossTerms {
    /// The weighted sum, with its graph, for `backward`.
    pub total: Tensor,
    /// The weighted valid-pixel L1.
    pub valid: f64,
    /// The weighted hole L1 plus the hole squared error.
    pub hole: f64,
    /// The weighted perceptual term; 0 without VGG.
    pub perceptual: f64,
    /// The weighted style term; 0 without VGG.
    pub style: f64,
    /// The weighted total variation.
    pub tv: f64,
}

/// The inpainting loss, with the VGG terms when a feature extractor is given.
#[derive(Debug)]
pub struct InpaintingLoss {
    /// Weights of the terms.
    pub weights: LossWeights,
    /// The model's normalisation, undone before VGG sees the images.
    pub normalization: Normalization,
    /// The feature extractor; `None` drops the perceptual and style terms.
    pub vgg: Option<Vgg19Features>,
}

impl InpaintingLoss {
    /// `valid`: `N×1×H×W`, 1 outside the hole; `output` and `gt` are in the model's
    /// normalised space, as the L1 terms of the reference implementation are.
    pub fn compute(&self, valid: &Tensor, output: &Tensor, gt: &Tensor) -> LossTerms {
        let w = &self.weights;
        let hole = valid.ones_like() - valid;
        let comp = valid * gt + &hole * output;
        let l_valid = (valid * (output - gt)).abs().mean(Kind::Float) * w.valid;
        let hole_error = &hole * (output - gt);
        let mut l_hole = hole_error.abs().mean(Kind::Float) * w.hole;
        if w.hole_mse != 0.0 {
            l_hole += hole_error.square().mean(Kind::Float) * w.hole_mse;
        }
        let l_tv = total_variation(&comp) * w.tv;
        let mut total = &l_valid + &l_hole + &l_tv;
        let (mut perceptual, mut style) = (0.0, 0.0);
        if let Some(vgg) = &self.vgg {
            let to_rgb = |x: &Tensor| denormalize(x, &self.normalization);
            let f_out = vgg.features(&to_rgb(output));
            let f_comp = vgg.features(&to_rgb(&comp));
            let f_gt = tch::no_grad(|| vgg.features(&to_rgb(gt)));
            let mut l_perc = Tensor::zeros([], (Kind::Float, output.device()));
            let mut l_style = Tensor::zeros([], (Kind::Float, output.device()));
            for ((o, c), g) in f_out.iter().zip(&f_comp).zip(&f_gt) {
                l_perc = l_perc + (o - g).abs().mean(Kind::Float) + (c - g).abs().mean(Kind::Float);
                let gram_g = gram(g);
                l_style = l_style
                    + (gram(o) - &gram_g).abs().mean(Kind::Float)
                    + (gram(c) - &gram_g).abs().mean(Kind::Float);
            }
            let l_perc = l_perc * w.perceptual;
            let l_style = l_style * w.style;
            perceptual = l_perc.double_value(&[]);
            style = l_style.double_value(&[]);
            total = total + l_perc + l_style;
        }
        LossTerms {
            valid: l_valid.double_value(&[]),
            hole: l_hole.double_value(&[]),
            tv: l_tv.double_value(&[]),
            perceptual,
            style,
            total,
        }
    }
}

/// `K_p · Ψᵀ Ψ` with `K_p = 1/(C·H·W)`: the Gram matrix of eq. 5.
pub fn gram(features: &Tensor) -> Tensor {
    let s = features.size();
    let (n, c, hw) = (s[0], s[1], s[2] * s[3]);
    let f = features.view([n, c, hw]);
    f.bmm(&f.transpose(1, 2)) / (c * hw) as f64
}

/// Mean absolute difference between horizontal and vertical neighbours.
pub fn total_variation(x: &Tensor) -> Tensor {
    let s = x.size();
    let (h, w) = (s[2], s[3]);
    let dx = (x.narrow(3, 0, w - 1) - x.narrow(3, 1, w - 1))
        .abs()
        .mean(Kind::Float);
    let dy = (x.narrow(2, 0, h - 1) - x.narrow(2, 1, h - 1))
        .abs()
        .mean(Kind::Float);
    dx + dy
}
