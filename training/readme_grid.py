"""Compose the README picture: input with the brushed mask shown, and the result.

Usage: readme_grid.py IMAGE MASK RESULT OUT.png
"""
import sys

from PIL import Image

image, mask, result, out = sys.argv[1:5]
img = Image.open(image).convert("RGB")
m = Image.open(mask).convert("L").point(lambda v: 255 if v >= 128 else 0)
brushed = img.copy()
brushed.paste(Image.new("RGB", img.size, (255, 255, 255)), mask=m)
res = Image.open(result).convert("RGB")
gap = 8
grid = Image.new("RGB", (img.width * 2 + gap, img.height), (255, 255, 255))
grid.paste(brushed, (0, 0))
grid.paste(res, (img.width + gap, 0))
grid.save(out)
