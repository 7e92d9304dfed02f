//! Reference data written by the repository's PyTorch scripts (`tests/reference/`):
//! `$PARTIALCONV_REFERENCE_DIR` when `make test` has filled it, else generated once here with
//! the repository's Python environment.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub fn reference_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("PARTIALCONV_REFERENCE_DIR") {
            return PathBuf::from(dir);
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("reference");
        std::fs::create_dir_all(&dir).unwrap();
        let python = std::env::var("PARTIALCONV_PYTHON")
            .unwrap_or_else(|_| root.join(".venv/bin/python").display().to_string());
        for script in [
            "make_checkpoints.py",
            "make_quant_fixture.py",
            "make_vgg_fixture.py",
            "make_loss_fixture.py",
        ] {
            let status = Command::new(&python)
                .arg(root.join("tests/reference").join(script))
                .arg(&dir)
                .status()
                .unwrap_or_else(|e| panic!("running {python}: {e} (run `make setup` first)"));
            assert!(status.success(), "{script} failed");
        }
        dir
    })
}
