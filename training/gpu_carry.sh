#!/usr/bin/env bash
# Fills `.carry/` (git-ignored) with what training/gpu_train.sh needs on a remote GPU machine,
# within the 64 MiB that travel there beside the repository: the release CLI, stripped; the
# photos at a 512-pixel short side (the scale training and evaluation use anyway), as JPEG;
# the VGG19 features in fp16.
# Needs `make setup`, `training/fetch_photos.py` and `tests/reference/make_vgg_fixture.py`.
set -euo pipefail
CACHE=${CACHE:-$HOME/.cache/partialconv}
BIN=${BIN:-${CARGO_TARGET_DIR:-$CACHE/target}/release/partialconv}
rm -rf .carry; mkdir -p .carry
cp "$BIN" .carry/partialconv && strip .carry/partialconv
[ -f "$CACHE/vgg19_pool3.safetensors" ] ||
  "$BIN" import-vgg "$CACHE/vgg/vgg19_q.bin" "$CACHE/vgg19_pool3.safetensors"
# fp16 halves it; the loader widens to fp32 (the weights are 256 k-means values a layer anyway).
.venv/bin/python -c "
import sys, torch; from safetensors.torch import load_file, save_file
save_file({k: v.half() for k, v in load_file(sys.argv[1]).items()}, sys.argv[2])
" "$CACHE/vgg19_pool3.safetensors" .carry/vgg19_pool3.safetensors
.venv/bin/python - "$CACHE/photos" .carry/photos <<'EOF'
import os, sys
from PIL import Image
src, dst = sys.argv[1:]
for split in ["train", "val", "interiors/train", "interiors/val"]:
    os.makedirs(os.path.join(dst, split))
    for name in sorted(os.listdir(os.path.join(src, split))):
        img = Image.open(os.path.join(src, split, name)).convert("RGB")
        scale = 512 / min(img.size)
        if scale < 1:
            img = img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS)
        img.save(os.path.join(dst, split, os.path.splitext(name)[0] + ".jpg"), quality=85)
EOF
du -sh .carry .carry/*
