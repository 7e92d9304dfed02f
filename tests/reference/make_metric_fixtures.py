"""Write reference fixtures for `partialconv::metrics` and `partialconv::telea`.

Usage:  ~/.cache/partialconv/venv/bin/python tests/reference/make_metric_fixtures.py [OUTDIR]
        (default OUTDIR: partialconv/tests/fixtures/metrics relative to the repo root)

        ~/.cache/partialconv/venv/bin/python tests/reference/make_metric_fixtures.py --random N DIR
        writes N random Telea cases (not committed; too big) for the ignored test
        `telea_matches_opencv_on_random_cases`:
            PARTIALCONV_TELEA_CASES=DIR cargo test --test metrics_reference -- --ignored

Deterministic (fixed seeds).  The expected values come from independent
implementations, not from the Rust code:

* PSNR / SSIM: scikit-image (`peak_signal_noise_ratio`, `structural_similarity`
  with channel_axis=2, data_range=255 and otherwise default arguments).
* mean L1: numpy, mean |a - b| over all pixels and channels in 0..255 units.
* Telea inpainting: OpenCV `cv2.inpaint(img, mask, radius, cv2.INPAINT_TELEA)`.

Files written (all PNG, 8-bit):
    img_<name>.png              base RGB images (natural images from skimage.data,
                                downscaled with INTER_AREA to 128x96) and their
                                degraded variants img_<name>_<variant>.png
    mask_<name>.png             inpainting masks (255 = hole), 128x96
    telea_<img>_<mask>_r<R>.png cv2 Telea output
    expected.json               {"versions": {...},
                                 "pairs": [{"a", "b", "psnr" (null = inf), "ssim", "l1"}],
                                 "telea": [{"image", "mask", "radius", "output", "hole_ratio"}]}
"""

import json
import os
import sys

import cv2
import numpy as np
import skimage
import skimage.data
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEFAULT_OUT = os.path.join(REPO, "partialconv", "tests", "fixtures", "metrics")
W, H = 128, 96


def fit(img, top, left, height, width):
    """Crop a 4:3 region and downscale it to W x H (area averaging keeps it natural)."""
    crop = img[top : top + height, left : left + width]
    return cv2.resize(crop, (W, H), interpolation=cv2.INTER_AREA)


def base_images():
    return {
        "astronaut": fit(skimage.data.astronaut(), 20, 0, 384, 512),
        "chelsea": fit(skimage.data.chelsea(), 0, 25, 300, 400),
        "coffee": fit(skimage.data.coffee(), 8, 44, 384, 512),
    }


def variants(img, rng):
    noisy = np.clip(img.astype(np.float64) + rng.normal(0, 8.0, img.shape), 0, 255)
    ok, jpg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 30])
    assert ok
    return {
        "noisy": np.round(noisy).astype(np.uint8),
        "blur": cv2.GaussianBlur(img, (5, 5), 1.2),
        "jpeg": cv2.imdecode(jpg, cv2.IMREAD_UNCHANGED),
    }


def masks(rng):
    out = {}

    m = np.zeros((H, W), np.uint8)
    m[38:62, 50:82] = 255
    out["center"] = m

    # Holes touching the image border exercise OpenCV's border clamping.
    m = np.zeros((H, W), np.uint8)
    m[0:18, 0:26] = 255
    m[70:96, 100:128] = 255
    out["corners"] = m

    m = np.zeros((H, W), np.uint8)
    m[0:4, :] = 255
    m[:, 124:128] = 255
    m[40:46, 0:60] = 255
    out["edges"] = m

    m = np.zeros((H, W), np.uint8)
    for _ in range(7):
        x0, y0 = int(rng.integers(-10, W + 10)), int(rng.integers(-10, H + 10))
        x1, y1 = int(rng.integers(-10, W + 10)), int(rng.integers(-10, H + 10))
        cv2.line(m, (x0, y0), (x1, y1), 255, int(rng.integers(2, 8)))
    out["strokes"] = m

    m = np.zeros((H, W), np.uint8)
    cv2.ellipse(m, (60, 50), (48, 34), 20, 0, 360, 255, -1)
    out["big"] = m

    m = np.zeros((H, W), np.uint8)
    for _ in range(40):
        c = (int(rng.integers(0, W)), int(rng.integers(0, H)))
        cv2.circle(m, c, int(rng.integers(0, 3)), 255, -1)
    out["dots"] = m
    return out


def save(path, arr):
    Image.fromarray(arr).save(path, optimize=True)


