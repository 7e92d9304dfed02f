//! Where the extension and the bench example find libtorch at run time.
fn main() {
    // The wheel installs next to `torch/` in site-packages, and the build environment's
    // libtorch (pip's isolated one) is gone by then, so the extension's rpath is relative.
    // `partialconv/__init__.py` imports torch first anyway; this is the fallback.
    println!("cargo:rustc-link-arg-cdylib=-Wl,-rpath,$ORIGIN/../torch/lib");
    // The example is run from the build tree: libtorch where partialconv's build found it.
    let arg = std::env::var("DEP_PARTIALCONV_LINK_ARG").expect("set by partialconv's build.rs");
    println!("cargo:rustc-link-arg-examples={arg}");
}
