"""`import torch` and `import partialconv` in either order, one libtorch in the process."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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


def test_a_torch_of_another_series_is_refused_naming_both_versions(tmp_path):
    # A stub `torch` first on the path: the check must run before the extension loads.
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text('__version__ = "2.10.1+cpu"\n')
    done = subprocess.run(
        [sys.executable, "-c", "import partialconv"],
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError:"), done.stderr
    assert "2.10.1+cpu" in last and "torch 2.11.x" in last, last


def test_the_torch_series_matches_the_requirement():
    import partialconv

    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    series = partialconv._TORCH_SERIES
    major, minor = series.split(".")
    assert f'"torch>={series},<{major}.{int(minor) + 1}"' in pyproject
    assert partialconv._series(torch.__version__) == series


def test_the_package_under_test_is_the_installed_one():
    # `make test-python` installs the wheel into a fresh environment and names it here, so
    # that the suite never runs against the source tree by accident.
    import partialconv

    prefix = os.environ.get("PARTIALCONV_EXPECT_INSTALLED")
    if not prefix:
        pytest.skip("PARTIALCONV_EXPECT_INSTALLED is not set (not the wheel run)")
    where = Path(partialconv.__file__).resolve()
    assert where.is_relative_to(Path(prefix).resolve()), where
    assert Path(partialconv._partialconv.__file__).resolve().is_relative_to(where.parent)
