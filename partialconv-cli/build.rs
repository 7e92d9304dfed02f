//! Bakes libtorch's location into the binary's rpath, so `partialconv` runs without
//! LD_LIBRARY_PATH (the same as `partialconv/build.rs` does for the library's test binaries).
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
}
