#!/usr/bin/env bash
# The crates as crates.io would get them, used as a new project would use them: the
# pre-publish recipe of docs/library.md, step by step.
#   1. `cargo package` every crate meant for crates.io, and check each `.crate` against
#      crates.io's 10 MiB limit, and that the model travels in partialconv-model.
#   2. Copy examples/consumer out of the repository (so no workspace setting reaches it),
#      unpack the crates beside it, and build it with libtorch found as the doc says.
#   3. Its `predict` must write the same bytes as `partialconv predict`; its `finetune` must
#      fine-tune the bundled model.
# Packaging does not verify partialconv, partialconv-model or torch-pickle on its own: the
# consumer's build is that verification. The CLI and history-sink, which the consumer does
# not use, are verified by `cargo package` in its throwaway workspace.
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
cargo package --workspace --exclude server-example --no-verify --allow-dirty -q
cargo package -p history-sink -p partialconv-cli --allow-dirty -q

for name in "${PUBLISHED[@]}"; do
    crate=$TARGET/package/$name-$VERSION.crate
    size=$(stat -c %s "$crate")
    echo "$name-$VERSION.crate: $size bytes"
    if ((size > LIMIT)); then
        echo "error: $crate is $size bytes, over crates.io's limit of $LIMIT" >&2
        exit 1
    fi
done
tar -tzf "$TARGET/package/partialconv-model-$VERSION.crate" |
    grep -qx "partialconv-model-$VERSION/default.int8.safetensors" ||
    { echo "error: partialconv-model's crate has no model" >&2; exit 1; }
tar -xzOf "$TARGET/package/partialconv-$VERSION.crate" "partialconv-$VERSION/Cargo.toml" |
    grep -q '^\[dependencies.partialconv-model\]' ||
    { echo "error: the packaged partialconv does not depend on partialconv-model" >&2; exit 1; }

step "examples/consumer, outside the repository, against the unpacked crates"
WORK=$CACHE/consumer
rm -rf "$WORK/src" "$WORK/packages"
mkdir -p "$WORK/packages"
cp -r examples/consumer/. "$WORK/"
for name in partialconv partialconv-model torch-pickle; do
    tar -xzf "$TARGET/package/$name-$VERSION.crate" -C "$WORK/packages"
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
cargo build -q -p partialconv-cli
env -u PARTIALCONV_MODEL "$BIN/predict" docs/img/sample.jpg docs/img/sample_mask.png "$OUT/consumer.png"
env -u PARTIALCONV_MODEL "$TARGET/debug/partialconv" predict --image docs/img/sample.jpg \
    --mask docs/img/sample_mask.png --output "$OUT/cli.png"
cmp "$OUT/consumer.png" "$OUT/cli.png"
echo "consumer.png and cli.png are identical ($(stat -c %s "$OUT/cli.png") bytes)"

step "the consumer's finetune, two steps from the bundled model"
mkdir -p "$OUT/photos"
for i in 1 2 3; do cp docs/img/sample.jpg "$OUT/photos/p$i.jpg"; done
"$BIN/finetune" "$OUT/photos" "$OUT/tuned.safetensors" 2
"$TARGET/debug/partialconv" info --model "$OUT/tuned.safetensors" >/dev/null
echo "tuned.safetensors loads"

step "docs/library.md quotes the consumer's files as they are"
"$VENV/bin/python" scripts/check_doc_quotes.py docs/library.md
