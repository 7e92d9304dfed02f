#!/usr/bin/env python3
"""Mean absolute error inside the holes by distance to the hole's edge, model against Telea.

Usage: boundary_errors.py PARTIALCONV_BIN MODEL VAL_DIR [N_PHOTOS]

Takes the first N photos of VAL_DIR (default 6) as 512x512 centre crops of the photo scaled
to a 512-pixel short side, brushes random strokes on each (3-25 px wide, seed 0), fills them
with `partialconv predict` and with OpenCV's Telea (radius 4), and prints the L1 error (0-255)
in rings of distance to the nearest known pixel. Where the model loses to Telea near the
edge but wins deep inside, its fills are soft or offset where they meet the photo.
"""
import os
import subprocess
import sys
import tempfile

import cv2
import numpy as np
from PIL import Image

RINGS = [(0, 1.5), (1.5, 2.5), (2.5, 4), (4, 8), (8, 1e9)]


def crop512(path):
    img = Image.open(path).convert("RGB")
    s = 512 / min(img.size)
    img = img.resize((round(img.width * s), round(img.height * s)), Image.BICUBIC)
    left, top = (img.width - 512) // 2, (img.height - 512) // 2
    return img.crop((left, top, left + 512, top + 512))


def strokes(rng):
    m = np.zeros((512, 512), np.uint8)
    for _ in range(6):
        pts = rng.integers(0, 512, (4, 2))
        for a, b in zip(pts[:-1], pts[1:]):
            cv2.line(m, tuple(map(int, a)), tuple(map(int, b)), 255, int(rng.integers(3, 25)))
    return m


def main(binary, model, val_dir, n=6):
    rng = np.random.default_rng(0)
    sums = {(name, ring): [0.0, 0] for name in ("model", "telea") for ring in RINGS}
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(sorted(os.listdir(val_dir))[:n]):
            img, mask = crop512(os.path.join(val_dir, name)), strokes(rng)
            paths = [os.path.join(tmp, f) for f in ("img.png", "mask.png", "out.png")]
            img.save(paths[0])
            Image.fromarray(mask).save(paths[1])
            subprocess.run([binary, "predict", "--image", paths[0], "--mask", paths[1],
                            "--output", paths[2], "--model", model, "--device", "cpu"],
                           check=True, capture_output=True)
            gt = np.asarray(img).astype(float)
            fills = {
                "model": np.asarray(Image.open(paths[2]).convert("RGB")).astype(float),
                "telea": cv2.inpaint(np.asarray(img), mask, 4, cv2.INPAINT_TELEA).astype(float),
            }
            hole = mask > 0
            dist = cv2.distanceTransform(hole.astype(np.uint8), cv2.DIST_L2, 3)
            for fill_name, fill in fills.items():
                err = np.abs(fill - gt)
                for lo, hi in RINGS:
                    sel = hole & (dist > lo) & (dist <= hi)
                    acc = sums[(fill_name, (lo, hi))]
                    acc[0] += err[sel].sum()
                    acc[1] += sel.sum() * 3
    print("distance to edge (px) | model L1 | Telea L1")
    for lo, hi in RINGS:
        label = f"({lo:g}, {hi:g}]" if hi < 1e9 else f"> {lo:g}"
        m, t = (sums[(k, (lo, hi))] for k in ("model", "telea"))
        print(f"{label:>21} | {m[0] / m[1]:8.2f} | {t[0] / t[1]:8.2f}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], *(int(a) for a in sys.argv[4:5]))
