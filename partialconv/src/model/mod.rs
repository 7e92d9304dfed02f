//! Model files: safetensors weights plus a JSON header describing the architecture, the
//! normalisation inputs get, the import of the public PyTorch reimplementation's `.pth`
//! checkpoints ([`pth`]) and where a model comes from when the caller names none
//! ([`source`]).
//!
//! The header lives in the safetensors metadata under the key `partialconv` as [`ModelMeta`].

pub mod pth;
pub mod quant;
pub mod source;

pub use pth::{canonical_name, import_pth};
pub use source::{bundled_model, load_model, ModelSource, MODEL_ENV};
// Its own crate now; re-exported so `checkpoint::torch_pickle` keeps working.
pub use torch_pickle;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::nn::unet::{PConvUNet, PConvUNetConfig};

/// Key of the JSON header in the safetensors metadata.
pub const META_KEY: &str = "partialconv";

/// Per-channel normalisation applied to RGB in `[0, 1]` before the network.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    /// Per-channel mean subtracted, R, G, B.
    pub mean: [f32; 3],
    /// Per-channel standard deviation divided by, R, G, B.
    pub std: [f32; 3],
}

impl Normalization {
    /// What the public checkpoints were trained with.
    pub const IMAGENET: Normalization = Normalization {
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
    };
}

impl Default for Normalization {
    fn default() -> Self {
        Self::IMAGENET
    }
}

fn channel_stats(norm: &Normalization, device: Device) -> (Tensor, Tensor) {
    let mean = Tensor::from_slice(&norm.mean)
        .view([1, 3, 1, 1])
        .to_device(device);
    let std = Tensor::from_slice(&norm.std)
        .view([1, 3, 1, 1])
        .to_device(device);
    (mean, std)
}

/// RGB in `[0, 1]` (`N×3×H×W`) to the network's input space.
pub fn normalize(x: &Tensor, norm: &Normalization) -> Tensor {
    let (mean, std) = channel_stats(norm, x.device());
    (x - mean) / std
}

/// The network's output space back to RGB in `[0, 1]`.
pub fn denormalize(x: &Tensor, norm: &Normalization) -> Tensor {
    let (mean, std) = channel_stats(norm, x.device());
    x * std + mean
}

/// Everything about a model file except its weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    /// The network's shape, which the weights must match.
    pub config: PConvUNetConfig,
    /// What inputs are normalised with; ImageNet's when the header omits it.
    #[serde(default)]
    pub normalization: Normalization,
    /// Side length the model was trained at; `auto` uses it to pick a working resolution.
    #[serde(default)]
    pub train_size: Option<u32>,
    /// Free-form provenance: data, steps, losses, source checkpoint.
    #[serde(default)]
    pub training: serde_json::Value,
}

impl ModelMeta {
    /// A header for `config` with ImageNet normalisation and no provenance.
    pub fn new(config: PConvUNetConfig) -> Self {
        Self {
            config,
            normalization: Normalization::IMAGENET,
            train_size: None,
            training: serde_json::Value::Null,
        }
    }
}

/// How weights are stored on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Storage {
    /// Full precision, as trained.
    #[default]
    F32,
    /// Halves the file; weights are widened back to fp32 on load.
    F16,
    /// Convolution weights as per-output-channel symmetric int8, the rest fp16: about a
    /// quarter of fp32. Dequantised to fp32 once, on load; see [`quant`].
    Int8,
}

impl std::str::FromStr for Storage {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            "int8" => Ok(Self::Int8),
            _ => Err(Error::InvalidArgument(format!(
                "unknown storage `{s}`: expected f32, f16 or int8"
            ))),
        }
    }
}

impl std::fmt::Display for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Int8 => "int8",
        })
    }
}

/// A network with its weights and header.
pub struct Model {
    /// The header.
    pub meta: ModelMeta,
    /// The weights, on the model's device.
    pub vs: nn::VarStore,
    /// The network reading them.
    pub net: PConvUNet,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("meta", &self.meta)
            .field("device", &self.vs.device())
            .finish()
    }
}

impl Model {
    /// A freshly initialised network.
    pub fn new(meta: ModelMeta, device: Device) -> Result<Self> {
        meta.config.validate().map_err(Error::InvalidArgument)?;
        let vs = nn::VarStore::new(device);
        let net = PConvUNet::new(&vs.root(), meta.config);
        Ok(Self { meta, vs, net })
    }

