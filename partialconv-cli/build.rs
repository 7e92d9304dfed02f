//! Puts libtorch's folder, as `partialconv`'s build found it, into this crate's binaries'
//! rpath, so they run without LD_LIBRARY_PATH: the recipe of docs/library.md.
fn main() {
    let arg = std::env::var("DEP_PARTIALCONV_LINK_ARG").expect("set by partialconv's build.rs");
    println!("cargo:rustc-link-arg={arg}");
}
