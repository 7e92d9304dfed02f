//! Refuses to build without the model file, so that `partialconv`'s `bundled-model` feature
//! never yields a library that has no model.
fn main() {
    let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("default.int8.safetensors");
    println!("cargo:rerun-if-changed={}", model.display());
    if !model.is_file() {
        panic!(
            "\n\npartialconv-model: the bundled model {} is missing.\n\
             `make model` in the partialconv repository makes it from models/default.safetensors, \
             and the published crate carries it. To build partialconv without a bundled model, \
             depend on it with `default-features = false` and name a model file at run time.\n",
            model.display()
        );
    }
}