    /// Reads a model file (safetensors with the `partialconv` header) onto `device`.
    pub fn load(path: &Path, device: Device) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(&bytes, &path.display().to_string(), device)
    }

    /// `what` names the source in errors (a path, "bundled model", ...).
    pub fn from_bytes(bytes: &[u8], what: &str, device: Device) -> Result<Self> {
        let bad = |reason: String| Error::Checkpoint {
            what: what.to_string(),
            reason,
        };
        let (_, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| bad(format!("not a safetensors file ({e})")))?;
        let meta_json = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get(META_KEY))
            .ok_or_else(|| bad(format!("no `{META_KEY}` header: not a partialconv model")))?;
        let meta: ModelMeta = serde_json::from_str(meta_json)
            .map_err(|e| bad(format!("bad `{META_KEY}` header: {e}")))?;
        meta.config.validate().map_err(bad)?;
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| bad(format!("corrupt safetensors data ({e})")))?;
        let model = Self::new(meta, device)?;
        let mut tensors = HashMap::new();
        for (name, view) in st.tensors() {
            tensors.insert(name, view);
        }
        copy_into(&model.vs, what, |name| {
            let Some(view) = tensors.get(name) else {
                return Ok(None);
            };
            let t = view_to_tensor(view)?;
            if t.kind() != Kind::Int8 {
                return Ok(Some(t));
            }
            let scale_name = format!("{name}{}", quant::SCALE_SUFFIX);
            let scale = tensors.get(scale_name.as_str()).ok_or_else(|| {
                bad(format!(
                    "int8 tensor `{name}` has no scales (`{scale_name}`)"
                ))
            })?;
            let scale = view_to_tensor(scale)?;
            if scale.size() != [t.size()[0]] {
                return Err(bad(format!(
                    "`{scale_name}` has shape {:?}, expected [{}]",
                    scale.size(),
                    t.size()[0]
                )));
            }
            Ok(Some(quant::dequantize_per_channel(&t, &scale)))
        })?;
        Ok(model)
    }

    /// Writes to a temporary file then renames, so a crash never leaves a half-written model
    /// where a good one was.
    pub fn save(&self, path: &Path, storage: Storage) -> Result<()> {
        let meta = serde_json::to_string(&self.meta).expect("meta serialises");
        let mut named: BTreeMap<String, (Vec<i64>, Dtype, Vec<u8>)> = BTreeMap::new();
        for (name, t) in self.vs.variables() {
            let t = t.detach().to_device(Device::Cpu);
            match storage {
                Storage::Int8 if quant::is_quantized(&name, &t) => {
                    let (q, scale) = quant::quantize_per_channel(&t);
                    named.insert(format!("{name}{}", quant::SCALE_SUFFIX), raw(&scale));
                    named.insert(name, raw(&q));
                }
                Storage::F32 => {
                    named.insert(name, raw(&t.to_kind(Kind::Float)));
                }
                Storage::F16 | Storage::Int8 => {
                    named.insert(name, raw(&t.to_kind(Kind::Half)));
                }
            }
        }
        let views: Vec<(String, TensorView)> = named
            .iter()
            .map(|(n, (shape, dtype, data))| {
                let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
                (
                    n.clone(),
                    TensorView::new(*dtype, shape, data).expect("consistent view"),
                )
            })
            .collect();
        let info = HashMap::from([(META_KEY.to_string(), meta)]);
        let bytes = safetensors::serialize(views, Some(info)).map_err(|e| Error::Checkpoint {
            what: path.display().to_string(),
            reason: e.to_string(),
        })?;
        write_atomic(path, &bytes)
    }

    /// Copies weights named as in a PyTorch state dict of the public reimplementation
    /// (`enc_1.conv.input_conv.weight`, ...) or as in our files; see [`canonical_name`].
    pub fn load_state_dict(&self, tensors: &HashMap<String, Tensor>, what: &str) -> Result<()> {
        let renamed: HashMap<String, &Tensor> = tensors
            .iter()
            .filter_map(|(k, t)| canonical_name(k).map(|n| (n, t)))
            .collect();
        copy_into(&self.vs, what, |name| {
            Ok(renamed.get(name).map(|t| t.shallow_clone()))
        })
    }

    /// Trainable weights (batch-norm statistics are not counted).
    pub fn parameter_count(&self) -> usize {
        self.vs
            .trainable_variables()
            .iter()
            .map(|t| t.numel())
            .sum()
    }
}

/// Writes `bytes` to `path.tmp`, fsyncs, then renames over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp: PathBuf = {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(".tmp");
        path.with_file_name(name)
    };
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

fn view_to_tensor(view: &TensorView<'_>) -> Result<Tensor> {
    let kind = match view.dtype() {
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        Dtype::I8 => Kind::Int8,
        other => {
            return Err(Error::Checkpoint {
                what: "tensor".into(),
                reason: format!("unsupported dtype {other:?}"),
            })
        }
    };
    let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
    Ok(Tensor::f_from_data_size(view.data(), &shape, kind)?)
}

/// A CPU tensor's shape, safetensors dtype and bytes.
fn raw(t: &Tensor) -> (Vec<i64>, Dtype, Vec<u8>) {
    let t = t.contiguous();
    let dtype = match t.kind() {
        Kind::Float => Dtype::F32,
        Kind::Half => Dtype::F16,
        Kind::Int8 => Dtype::I8,
        other => unreachable!("models are saved as f32, f16 or i8, not {other:?}"),
    };
    let mut data = vec![0u8; t.numel() * t.kind().elt_size_in_bytes()];
    t.copy_data_u8(&mut data, t.numel());
    (t.size(), dtype, data)
}

/// Copies every variable of `vs` from `lookup`, checking presence and shape.
fn copy_into(
    vs: &nn::VarStore,
    what: &str,
    mut lookup: impl FnMut(&str) -> Result<Option<Tensor>>,
) -> Result<()> {
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    tch::no_grad(|| {
        for (name, mut var) in vars {
            let src = lookup(&name)?.ok_or_else(|| Error::MissingTensor {
                what: what.into(),
                name: name.clone(),
            })?;
            if src.size() != var.size() {
                return Err(Error::ShapeMismatch {
                    what: what.into(),
                    name,
                    expected: var.size(),
                    found: src.size(),
                });
            }
            var.f_copy_(&src.to_kind(var.kind()).to_device(var.device()))?;
        }
        Ok(())
    })
}
