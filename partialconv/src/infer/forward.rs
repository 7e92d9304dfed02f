//! The network on images: normalisation, padding to the network's multiple, the masked
//! forward pass and the self-ensemble's flipped views, as methods of [`Model`].

use image::RgbImage;
use tch::{Device, Kind, Tensor};

use crate::error::Result;
use crate::imaging::convert::{image_to_tensor, tensor_to_image, valid_tensor};
use crate::imaging::masks::HoleMask;
use crate::infer::ensemble::SelfEnsemble;
use crate::model::{denormalize, normalize, Model};
use crate::nn::layer::Mask;

/// Reflect-pads the bottom and right of `N×C×H×W` up to a multiple of `multiple`. Images
/// smaller than the padding are reflected repeatedly, since one reflection can add at most
/// `side − 1` pixels.
pub fn pad_to_multiple(x: &Tensor, multiple: i64) -> Tensor {
    let mut x = x.shallow_clone();
    loop {
        let s = x.size();
        let (h, w) = (s[2], s[3]);
        let need_h = (multiple - h % multiple) % multiple;
        let need_w = (multiple - w % multiple) % multiple;
        if need_h == 0 && need_w == 0 {
            return x;
        }
        let (ph, pw) = (need_h.min(h - 1), need_w.min(w - 1));
        x = if ph == 0 && pw == 0 {
            // A 1-pixel side cannot be reflected; repeat it instead.
            x.replication_pad2d([0, need_w, 0, need_h])
        } else {
            x.reflection_pad2d([0, pw, 0, ph])
        };
    }
}

impl Model {
    /// The network's raw prediction for same-size images at native resolution (no composite).
    pub fn fill_native(&self, images: &[&RgbImage], masks: &[&HoleMask]) -> Result<Vec<RgbImage>> {
        self.fill_native_with(images, masks, SelfEnsemble::Single)
    }

    /// [`Model::fill_native`] averaged over the flipped views of `ensemble`
    /// ([`crate::infer::ensemble`]).
    pub fn fill_native_with(
        &self,
        images: &[&RgbImage],
        masks: &[&HoleMask],
        ensemble: SelfEnsemble,
    ) -> Result<Vec<RgbImage>> {
        let device = self.vs.device();
        let x = Tensor::stack(
            &images
                .iter()
                .map(|im| image_to_tensor(im))
                .collect::<Vec<_>>(),
            0,
        )
        .to_device(device);
        let valid = Tensor::stack(
            &masks.iter().map(|m| valid_tensor(m)).collect::<Vec<_>>(),
            0,
        )
        .to_device(device);
        let flip = |t: &Tensor, dims: &[i64]| match dims {
            [] => t.shallow_clone(),
            _ => t.flip(dims),
        };
        // The views' fills, each flipped back and summed as they come.
        let y = ensemble
            .views()
            .iter()
            .map(|&dims| {
                flip(
                    &self.predict_tensor(&flip(&x, dims), &flip(&valid, dims)),
                    dims,
                )
            })
            .reduce(|sum, y| sum + y)
            .expect("every ensemble has a view")
            / ensemble.passes() as f64;
        let y = (y.clamp(0.0, 1.0) * 255.0)
            .round()
            .to_kind(Kind::Uint8)
            .to_device(Device::Cpu);
        (0..images.len() as i64)
            .map(|i| tensor_to_image(&y.get(i)))
            .collect()
    }

    /// `N×3×H×W` in `[0, 1]` and its `N×1×H×W` valid map to the prediction in `[0, 1]`
    /// (unclamped), any `H×W`.
    fn predict_tensor(&self, x: &Tensor, valid: &Tensor) -> Tensor {
        let (h, w) = (x.size()[2], x.size()[3]);
        let norm = &self.meta.normalization;
        let x = normalize(x, norm);
        let multiple = self.net.config().multiple();
        let (x, valid) = (
            pad_to_multiple(&x, multiple),
            pad_to_multiple(valid, multiple),
        );
        let channels = self.net.config().input_channels;
        let y = tch::no_grad(|| {
            let (y, _) = self
                .net
                .forward_t(&(&x * &valid), &Mask::shared(valid, channels), false);
            y
        });
        denormalize(&y, norm).narrow(2, 0, h).narrow(3, 0, w)
    }
}
