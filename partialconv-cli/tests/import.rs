//! `partialconv import` on a checkpoint written by the PyTorch reference.

// The library's reference fixtures, generated the same way for both crates.
#[path = "../../partialconv/tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::Command;

use common::reference_dir;
use partialconv::Model;
use tch::Device;

#[test]
fn cli_import_writes_a_loadable_model() {
    let dst = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli_import.safetensors");
    let out = Command::new(env!("CARGO_BIN_EXE_partialconv"))
        .args([
            "import",
            reference_dir().join("naoto_legacy.pth").to_str().unwrap(),
            dst.to_str().unwrap(),
            "--half",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let model = Model::load(&dst, Device::Cpu).unwrap();
    assert_eq!(model.meta.config.layer_size, 4);
}
