"""Every bad input raises the documented exception, with the CLI's message where the CLI
can be given the same input."""

import numpy as np
import pytest
from PIL import Image

import partialconv
from conftest import make_holes, make_photo, run_cli


@pytest.fixture
def pair(tmp_path):
    img = make_photo(40, 50, 1)
    holes = make_holes(40, 50, [(10, 20, 10, 30)])
    Image.fromarray(img).save(tmp_path / "image.png")
    Image.fromarray(holes).save(tmp_path / "mask.png")
    Image.fromarray(make_holes(30, 50, [(1, 5, 1, 5)])).save(tmp_path / "small_mask.png")
    (tmp_path / "notes.txt").write_text("not an image")
    return img, holes, tmp_path


def cli_error(cli, *args):
    code, err = run_cli(cli, *args)
    assert code == 2, err
    assert err.startswith("error: "), err
    return err.strip().splitlines()[-1][len("error: ") :]


@pytest.mark.parametrize(
    "image, mask, exc",
    [
        ("missing.png", "mask.png", FileNotFoundError),
        ("image.png", "missing.png", FileNotFoundError),
        ("notes.txt", "mask.png", ValueError),
        ("image.png", "notes.txt", ValueError),
        ("image.png", "small_mask.png", ValueError),
    ],
)
def test_file_errors_match_cli(cli, inpainter, tiny_model, pair, image, mask, exc):
    _, _, d = pair
    with pytest.raises(exc) as info:
        inpainter.predict(d / image, d / mask)
    expected = cli_error(
        cli, "predict", "--image", d / image, "--mask", d / mask,
        "--output", d / "out.png", "--model", tiny_model,
    )  # fmt: skip
    if mask == "small_mask.png":
        # The same error; each front end adds its own way out.
        cli_hint, py_hint = "(use --resize-mask to scale it)", "(pass resize_mask=True to scale it)"
        assert expected.endswith(cli_hint), expected
        expected = expected[: -len(cli_hint)] + py_hint
    assert str(info.value) == expected


def test_model_errors_match_cli(cli, pair, tmp_path):
    _, _, d = pair
    for path, exc in [(d / "missing.safetensors", FileNotFoundError), (d / "image.png", ValueError)]:
        with pytest.raises(exc) as info:
            partialconv.Inpainter.load(path)
        assert str(info.value) == cli_error(cli, "info", path)


def test_bad_strategy(inpainter, pair, cli, tiny_model):
    img, holes, d = pair
    for strategy in ["fast", "resize:8", "resize:x", ""]:
        with pytest.raises(ValueError, match="unknown strategy") as info:
            inpainter.predict(img, holes, strategy=strategy)
        code, err = run_cli(
            cli, "predict", "--image", d / "image.png", "--mask", d / "mask.png",
            "--output", d / "out.png", "--model", tiny_model, "--strategy", strategy,
        )  # fmt: skip
        assert code == 2 and str(info.value) in err  # clap wraps the core's message
    with pytest.raises(TypeError):
        inpainter.predict(img, holes, strategy=512)


def test_bad_device(tiny_model):
    with pytest.raises(ValueError, match="expected auto, cpu, cuda or cuda:N"):
        partialconv.Inpainter.load(tiny_model, device="tpu")
    import torch

    if torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"only \d+ CUDA device"):
            partialconv.Inpainter.load(tiny_model, device="cuda:99")
    else:
        with pytest.raises(ValueError, match="CUDA is not available"):
            partialconv.Inpainter.load(tiny_model, device="cuda")


@pytest.mark.parametrize(
    "image, match",
    [
        (np.zeros((8, 8, 3), np.float32), "must be uint8"),
        (np.zeros((8, 8, 3), np.int64), "must be uint8"),
        (np.zeros((8, 8, 5), np.uint8), "1, 2, 3 or 4 channels"),
        (np.zeros((8,), np.uint8), "must be H×W or H×W×C"),
        (np.zeros((1, 8, 8, 3), np.uint8), "must be H×W or H×W×C"),
    ],
)
def test_bad_image_arrays(inpainter, image, match):
    with pytest.raises(ValueError, match=match):
        inpainter.predict(image, np.zeros(image.shape[:2], bool))


@pytest.mark.parametrize(
    "mask, match",
    [
        (np.zeros((8, 8, 3), bool), "a bool mask must be H×W"),
        (np.zeros((8, 8), np.float64), "must be uint8"),
        (np.zeros((8, 9), bool), "mask is 9×8 but the image is 8×8"),
        (np.zeros((8, 9), np.uint8), r"pass resize_mask=True to scale it"),
    ],
)
def test_bad_masks(inpainter, mask, match):
    with pytest.raises(ValueError, match=match):
        inpainter.predict(np.zeros((8, 8, 3), np.uint8), mask)


def test_wrong_types(inpainter):
    img = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(TypeError, match="image must be"):
        inpainter.predict([[0, 0, 0]], np.zeros((8, 8), bool))
    with pytest.raises(TypeError, match="mask must be"):
        inpainter.predict(img, 0.5)
    with pytest.raises(TypeError):
        inpainter.predict_batch(img, 3)
    with pytest.raises(TypeError):
        partialconv.Inpainter()


def test_predict_batch_errors(inpainter):
    img = np.zeros((8, 8, 3), np.uint8)
    ok = np.zeros((8, 8), bool)
    with pytest.raises(ValueError, match="2 images but 1 masks"):
        inpainter.predict_batch([img, img], [ok])
    with pytest.raises(ValueError, match=r"^item 1: mask is 4×4 but the image is 8×8"):
        inpainter.predict_batch([img, img], [ok, np.zeros((4, 4), bool)])


def test_no_model(monkeypatch, tmp_path):
    monkeypatch.setenv("PARTIALCONV_MODEL", str(tmp_path / "gone.safetensors"))
    with pytest.raises(FileNotFoundError, match="gone.safetensors"):
        partialconv.Inpainter.load()
    monkeypatch.delenv("PARTIALCONV_MODEL")
    try:
        partialconv.Inpainter.load()
    except RuntimeError as e:
        assert str(e).startswith("no model: this build has no bundled model")
    # else: this build bundles a model, and loading it is right


def test_import_checkpoint_errors(pair, cli):
    _, _, d = pair
    for src, exc in [(d / "missing.pth", FileNotFoundError), (d / "notes.txt", ValueError)]:
        with pytest.raises(exc) as info:
            partialconv.import_checkpoint(src, d / "out.safetensors")
        assert str(info.value) == cli_error(cli, "import", src, d / "out.safetensors")


def test_finetuner_errors(tmp_path, photos):
    with pytest.raises(FileNotFoundError):
        partialconv.FineTuner(tmp_path / "no_such_dir", tmp_path / "m.safetensors")
    (tmp_path / "one").mkdir()
    Image.fromarray(make_photo(64, 64, 0)).save(tmp_path / "one" / "a.png")
    with pytest.raises(ValueError, match="training needs at least 2"):
        partialconv.FineTuner(tmp_path / "one", tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match="layer_size"):
        partialconv.FineTuner(photos, tmp_path / "m.safetensors", layer_size=2, width=4)
    with pytest.raises(TypeError):
        partialconv.FineTuner(photos, tmp_path / "m.safetensors", 100)  # keywords only
