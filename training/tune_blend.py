#!/usr/bin/env python3
"""Scores ways of mixing the network's fill with Telea's, by distance into the hole.

Usage: tune_blend.py PARTIALCONV_BIN MODEL PHOTO_DIR [N_PHOTOS]

Takes the first N photos of PHOTO_DIR (default 30) as 512x512 centre crops of the photo
scaled to a 512-pixel short side, and brushes random strokes (3-40 px wide, seed 1) on each
until the hole ratio reaches one of 0.05, 0.15, 0.25, 0.35, 0.45 in turn. The network fills
them once (`partialconv batch --blend paste --strategy original`) and OpenCV's Telea
(radius 4) once; each candidate weight w(d) then gives `w·Telea + (1 − w)·network` at
distance d from the nearest known pixel. Prints the mean whole-image PSNR (8-bit, data range
255, averaged per ratio and then over ratios, as `partialconv eval` does) for each candidate.

Run it on training photos, not on the validation split the model card scores: the blend's
constants are chosen here, and the card's evaluation stays held out.
"""
import os
import subprocess
import sys
import tempfile

import cv2
import numpy as np
from PIL import Image

from boundary_errors import crop512

RATIOS = [0.05, 0.15, 0.25, 0.35, 0.45]


def strokes(rng, ratio):
    m = np.zeros((512, 512), np.uint8)
    while (m > 0).mean() < ratio:
        pts = rng.integers(0, 512, (4, 2))
        width = int(rng.integers(3, 40))
        for a, b in zip(pts[:-1], pts[1:]):
            cv2.line(m, tuple(map(int, a)), tuple(map(int, b)), 255, width)
    return m


def psnr(a, b):
    mse = np.mean((a.astype(float) - b.astype(float)) ** 2)
    return 10 * np.log10(255.0**2 / max(mse, 1e-10))


def candidates():
    # (name, w(d)): the shipped feather, then a floor of Telea kept deep inside the hole.
    for feather in (4.0, 6.0, 8.0):
        for floor in (0.0, 0.1, 0.2, 0.3, 0.4, 0.5):
            yield (f"feather {feather:g}, floor {floor:.1f}",
                   lambda d, f=feather, a=floor: a + (1 - a) * np.clip(1 - (d - 1) / f, 0, 1))


def main(binary, model, photo_dir, n=30):
    rng = np.random.default_rng(1)
    names = sorted(os.listdir(photo_dir))[:n]
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {k: os.path.join(tmp, k) for k in ("img", "mask", "out")}
        for d in dirs.values():
            os.makedirs(d)
        cases = []
        for i, name in enumerate(names):
            img = crop512(os.path.join(photo_dir, name))
            for j, ratio in enumerate(RATIOS):
                stem = f"{i:03d}_{j}"
                img.save(os.path.join(dirs["img"], stem + ".png"))
                Image.fromarray(strokes(rng, ratio)).save(os.path.join(dirs["mask"], stem + ".png"))
                cases.append((stem, j))
        subprocess.run([binary, "batch", "--images", dirs["img"], "--masks", dirs["mask"],
                        "--output", dirs["out"], "--model", model, "--device", "cpu",
                        "--blend", "paste", "--strategy", "original"],
                       check=True, capture_output=True)
        scores = {}
        for stem, j in cases:
            gt = np.asarray(Image.open(os.path.join(dirs["img"], stem + ".png")))
            mask = np.asarray(Image.open(os.path.join(dirs["mask"], stem + ".png")))
            net = np.asarray(Image.open(os.path.join(dirs["out"], stem + ".png")).convert("RGB"))
            telea = cv2.inpaint(gt, mask, 4, cv2.INPAINT_TELEA)
            hole = mask > 0
            dist = cv2.distanceTransform(hole.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
            scores.setdefault(("telea", j), []).append(psnr(telea, gt))
            for name, weight in candidates():
                w = weight(dist)[..., None]
                mix = np.round(w * telea + (1 - w) * net.astype(float)).astype(np.uint8)
                out = np.where(hole[..., None], mix, gt)
                scores.setdefault((name, j), []).append(psnr(out, gt))
    telea = np.mean([np.mean(scores[("telea", j)]) for j in range(len(RATIOS))])
    print(f"{len(names)} photos x {len(RATIOS)} ratios; Telea {telea:.3f} dB")
    for name, _ in candidates():
        mean = np.mean([np.mean(scores[(name, j)]) for j in range(len(RATIOS))])
        print(f"{name:>24}: {mean:.3f} dB ({mean - telea:+.3f} vs Telea)")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], *(int(a) for a in sys.argv[4:5]))