def random_cases(n, outdir):
    """Random sizes (1..139 and 512x512), noise / flat / natural images, stroke or
    salt-and-pepper masks with arbitrary non-zero values, fractional radii."""
    os.makedirs(outdir, exist_ok=True)
    rng = np.random.default_rng(7)
    srcs = [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee()]
    lines = []
    for i in range(n):
        h, w = (512, 512) if i < 4 else (int(rng.integers(1, 140)), int(rng.integers(1, 140)))
        kind = i % 3
        if kind == 0:
            img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        elif kind == 1:
            img = np.full((h, w, 3), rng.integers(0, 256, 3), np.uint8)
        else:
            img = cv2.resize(srcs[i % 3], (w, h), interpolation=cv2.INTER_AREA)
        m = np.zeros((h, w), np.uint8)
        for _ in range(int(rng.integers(1, 12))):
            x0, y0, x1, y1 = (int(v) for v in rng.integers(-20, max(h, w) + 20, 4))
            thick = int(rng.integers(1, max(2, min(h, w) // 4 + 2)))
            cv2.line(m, (x0, y0), (x1, y1), int(rng.integers(1, 256)), thick)
        if rng.random() < 0.2:
            m = (rng.random((h, w)) < rng.random()).astype(np.uint8) * 255
        radius = float(rng.choice([0.4, 1, 1.5, 2.5, 3, 4, 4.5, 5, 7, 10, 15]))
        out = cv2.inpaint(img, m, radius, cv2.INPAINT_TELEA)
        save(os.path.join(outdir, f"{i}_img.png"), img)
        save(os.path.join(outdir, f"{i}_mask.png"), m)
        save(os.path.join(outdir, f"{i}_out.png"), out)
        lines.append(f"{i} {radius}")
    with open(os.path.join(outdir, "cases.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {n} random cases to {outdir}")


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--random":
        random_cases(int(sys.argv[2]), sys.argv[3])
        return
    outdir = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_OUT
    os.makedirs(outdir, exist_ok=True)
    rng = np.random.default_rng(20240611)

    pairs = []

    def pair(a_name, a, b_name, b):
        mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
        psnr = None if mse == 0 else float(peak_signal_noise_ratio(a, b, data_range=255))
        ssim = float(structural_similarity(a, b, channel_axis=2, data_range=255))
        l1 = float(np.mean(np.abs(a.astype(np.float64) - b.astype(np.float64))))
        pairs.append({"a": a_name, "b": b_name, "psnr": psnr, "ssim": ssim, "l1": l1})

    images = base_images()
    for name, img in images.items():
        fname = f"img_{name}.png"
        save(os.path.join(outdir, fname), img)
        pair(fname, img, fname, img)
        for vname, v in variants(img, rng).items():
            vfile = f"img_{name}_{vname}.png"
            save(os.path.join(outdir, vfile), v)
            pair(fname, img, vfile, v)

    # Odd sizes smaller than a few windows: checks the border crop of SSIM.
    small = images["astronaut"][11:48, 23:76]
    small_noisy = np.clip(small.astype(np.int16) + rng.integers(-20, 21, small.shape), 0, 255)
    small_noisy = small_noisy.astype(np.uint8)
    save(os.path.join(outdir, "img_small.png"), small)
    save(os.path.join(outdir, "img_small_noisy.png"), small_noisy)
    pair("img_small.png", small, "img_small_noisy.png", small_noisy)

    mask_set = masks(rng)
    for mname, m in mask_set.items():
        save(os.path.join(outdir, f"mask_{mname}.png"), m)

    jobs = [("astronaut", m, 4) for m in mask_set]
    jobs += [("chelsea", "strokes", 4), ("chelsea", "big", 4), ("coffee", "corners", 4)]
    jobs += [("coffee", "dots", 4), ("astronaut", "strokes", 2), ("chelsea", "edges", 7)]
    telea = []
    for iname, mname, radius in jobs:
        img, m = images[iname], mask_set[mname]
        out = cv2.inpaint(img, m, radius, cv2.INPAINT_TELEA)
        # cv2 must leave known pixels untouched; the Rust test relies on that too.
        assert np.array_equal(out[m == 0], img[m == 0])
        ofile = f"telea_{iname}_{mname}_r{radius}.png"
        save(os.path.join(outdir, ofile), out)
        telea.append(
            {
                "image": f"img_{iname}.png",
                "mask": f"mask_{mname}.png",
                "radius": radius,
                "output": ofile,
                "hole_ratio": float(np.mean(m != 0)),
            }
        )
        pair(f"img_{iname}.png", img, ofile, out)

    # Self-check: the PNG round trip must be lossless, or the expected values
    # would not describe the files the Rust test reads.
    for p in pairs:
        a = np.asarray(Image.open(os.path.join(outdir, p["a"])).convert("RGB"))
        b = np.asarray(Image.open(os.path.join(outdir, p["b"])).convert("RGB"))
        ssim = structural_similarity(a, b, channel_axis=2, data_range=255)
        assert ssim == p["ssim"], p

    expected = {
        "versions": {
            "numpy": np.__version__,
            "opencv": cv2.__version__,
            "scikit-image": skimage.__version__,
        },
        "pairs": pairs,
        "telea": telea,
    }
    with open(os.path.join(outdir, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(outdir, n)) for n in os.listdir(outdir))
    print(f"wrote {len(os.listdir(outdir))} files, {total} bytes, to {outdir}")


if __name__ == "__main__":
    main()
