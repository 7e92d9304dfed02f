//! Import of the public PyTorch reimplementation's `.pth` checkpoints, read with the
//! `torch-pickle` crate's restricted unpickler.

use std::collections::HashMap;
use std::path::Path;

use tch::{Device, Tensor};

use super::{copy_into, Model, ModelMeta};
use crate::error::{Error, Result};
use crate::nn::layer::Convention;
use crate::nn::unet::PConvUNetConfig;

/// Our name for a state-dict key of the public reimplementation, or `None` for entries that
/// are not part of the function (the constant-ones `mask_conv`, BN's batch counter).
pub fn canonical_name(key: &str) -> Option<String> {
    if key.contains(".mask_conv.") || key.ends_with("num_batches_tracked") {
        return None;
    }
    Some(key.replace(".conv.input_conv.", ".conv."))
}

/// Imports a checkpoint of the public PyTorch reimplementation (a `{'n_iter', 'model',
/// 'optimizer'}` dict, zip or legacy format) as a partialconv model. The file is read with a
/// restricted unpickler that runs no code from it.
pub fn import_pth(src: &Path) -> Result<Model> {
    let bytes = std::fs::read(src).map_err(|e| Error::io(src, e))?;
    let file = torch_pickle::read_pth(&bytes).map_err(|source| Error::Pth {
        path: src.into(),
        source,
    })?;
    let what = src.display().to_string();
    let bad = |reason: String| Error::Checkpoint {
        what: what.clone(),
        reason,
    };
    // Bare state dicts exist too; accept both.
    let prefix = if file.tensors.keys().any(|k| k.starts_with("model.")) {
        "model."
    } else {
        ""
    };
    let weights: HashMap<String, &torch_pickle::RawTensor> = file
        .tensors
        .iter()
        .filter_map(|(key, t)| {
            key.strip_prefix(prefix)
                .and_then(canonical_name)
                .map(|n| (n, t))
        })
        .collect();
    let layer_size = (1..)
        .take_while(|i| weights.contains_key(&format!("enc_{i}.conv.weight")))
        .count();
    let first = weights.get("enc_1.conv.weight").ok_or_else(|| {
        bad("no `enc_1.conv.input_conv.weight`: not a PConvUNet checkpoint".into())
    })?;
    if first.shape.len() != 4 {
        return Err(bad(format!("`enc_1` weight has shape {:?}", first.shape)));
    }
    let config = PConvUNetConfig {
        layer_size,
        width: first.shape[0] as i64,
        input_channels: first.shape[1] as i64,
        convention: Convention::Unscaled,
        eps: 1e-8,
    };
    let mut meta = ModelMeta::new(config);
    meta.training = serde_json::json!({
        "imported_from": src.file_name().map(|n| n.to_string_lossy().into_owned()),
        "n_iter": match file.scalars.get("n_iter") {
            Some(torch_pickle::Scalar::Int(n)) => Some(*n),
            _ => None,
        },
    });
    let model = Model::new(meta, Device::Cpu).map_err(|e| bad(e.to_string()))?;
    copy_into(&model.vs, &what, |name| {
        let Some(raw) = weights.get(name) else {
            return Ok(None);
        };
        let data = raw.to_f32_vec().map_err(|source| Error::Pth {
            path: src.into(),
            source,
        })?;
        let shape: Vec<i64> = raw.shape.iter().map(|&d| d as i64).collect();
        Ok(Some(Tensor::from_slice(&data).reshape(shape.as_slice())))
    })?;
    Ok(model)
}
