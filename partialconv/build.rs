//! Finds libtorch's folder (from torch-sys) and passes it on: as an rpath for this crate's
//! own tests, benches and examples, and as `DEP_PARTIALCONV_LINK_ARG` for the build scripts
//! of crates that depend on this one, which a link argument does not reach. A binary's
//! two-line `build.rs` prints it back (docs/library.md), and then runs without
//! LD_LIBRARY_PATH.
fn main() {
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    // Canonical, so the rpath survives the `.libtorch` link being re-pointed or absent.
    let lib = std::fs::canonicalize(&lib).unwrap_or_else(|_| lib.into());
    let mut arg = format!("-Wl,-rpath,{}", lib.display());
    // Nothing references libtorch_cuda's symbols directly (CUDA kernels register themselves
    // when it loads), so `--as-needed` would drop it and `--device cuda` would find no GPU.
    if lib.join("libtorch_cuda.so").exists() {
        arg.push_str(",--no-as-needed,-ltorch_cuda,--as-needed");
    }
    println!("cargo:rustc-link-arg={arg}");
    println!("cargo::metadata=link_arg={arg}");
}
