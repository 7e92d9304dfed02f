//! Where the extension and the bench example find libtorch at run time.
fn main() {
    // The wheel installs next to `torch/` in site-packages, and the build environment's
    // libtorch (pip's isolated one) is gone by then, so the extension's rpath is relative.
    // `partialconv/__init__.py` imports torch first anyway; this is the fallback.
    println!("cargo:rustc-link-arg-cdylib=-Wl,-rpath,$ORIGIN/../torch/lib");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        let lib = std::fs::canonicalize(&lib).unwrap_or_else(|_| lib.into());
        println!("cargo:rustc-link-arg-examples=-Wl,-rpath,{}", lib.display());
    }
}
