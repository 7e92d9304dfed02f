"""Write a checkpoint with the seed model's architecture (layer_size 7, width 64, 25.8M
parameters, the public reimplementation's key names) and random weights, in the 2018 legacy
torch.save format, as `{'n_iter', 'model', 'optimizer'}`. Used by the benchmarks, which need
the seed architecture but not its (unavailable) trained weights.

Usage: make_seed_like.py OUT.pth
"""
import sys

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from pconv_reference import PConvUNet  # noqa: E402

torch.manual_seed(0)
model = PConvUNet(layer_size=7, input_channels=3, width=64)
opt = torch.optim.Adam(model.parameters(), lr=2e-4)
torch.save({"n_iter": 1000000, "model": model.state_dict(), "optimizer": opt.state_dict()},
           sys.argv[1], _use_new_zipfile_serialization=False)
