"""Predictions: bit-identical to the CLI, the same whatever form the inputs take."""

import numpy as np
import pytest
from PIL import Image

import partialconv

from conftest import make_holes, make_photo, run_cli

# (height, width, hole boxes): odd sizes exercise padding; one small hole in a larger image
# makes `auto` crop.
CASES = {
    "small": (80, 100, [(20, 45, 30, 70), (60, 70, 5, 20)]),
    "large_small_hole": (200, 260, [(90, 110, 120, 150)]),
}


def save_pair(tmp_path, h, w, boxes, seed=1, channels=3):
    img = make_photo(h, w, seed, channels)
    holes = make_holes(h, w, boxes)
    Image.fromarray(img).save(tmp_path / "image.png")
    Image.fromarray(holes.astype(np.uint8) * 255).save(tmp_path / "mask.png")
    return img, holes


def cli_predict(cli, tmp_path, model, strategy, *extra, image="image.png", mask="mask.png"):
    out = tmp_path / f"cli_{strategy.replace(':', '_')}.png"
    code, err = run_cli(
        cli, "predict", "--image", tmp_path / image, "--mask", tmp_path / mask,
        "--output", out, "--model", model, "--strategy", strategy, *extra,
    )  # fmt: skip
    assert code == 0, err
    return np.asarray(Image.open(out))


@pytest.mark.parametrize(
    "case, strategy",
    [
        ("small", "auto"),
        ("small", "original"),
        ("small", "resize:48"),
        ("small", "crop"),
        ("large_small_hole", "auto"),
        ("large_small_hole", "resize"),
    ],
)
def test_bit_identical_to_cli(cli, inpainter, tiny_model, tmp_path, case, strategy):
    h, w, boxes = CASES[case]
    img, holes = save_pair(tmp_path, h, w, boxes)
    expected = cli_predict(cli, tmp_path, tiny_model, strategy)
    assert expected.shape == (h, w, 3)
    for image, mask in [
        (img, holes),
        (Image.open(tmp_path / "image.png"), Image.open(tmp_path / "mask.png")),
        (tmp_path / "image.png", str(tmp_path / "mask.png")),
    ]:
        got = inpainter.predict(image, mask, strategy=strategy)
        assert got.dtype == np.uint8 and got.shape == (h, w, 3)
        np.testing.assert_array_equal(got, expected)
    # The model did fill something, and nothing else.
    assert (expected[holes] != img[holes]).any()
    np.testing.assert_array_equal(expected[~holes], img[~holes])


def test_rgba_brush_layer_bit_identical_to_cli(cli, inpainter, tiny_model, tmp_path):
    """RGBA image (alpha kept) and an RGBA brush-layer mask (alpha ≥ 1 = hole)."""
    h, w = 64, 72
    img = make_photo(h, w, 3, channels=4)
    Image.fromarray(img).save(tmp_path / "image.png")
    brush = np.zeros((h, w, 4), np.uint8)
    brush[10:30, 20:50] = (255, 0, 0, 1)  # faint but non-zero alpha: still a hole
    Image.fromarray(brush).save(tmp_path / "mask.png")
    expected = cli_predict(cli, tmp_path, tiny_model, "auto")
    assert expected.shape == (h, w, 4)
    np.testing.assert_array_equal(expected[..., 3], img[..., 3])
    for image, mask in [
        (img, brush),
        (Image.open(tmp_path / "image.png"), Image.open(tmp_path / "mask.png")),
        (img, make_holes(h, w, [(10, 30, 20, 50)])),
    ]:
        np.testing.assert_array_equal(inpainter.predict(image, mask), expected)


def test_grey_image_bit_identical_to_cli(cli, inpainter, tiny_model, tmp_path):
    h, w = 50, 70
    grey = make_photo(h, w, 5)[..., 0]
    Image.fromarray(grey).save(tmp_path / "image.png")
    Image.fromarray(make_holes(h, w, [(10, 30, 10, 40)]).astype(np.uint8) * 255).save(
        tmp_path / "mask.png"
    )
    expected = cli_predict(cli, tmp_path, tiny_model, "original")
    for image in [grey, Image.open(tmp_path / "image.png")]:
        got = inpainter.predict(image, tmp_path / "mask.png", strategy="original")
        assert got.shape == (h, w, 3)
        np.testing.assert_array_equal(got, expected)


