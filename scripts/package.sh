#!/usr/bin/env bash
# The crates as crates.io would get them, used as a new project would use them: the
# pre-publish recipe of docs/library.md, step by step.
#   1. `cargo package` every crate meant for crates.io, and check each `.crate` against
#      crates.io's 10 MiB limit, and that the model travels in partialconv-model.
#   2. Copy examples/consumer out of the repository (so no workspace setting reaches it),
#      unpack the crates beside it, and build it with libtorch found as the doc says.
#   3. Its `predict` must write the same bytes as `partialconv predict`; its `finetune` must
#      fine-tune the bundled model.
# `cargo package` verifies every crate by building it from its package in a throwaway
# workspace; the consumer then proves that another project builds and runs on them.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE=${CACHE:-$HOME/.cache/partialconv}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
VENV=${VENV:-$CACHE/venv}
LIMIT=10485760
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
PUBLISHED=(partialconv partialconv-model torch-pickle history-sink partialconv-cli)

step() { echo "== $* ($(date +%T))"; }

step "cargo package --workspace --exclude server-example"
# Verifying a crate that depends on another of ours goes through a local registry, whose
# crates cargo unpacks once per version under $CARGO_HOME/registry/src/-<hash>/ and never
# again: after a change without a version bump it would build the last run's sources.
for name in "${PUBLISHED[@]}"; do
    rm -rf "${CARGO_HOME:-$HOME/.cargo}"/registry/src/-*/"$name-$VERSION" \
        "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/-*/"$name-$VERSION.crate"
done
# One invocation, so that the crates' dependencies on each other resolve to the packages
# themselves (a local registry) rather than to crates.io, where they are not yet.
cargo package --workspace --exclude server-example --allow-dirty

for name in "${PUBLISHED[@]}"; do
    crate=$TARGET/package/$name-$VERSION.crate
    size=$(stat -c %s "$crate")
    echo "$name-$VERSION.crate: $size bytes"
    if ((size > LIMIT)); then
        echo "error: $crate is $size bytes, over crates.io's limit of $LIMIT" >&2
        exit 1
    fi
done
# (Listed into a variable first: `grep -q` would stop reading early, and pipefail would
# count tar's broken pipe as a failure.)
files=$(tar -tzf "$TARGET/package/partialconv-model-$VERSION.crate")
grep -qx "partialconv-model-$VERSION/default.int8.safetensors" <<<"$files" ||
    { echo "error: partialconv-model's crate has no model" >&2; exit 1; }
manifest=$(tar -xzOf "$TARGET/package/partialconv-$VERSION.crate" "partialconv-$VERSION/Cargo.toml")
grep -q '^\[dependencies.partialconv-model\]' <<<"$manifest" ||
    { echo "error: the packaged partialconv does not depend on partialconv-model" >&2; exit 1; }

step "examples/consumer, outside the repository, against the unpacked crates"
WORK=$CACHE/consumer
rm -rf "$WORK/src" "$WORK/packages"
mkdir -p "$WORK/packages"
cp -r examples/consumer/. "$WORK/"
# `cargo package` stamps every file with one fixed date, so the consumer's cached build could
# not tell that a crate changed since its last run: a changed crate's files are stamped now.
mkdir -p "$WORK/.crate-sums"
for name in partialconv partialconv-model torch-pickle; do
    crate=$TARGET/package/$name-$VERSION.crate
    tar -xzf "$crate" -C "$WORK/packages"
    sum=$(sha256sum "$crate" | cut -d' ' -f1)
    if [[ "$(cat "$WORK/.crate-sums/$name" 2>/dev/null)" != "$sum" ]]; then
        find "$WORK/packages/$name-$VERSION" -type f -exec touch {} +
        echo "$sum" >"$WORK/.crate-sums/$name"
    fi
done
# libtorch from the torch wheel, as docs/library.md says: torch-sys asks this Python.
(
    cd "$WORK"
    export LIBTORCH_USE_PYTORCH=1 PATH=$VENV/bin:$PATH CARGO_TARGET_DIR=$CACHE/target-consumer
    unset LIBTORCH LIBTORCH_CXX11_ABI
    cargo build --release --locked
)
BIN=$CACHE/target-consumer/release

step "the consumer's predict against the CLI's"
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
# The CLI as `make test-rust` built it (all features, so no rebuild when it already ran).
cargo build -q --workspace --all-features --bin partialconv
env -u PARTIALCONV_MODEL "$BIN/predict" docs/img/sample.jpg docs/img/sample_mask.png "$OUT/consumer.png"
env -u PARTIALCONV_MODEL "$TARGET/debug/partialconv" predict --image docs/img/sample.jpg \
    --mask docs/img/sample_mask.png --output "$OUT/cli.png"
cmp "$OUT/consumer.png" "$OUT/cli.png"
echo "consumer.png and cli.png are identical ($(stat -c %s "$OUT/cli.png") bytes)"

step "the consumer's finetune, two steps from the bundled model"
mkdir -p "$OUT/photos"
# Eight photos: the eighth's slot (every 7th) is held out, so the run validates too.
for i in 1 2 3 4 5 6 7 8; do cp docs/img/sample.jpg "$OUT/photos/p$i.jpg"; done
"$BIN/finetune" "$OUT/photos" "$OUT/tuned.safetensors" 2
info=$("$TARGET/debug/partialconv" info "$OUT/tuned.safetensors")
grep -q '"steps": 2' <<<"$info" ||
    { echo "error: the fine-tuned model does not record its 2 steps" >&2; exit 1; }
echo "tuned.safetensors loads, and records its 2 steps"

step "docs/library.md quotes the consumer's files as they are"
"$VENV/bin/python" scripts/check_doc_quotes.py docs/library.md
