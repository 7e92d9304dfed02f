"""Sample grid for the model card: input with holes, the model's fill, OpenCV Telea's fill,
ground truth, for a few validation photos (centre 512² crops, one generated mask each).

Usage: card_grid.py PARTIALCONV_BIN MODEL VAL_DIR OUT.png [N]
"""
import os
import subprocess
import sys
import tempfile

import cv2
import numpy as np
from PIL import Image

binary, model, val_dir, out = sys.argv[1:5]
n = int(sys.argv[5]) if len(sys.argv) > 5 else 4
files = sorted(os.listdir(val_dir))[:n]
rows = []
rng = np.random.default_rng(7)
with tempfile.TemporaryDirectory() as tmp:
    for i, name in enumerate(files):
        img = Image.open(os.path.join(val_dir, name)).convert("RGB")
        s = 512 / min(img.size)
        img = img.resize((round(img.width * s), round(img.height * s)), Image.LANCZOS)
        left, top = (img.width - 512) // 2, (img.height - 512) // 2
        img = img.crop((left, top, left + 512, top + 512))
        mask = np.zeros((512, 512), np.uint8)
        for _ in range(6):  # brush strokes of 15-35 px, like a user's
            pts = np.cumsum(rng.integers(-60, 61, size=(5, 2)), axis=0) + rng.integers(100, 412, size=2)
            cv2.polylines(mask, [pts.astype(np.int32)], False, 255, int(rng.integers(15, 36)))
        ip, mp, op = (os.path.join(tmp, f"{k}{i}.png") for k in "imo")
        img.save(ip)
        Image.fromarray(mask).save(mp)
        subprocess.run([binary, "predict", "--image", ip, "--mask", mp, "--output", op, "--model", model,
                        "--strategy", "original"], check=True, capture_output=True)
        arr = np.array(img)
        telea = cv2.cvtColor(cv2.inpaint(cv2.cvtColor(arr, cv2.COLOR_RGB2BGR), mask, 4, cv2.INPAINT_TELEA), cv2.COLOR_BGR2RGB)
        holes = arr.copy()
        holes[mask > 0] = 255
        rows.append([holes, np.array(Image.open(op).convert("RGB")), telea, arr])
gap = 6
grid = np.full((len(rows) * (512 + gap) - gap, 4 * (512 + gap) - gap, 3), 255, np.uint8)
for r, row in enumerate(rows):
    for c, cell in enumerate(row):
        grid[r * (512 + gap):r * (512 + gap) + 512, c * (512 + gap):c * (512 + gap) + 512] = cell
Image.fromarray(grid).resize((grid.shape[1] // 2, grid.shape[0] // 2), Image.LANCZOS).save(out)