def test_mask_forms_agree(inpainter):
    h, w = 48, 64
    img = make_photo(h, w, 7)
    holes = make_holes(h, w, [(5, 20, 10, 30), (30, 40, 40, 60)])
    u8 = np.where(holes, 200, 30).astype(np.uint8)
    rgb = np.repeat(u8[..., None], 3, axis=2)
    expected = inpainter.predict(img, holes)
    for mask in [
        u8,
        holes.astype(np.uint8) * 255,
        rgb,
        Image.fromarray(u8),  # L
        Image.fromarray(holes),  # mode "1": its array holds 255 for True
        (holes.astype(np.uint8) * 7).view(bool),  # numpy: any non-zero byte is True
        Image.fromarray(rgb),  # RGB: luma rule
        Image.fromarray(u8).convert("P"),  # palette, expanded
    ]:
        np.testing.assert_array_equal(inpainter.predict(img, mask), expected)


def test_mask_threshold_is_128(inpainter):
    h, w = 32, 32
    img = make_photo(h, w, 2)
    below = np.full((h, w), 127, np.uint8)
    np.testing.assert_array_equal(inpainter.predict(img, below), img)
    at = below.copy()
    at[8:16, 8:16] = 128
    np.testing.assert_array_equal(inpainter.predict(img, at), inpainter.predict(img, at >= 128))


def test_strided_and_readonly_arrays(inpainter):
    h, w = 40, 56
    big = make_photo(h, 2 * w, 4)
    img = big[:, ::2]  # not contiguous
    holes = make_holes(h, w, [(10, 25, 10, 30)])
    expected = inpainter.predict(np.ascontiguousarray(img), holes)
    np.testing.assert_array_equal(inpainter.predict(img, holes), expected)
    flipped = np.ascontiguousarray(img[::-1])[::-1]  # negative strides
    np.testing.assert_array_equal(inpainter.predict(flipped, holes[::-1][::-1]), expected)
    fortran = np.asfortranarray(img)
    fortran.setflags(write=False)
    np.testing.assert_array_equal(inpainter.predict(fortran, np.asfortranarray(holes)), expected)


def test_uint16_image_matches_16bit_png(inpainter, tmp_path):
    """uint16 arrays are what a 16-bit PNG decodes to; the core scales them to 8 bits."""
    h, w = 32, 40
    img16 = make_photo(h, w, 6).astype(np.uint16) * 257 + 3
    holes = make_holes(h, w, [(8, 20, 8, 30)])
    path = tmp_path / "img16.png"
    Image.fromarray(img16[..., 0]).save(path)  # PIL writes 16-bit grey ("I;16")
    from_file = inpainter.predict(path, holes)
    np.testing.assert_array_equal(inpainter.predict(img16[..., 0], holes), from_file)
    np.testing.assert_array_equal(inpainter.predict(Image.open(path), holes), from_file)


def test_empty_mask_returns_input(inpainter):
    img = make_photo(30, 30, 8)
    out = inpainter.predict(img, np.zeros((30, 30), bool))
    np.testing.assert_array_equal(out, img)
    assert out.flags.writeable and out.base is not img


