"""Shared fixtures: tiny photos, a tiny model trained on them, and the CLI to compare with.

Nothing here depends on the bundled model: the model is a width-4, 4-level network trained
for two steps, so the tests are about the bindings, not about inpainting quality.
"""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import partialconv

REPO = Path(__file__).resolve().parents[2]


def make_photo(h, w, seed, channels=3):
    """A smooth pattern plus noise: something a model has to fill, deterministic per seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    planes = [
        (x * (seed % 5 + 1) + y) % 256,
        (y * 3 + seed * 20) % 256,
        ((x + y) * 2 + seed) % 256,
        np.full((h, w), 255),
    ]
    img = np.stack(planes[:channels], -1) + rng.integers(-20, 21, (h, w, channels))
    if channels == 4:
        img[..., 3] = rng.integers(0, 256, (h, w))  # a real alpha channel, kept as is
    return np.clip(img, 0, 255).astype(np.uint8)


def make_holes(h, w, boxes):
    """bool H×W, True inside each `(y0, y1, x0, x1)` box."""
    m = np.zeros((h, w), bool)
    for y0, y1, x0, x1 in boxes:
        m[y0:y1, x0:x1] = True
    return m


@pytest.fixture(scope="session")
def photos(tmp_path_factory):
    """Eight 96×96 PNG photos (the trainer holds every 7th out for validation)."""
    d = tmp_path_factory.mktemp("photos")
    for i in range(8):
        Image.fromarray(make_photo(96, 96, i)).save(d / f"p{i}.png")
    return d


TINY = dict(
    width=4,
    layer_size=4,
    train_size=64,
    photo_side=64,
    batch_size=2,
    val_size=64,
    max_val_images=1,
    loader_threads=1,
)


@pytest.fixture(scope="session")
def tiny_model(photos, tmp_path_factory):
    """A two-step model: random weights moved a little, so outputs are not trivial."""
    out = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    partialconv.FineTuner(photos, out, steps=2, **TINY).run()
    return out


@pytest.fixture(scope="session")
def inpainter(tiny_model):
    return partialconv.Inpainter.load(tiny_model)


@pytest.fixture(scope="session")
def cli():
    """The `partialconv` executable: $PARTIALCONV_CLI, else built with cargo (a no-op when
    it is up to date; it shares the target folder with the extension)."""
    if os.environ.get("PARTIALCONV_CLI"):
        return Path(os.environ["PARTIALCONV_CLI"])
    cmd = [
        "cargo", "build", "--release", "--message-format=json",
        "--manifest-path", str(REPO / "partialconv-cli" / "Cargo.toml"),
        "-p", "partialconv-cli", "--bin", "partialconv",
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    for line in done.stdout.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg.get("executable"):
            return Path(msg["executable"])
    pytest.fail("cargo built no partialconv executable")


def run_cli(cli, *args):
    """(exit code, stderr) of one CLI run."""
    done = subprocess.run([str(cli), *map(str, args)], capture_output=True, text=True)
    return done.returncode, done.stderr
