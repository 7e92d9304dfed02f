fn main() {
    // libtorch's folder, as partialconv's build found it, into this binary's rpath.
    let arg = std::env::var("DEP_PARTIALCONV_LINK_ARG").unwrap();
    println!("cargo:rustc-link-arg={arg}");
}
