"""Per-output-channel symmetric int8 quantisation of a real checkpoint, computed in numpy.

Usage:  ~/.cache/partialconv/venv/bin/python tests/reference/make_quant_fixture.py OUTDIR

Reads OUTDIR/naoto_zip.pth (written by make_checkpoints.py) and writes
OUTDIR/quant_expected.safetensors with, for every convolution weight W[o, i, kh, kw] of its
model, under our name for it (`enc_1.conv.weight` for `enc_1.conv.input_conv.weight`):

  <name>          int8    q = clip(rint(W / s[o]), -127, 127)   (round half to even)
  <name>.scale    float32 s[o] = max |W[o]| / 127                (0 for an all-zero channel,
                                                                  whose q is 0)
  <name>.dequant  float32 q * s[o], what a loader must hand the network

all in float32 arithmetic, as the Rust side computes it; `partialconv/tests/quant.rs` checks
that `Model::save(.., Storage::Int8)` writes exactly these bytes and that loading the file
gives exactly the dequantised weights.
"""

import os
import sys

import numpy as np
import torch
from safetensors.numpy import save_file


def quantize(w):
    w = w.astype(np.float32)
    scale = (np.abs(w).reshape(w.shape[0], -1).max(axis=1) / np.float32(127)).astype(np.float32)
    divisor = np.where(scale > 0, scale, np.float32(1)).reshape(-1, 1, 1, 1)
    q = np.clip(np.rint(w / divisor), -127, 127).astype(np.int8)
    return q, scale, (q.astype(np.float32) * scale.reshape(-1, 1, 1, 1)).astype(np.float32)


def main(outdir):
    ckpt = torch.load(os.path.join(outdir, "naoto_zip.pth"), map_location="cpu", weights_only=True)
    out = {}
    for key, t in ckpt["model"].items():
        if ".mask_conv." in key or t.dim() != 4:
            continue
        name = key.replace(".conv.input_conv.", ".conv.")
        w = t.numpy().copy()
        if name == "enc_2.conv.weight":
            w[5] = 0.0  # an all-zero output channel: scale 0, and no division by it
        q, scale, deq = quantize(w)
        out[name] = q
        out[name + ".scale"] = scale
        out[name + ".dequant"] = deq
        out[name + ".input"] = w
    assert out, "no convolution weights in naoto_zip.pth"
    save_file(out, os.path.join(outdir, "quant_expected.safetensors"))


if __name__ == "__main__":
    main(sys.argv[1])
