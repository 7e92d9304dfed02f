//! Bakes libtorch's location into our binaries' rpath, so they run without LD_LIBRARY_PATH,
//! and compiles the bundled model in when `models/default.safetensors` exists.
fn main() {
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        // Canonical, so the rpath survives the `.libtorch` link being re-pointed or absent.
        let lib = std::fs::canonicalize(&lib).unwrap_or_else(|_| lib.into());
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
        // Nothing references libtorch_cuda's symbols directly (CUDA kernels register
        // themselves when it loads), so `--as-needed` would drop it and `--device cuda`
        // would find no GPU.
        if lib.join("libtorch_cuda.so").exists() {
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
        }
    }
    println!("cargo::rustc-check-cfg=cfg(bundled_model)");
    let models = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
    // The folder, not the file: a missing file would rerun this script on every build.
    println!("cargo:rerun-if-changed={}", models.display());
    let model = models.join("default.safetensors");
    if model.exists() {
        println!("cargo:rerun-if-changed={}", model.display());
        println!("cargo:rustc-cfg=bundled_model");
    }
}
