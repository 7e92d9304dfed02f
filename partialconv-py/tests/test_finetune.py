"""Fine-tuning from Python: the callback sees every step; stopping and errors keep a
checkpoint; the result loads."""

import math

import numpy as np
import pytest

import partialconv
from conftest import TINY, make_holes, make_photo


def test_smoke_run_calls_callback(photos, tmp_path):
    out = tmp_path / "m.safetensors"
    tuner = partialconv.FineTuner(photos, out, steps=4, val_every=2, **TINY)
    assert tuner.step == 0 and tuner.skipped_images == 0
    assert tuner.out == out and tuner.run_dir == tmp_path / "m.safetensors.run"
    seen = []

    def callback(p):
        assert tuner.step == p.step  # readable from inside the callback
        seen.append(p)

    summary = tuner.run(callback=callback)
    assert [p.step for p in seen] == [1, 2, 3, 4]
    assert all(p.total == 4 and math.isfinite(p.loss) and p.loss > 0 for p in seen)
    assert set(seen[0].terms) == {"valid", "hole", "perceptual", "style", "tv"}
    assert seen[0].stage == 1 and seen[-1].stage == 2  # stage 2 for the last quarter
    assert seen[-1].elapsed >= seen[0].elapsed >= 0 and seen[0].eta >= 0
    assert [p.metrics is not None for p in seen] == [False, True, False, True]
    m = seen[1].metrics
    assert len(m["buckets"]) == 5 and m["buckets"][0]["hole_ratio"] == (0.01, 0.1)
    assert math.isfinite(m["mean_psnr"]) and m["buckets"][0]["count"] == 1
    assert "Progress(step=1, total=4" in repr(seen[0])
    assert summary["steps"] == 4 and not summary["stopped"]
    assert summary["final_loss"] == seen[-1].loss
    assert summary["metrics"] == seen[-1].metrics
    assert tuner.step == 4
    inpainter = partialconv.Inpainter.load(out)
    img = make_photo(64, 64, 1)
    assert inpainter.predict(img, make_holes(64, 64, [(8, 40, 8, 40)])).shape == (64, 64, 3)


def test_callback_returning_false_stops_and_resumes(photos, tmp_path):
    out = tmp_path / "m.safetensors"
    tuner = partialconv.FineTuner(photos, out, steps=5, **TINY)
    summary = tuner.run(lambda p: p.step < 2)
    assert summary["stopped"] and summary["steps"] == 2
    assert (tuner.run_dir / "checkpoint.safetensors").exists() and not out.exists()
    # A new FineTuner on the same run folder resumes from the checkpoint.
    resumed = partialconv.FineTuner(photos, out, steps=5, **TINY)
    assert resumed.step == 2
    steps = []
    assert resumed.run(lambda p: steps.append(p.step))["steps"] == 5
    assert steps == [3, 4, 5] and out.exists()


def test_callback_exception_propagates(photos, tmp_path):
    tuner = partialconv.FineTuner(photos, tmp_path / "m.safetensors", steps=5, **TINY)

    def callback(p):
        if p.step == 3:
            raise KeyError("from the callback")

    with pytest.raises(KeyError, match="from the callback"):
        tuner.run(callback)
    assert tuner.step == 3
    assert (tuner.run_dir / "checkpoint.safetensors").exists()


def test_run_is_not_reentrant(photos, tmp_path):
    tuner = partialconv.FineTuner(photos, tmp_path / "m.safetensors", steps=2, **TINY)

    def callback(p):
        tuner.run()

    with pytest.raises(RuntimeError, match="already running"):
        tuner.run(callback)


def test_import_checkpoint_matches_cli(cli, tmp_path):
    """A state dict of the public PyTorch reimplementation, imported by both."""
    import sys

    import torch

    from conftest import REPO, run_cli

    sys.path.insert(0, str(REPO / "tests" / "reference"))
    import pconv_reference as ref

    torch.manual_seed(0)
    model = ref.PConvUNet(4, 3, 4, "unscaled")
    src = tmp_path / "seed.pth"
    torch.save({"model": model.state_dict(), "n_iter": 7}, src)
    partialconv.import_checkpoint(src, tmp_path / "py.safetensors")
    code, err = run_cli(cli, "import", src, tmp_path / "cli.safetensors")
    assert code == 0, err
    assert (tmp_path / "py.safetensors").read_bytes() == (tmp_path / "cli.safetensors").read_bytes()
    partialconv.import_checkpoint(src, tmp_path / "half.safetensors", half=True)
    sizes = [(tmp_path / f).stat().st_size for f in ("half.safetensors", "py.safetensors")]
    assert sizes[0] < sizes[1]
    inpainter = partialconv.Inpainter.load(tmp_path / "py.safetensors")
    img = make_photo(32, 32, 3)
    out = inpainter.predict(img, make_holes(32, 32, [(4, 20, 4, 20)]))
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8


def test_loss_weights_snapshots_and_bf16_reach_the_trainer(photos, tmp_path):
    seen = []
    no_hole = partialconv.FineTuner(
        photos, tmp_path / "a.safetensors", steps=2, hole_weight=0, hole_mse_weight=0, **TINY
    )
    no_hole.run(seen.append)
    assert all(p.terms["hole"] == 0 and p.terms["valid"] > 0 for p in seen)
    seen.clear()
    out = tmp_path / "b.safetensors"
    tuner = partialconv.FineTuner(
        photos, out, steps=2, hole_weight=0, hole_mse_weight=12, snapshot_every=1, bf16=True, **TINY
    )
    tuner.run(seen.append)
    assert all(p.terms["hole"] > 0 and math.isfinite(p.loss) for p in seen)
    snapshots = sorted(p.name for p in (tuner.run_dir / "snapshots").iterdir())
    assert snapshots == ["step-0000001.safetensors", "step-0000002.safetensors"]
    assert partialconv.Inpainter.load(out) is not None
