//! Int8 model files (`Storage::Int8`) against the numpy quantisation that
//! `tests/reference/make_quant_fixture.py` computes from a real PyTorch checkpoint.

mod common;

use std::collections::HashMap;

use common::reference_dir;
use partialconv::{checkpoint, Model, Storage};
use safetensors::{tensor::Dtype, SafeTensors};
use tch::{Device, Kind, Tensor};

fn bytes_of<'a>(st: &'a SafeTensors<'a>, name: &str) -> (Dtype, Vec<usize>, &'a [u8]) {
    let v = st.tensor(name).unwrap_or_else(|e| panic!("`{name}`: {e}"));
    (v.dtype(), v.shape().to_vec(), v.data())
}

#[test]
fn int8_files_hold_numpys_bytes_and_load_as_its_dequantised_weights() {
    let dir = reference_dir();
    let fixture_bytes = std::fs::read(dir.join("quant_expected.safetensors")).unwrap();
    let fixture = SafeTensors::deserialize(&fixture_bytes).unwrap();
    let fixture_t: HashMap<String, Tensor> =
        Tensor::read_safetensors(dir.join("quant_expected.safetensors"))
            .unwrap()
            .into_iter()
            .collect();

    // The checkpoint's weights, with the fixture's (one channel zeroed) for the convolutions.
    let model = checkpoint::import_pth(&dir.join("naoto_zip.pth")).unwrap();
    let mut weights = model.vs.variables();
    let mut convs = Vec::new();
    for (name, t) in weights.iter_mut() {
        if let Some(w) = fixture_t.get(&format!("{name}.input")) {
            *t = w.shallow_clone();
            convs.push(name.clone());
        }
    }
    assert_eq!(convs.len(), 8, "a layer_size-4 U-Net has 8 convolutions");
    model.load_state_dict(&weights, "fixture").unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let (int8, f32) = (tmp.path().join("int8.st"), tmp.path().join("f32.st"));
    model.save(&int8, Storage::Int8).unwrap();
    model.save(&f32, Storage::F32).unwrap();
    let written_bytes = std::fs::read(&int8).unwrap();
    let written = SafeTensors::deserialize(&written_bytes).unwrap();

    for name in &convs {
        let scale = format!("{name}.scale");
        assert_eq!(bytes_of(&written, name), bytes_of(&fixture, name), "{name}");
        assert_eq!(
            bytes_of(&written, &scale),
            bytes_of(&fixture, &scale),
            "{scale}"
        );
    }
    for (name, view) in written.tensors() {
        if !name.ends_with(".scale") && !convs.contains(&name) {
            assert_eq!(
                view.dtype(),
                Dtype::F16,
                "{name}: biases and batch norm are fp16"
            );
        }
    }
    let f32_len = std::fs::metadata(&f32).unwrap().len();
    assert!(
        (written_bytes.len() as u64) * 10 < f32_len * 3,
        "int8 file {} bytes, f32 {f32_len}",
        written_bytes.len()
    );

    let loaded = Model::load(&int8, Device::Cpu).unwrap();
    assert_eq!(loaded.meta, model.meta);
    for (name, got) in loaded.vs.variables() {
        let want = match fixture_t.get(&format!("{name}.dequant")) {
            Some(d) => d.shallow_clone(),
            None => weights[&name].to_kind(Kind::Half).to_kind(Kind::Float),
        };
        assert!(got.equal(&want), "{name}: loaded weights differ");
    }
}

#[test]
fn an_int8_weight_without_scales_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let model = checkpoint::import_pth(&reference_dir().join("naoto_zip.pth")).unwrap();
    let path = tmp.path().join("int8.st");
    model.save(&path, Storage::Int8).unwrap();
    // Rewrite the file without one scale tensor, keeping the header.
    let bytes = std::fs::read(&path).unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<_> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| n != "dec_1.conv.weight.scale")
        .collect();
    let out = safetensors::serialize(kept, header.metadata().clone()).unwrap();
    std::fs::write(&path, out).unwrap();
    let err = Model::load(&path, Device::Cpu).unwrap_err().to_string();
    assert!(
        err.contains("dec_1.conv.weight") && err.contains("scale"),
        "{err}"
    );
}

#[cfg(feature = "bundled-model")]
#[test]
fn the_bundled_model_is_the_int8_conversion_of_models_default() {
    // The fp16 training output lives in the repository, not in the published crate.
    let fp16 =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/default.safetensors");
    if !fp16.exists() {
        eprintln!("skipped: {} is not here (a packaged crate)", fp16.display());
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("int8.safetensors");
    Model::load(&fp16, Device::Cpu)
        .unwrap()
        .save(&out, Storage::Int8)
        .unwrap();
    assert!(
        std::fs::read(&out).unwrap() == partialconv::model::bundled_model().unwrap(),
        "partialconv-model/default.int8.safetensors is stale: run `make model`"
    );
}