def test_resize_mask(inpainter, cli, tiny_model, tmp_path):
    h, w = 64, 80
    img = make_photo(h, w, 9)
    Image.fromarray(img).save(tmp_path / "image.png")
    small = make_holes(h // 2, w // 2, [(5, 15, 10, 25)])
    Image.fromarray(small).save(tmp_path / "mask.png")
    code, err = run_cli(
        cli, "predict", "--image", tmp_path / "image.png", "--mask", tmp_path / "mask.png",
        "--output", tmp_path / "out.png", "--model", tiny_model, "--resize-mask",
    )  # fmt: skip
    assert code == 0, err
    expected = np.asarray(Image.open(tmp_path / "out.png"))
    np.testing.assert_array_equal(inpainter.predict(img, small, resize_mask=True), expected)


@pytest.mark.parametrize("grow", [3, -2])
def test_mask_grow_equals_the_cli(inpainter, cli, tiny_model, tmp_path, grow):
    img, holes = save_pair(tmp_path, 48, 64, [(16, 32, 20, 36)], seed=4)
    expected = cli_predict(cli, tmp_path, tiny_model, "auto", "--mask-grow", str(grow))
    got = inpainter.predict(img, holes, mask_grow=grow)
    np.testing.assert_array_equal(got, expected)
    # Grown, the pixel left of the box is filled; shrunk, the box's own first column is not.
    edge = (24, 18) if grow > 0 else (24, 20)
    assert (got[edge] != img[edge]).any() == (grow > 0)
    with pytest.raises(ValueError, match="mask_grow"):
        inpainter.predict(img, holes, mask_grow=17)


def test_predict_batch_equals_predict(inpainter):
    items = [
        (make_photo(48, 64, 10), make_holes(48, 64, [(5, 20, 5, 30)])),
        (make_photo(48, 64, 11), make_holes(48, 64, [(20, 40, 30, 60)])),  # same size
        (make_photo(40, 40, 12, channels=4), make_holes(40, 40, [(0, 10, 0, 10)])),
        (make_photo(40, 40, 13), np.zeros((40, 40), bool)),
    ]
    images, masks = zip(*items)
    for strategy in ["auto", "original"]:
        batch = inpainter.predict_batch(list(images), list(masks), strategy=strategy)
        assert len(batch) == len(items)
        for (img, holes), got in zip(items, batch):
            single = inpainter.predict(img, holes, strategy=strategy)
            assert got.shape == single.shape and got.dtype == single.dtype
            # Outside the holes both are the input, bit for bit. Inside, a batch may run other
            # convolution kernels (oneDNN blocks over N·H·W), so sums round differently and
            # a value can land one level apart after rounding to 8 bits.
            np.testing.assert_array_equal(got[~holes], single[~holes])
            diff = np.abs(got.astype(int) - single.astype(int))
            assert diff.max() <= 1, f"batched result differs by {diff.max()} levels"
    assert inpainter.predict_batch([], []) == []


def test_inpainter_attributes(inpainter):
    assert inpainter.device == "cpu"
    assert (inpainter.blend, inpainter.ensemble) == ("telea", "flips")
    assert repr(inpainter) == "Inpainter(device='cpu', layer_size=4, width=4)"


@pytest.mark.parametrize("blend", ["telea", "paste"])
@pytest.mark.parametrize("ensemble", ["single", "mirror", "flips"])
def test_blend_and_ensemble_bit_identical_to_cli(cli, tiny_model, tmp_path, blend, ensemble):
    h, w, boxes = 64, 80, [(8, 40, 10, 50)]
    img, holes = save_pair(tmp_path, h, w, boxes)
    extra = ["--blend", blend, "--ensemble", ensemble]
    expected = cli_predict(cli, tmp_path, tiny_model, "original", *extra)
    inpainter = partialconv.Inpainter.load(tiny_model, blend=blend, ensemble=ensemble)
    assert (inpainter.blend, inpainter.ensemble) == (blend, ensemble)
    np.testing.assert_array_equal(inpainter.predict(img, holes, strategy="original"), expected)


def test_blends_differ_and_unknown_blends_are_named(tiny_model):
    h, w = 64, 80
    img, holes = make_photo(h, w, 2), make_holes(h, w, [(8, 40, 10, 50)])
    telea = partialconv.Inpainter.load(tiny_model).predict(img, holes)
    paste = partialconv.Inpainter.load(tiny_model, blend="paste").predict(img, holes)
    assert (telea[holes] != paste[holes]).any()
    np.testing.assert_array_equal(telea[~holes], paste[~holes])
    with pytest.raises(ValueError, match="soft"):
        partialconv.Inpainter.load(tiny_model, blend="soft")
    with pytest.raises(ValueError, match="dihedral"):
        partialconv.Inpainter.load(tiny_model, ensemble="dihedral")


def test_bf16_equals_the_cli_at_the_same_precision(cli, tiny_model, tmp_path):
    img, holes = save_pair(tmp_path, 48, 64, [(10, 40, 16, 48)], seed=5)
    expected = cli_predict(cli, tmp_path, tiny_model, "auto", "--precision", "bf16")
    bf16 = partialconv.Inpainter.load(tiny_model, precision="bf16")
    assert bf16.precision == "bf16"
    got = bf16.predict(img, holes)
    np.testing.assert_array_equal(got, expected)
    # Explicitly fp32: the default, `auto`, is bf16 itself on a CPU with native bf16.
    fp32 = partialconv.Inpainter.load(tiny_model, precision="fp32").predict(img, holes)
    np.testing.assert_array_equal(got[~holes], fp32[~holes])
    with pytest.raises(ValueError, match="precision"):
        partialconv.Inpainter.load(tiny_model, precision="int4")
