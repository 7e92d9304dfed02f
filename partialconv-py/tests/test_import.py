"""`import torch` and `import partialconv` in either order, one libtorch in the process."""

import subprocess
import sys

import pytest

CHECK = """
import {first}, {second}
import numpy as np, partialconv, torch
assert partialconv.__version__
# Both use the same libtorch: every mapped libtorch_cpu.so is torch's own.
import os
lib = os.path.realpath(os.path.join(os.path.dirname(torch.__file__), "lib"))
maps = {{line.split()[-1] for line in open("/proc/self/maps") if "libtorch_cpu" in line}}
assert maps and all(os.path.dirname(os.path.realpath(m)) == lib for m in maps), maps
print(torch.ones(2).sum().item())
"""


@pytest.mark.parametrize("first, second", [("torch", "partialconv"), ("partialconv", "torch")])
def test_import_order(first, second):
    done = subprocess.run(
        [sys.executable, "-c", CHECK.format(first=first, second=second)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "2.0"


def test_public_names():
    import partialconv

    assert set(partialconv.__all__) == {
        "FineTuner", "Inpainter", "Progress", "__version__", "import_checkpoint",
    }  # fmt: skip
    assert partialconv.Inpainter.__module__ == "partialconv"
