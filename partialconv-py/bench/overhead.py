"""Python overhead over the Rust API: `Inpainter.predict` from Python against
`partialconv::Inpainter::predict` from Rust (examples/bench_predict.rs), same model, same
512×512 image and mask, same strategy, alternating rounds so that both see the same load.

    python partialconv-py/bench/overhead.py [--model M] [--rounds 5] [--iters 10]

Without --model, a random-weight model (7 levels, --width, default 32: the narrowest
bundled-model candidate, so the most overhead-sensitive) is written first; the weights do not
change the time. Also times both sides on a mask with no hole, where the core returns the
input at once: that is the fixed cost of a call, which the loaded shared machine cannot
blur. Prints a Markdown table for docs/benchmarks.md and one JSON line.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

import partialconv
import torch

REPO = Path(__file__).resolve().parents[2]


def bench_binary():
    cmd = [
        "cargo", "build", "--release", "--message-format=json",
        "--manifest-path", str(REPO / "partialconv-py" / "Cargo.toml"),
        "--example", "bench_predict",
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True)
    for line in done.stdout.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg.get("executable"):
            return msg["executable"]
    sys.exit("cargo built no bench_predict")


def inputs(d, size):
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size]
    img = np.stack([(x + y) % 256, (2 * y) % 256, (3 * x) % 256], -1)
    img = np.clip(img + rng.integers(-20, 21, img.shape), 0, 255).astype(np.uint8)
    holes = np.zeros((size, size), bool)
    s = size // 8
    for y0, x0 in [(1, 1), (1, 5), (4, 3), (6, 1)]:  # about a fifth of the image
        holes[y0 * s : (y0 + 1) * s + s // 2, x0 * s : (x0 + 2) * s] = True
    Image.fromarray(img).save(d / "image.png")
    Image.fromarray(holes).save(d / "mask.png")
    Image.fromarray(np.zeros_like(holes)).save(d / "no_hole.png")
    return img, holes


def median_ms(f, iters):
    f()  # warm-up, as the Rust side does
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        f()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--strategy", default="original")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--width", type=int, default=32)
    args = ap.parse_args()
    exe = bench_binary()
    d = Path(tempfile.mkdtemp(prefix="pc-overhead-"))
    model = args.model
    if model is None:
        model = str(d / f"width{args.width}.safetensors")
        subprocess.run([exe, "--make-model", model, "--width", str(args.width)], check=True)
    img, holes = inputs(d, args.size)
    pil_img, pil_mask = Image.open(d / "image.png"), Image.open(d / "mask.png")
    pil_img.load(), pil_mask.load()
    inpainter = partialconv.Inpainter.load(model)
    rust_cmd = [
        exe, "--model", model, "--image", d / "image.png", "--mask", d / "mask.png",
        "--strategy", args.strategy, "--iters", str(args.iters),
    ]  # fmt: skip
    # Fixed cost per call: no hole, so no network; many iterations, it is cheap.
    fixed_cmd = [str(c) for c in rust_cmd]
    fixed_cmd[fixed_cmd.index("--mask") + 1] = str(d / "no_hole.png")
    fixed_cmd[fixed_cmd.index("--iters") + 1] = "200"
    rust_fixed = json.loads(subprocess.run(fixed_cmd, capture_output=True, check=True).stdout)
    no_hole = np.zeros_like(holes)
    py_fixed = median_ms(lambda: inpainter.predict(img, no_hole, args.strategy), 200)
    rows = []
    for r in range(args.rounds):
        rust = json.loads(subprocess.run(rust_cmd, capture_output=True, check=True).stdout)
        numpy_ms = median_ms(lambda: inpainter.predict(img, holes, args.strategy), args.iters)
        pil_ms = median_ms(lambda: inpainter.predict(pil_img, pil_mask, args.strategy), args.iters)
        rows.append((rust["median_ms"], numpy_ms, pil_ms))
        print(f"round {r + 1}: rust {rows[-1][0]:.1f} ms, python numpy {numpy_ms:.1f} ms, "
              f"python PIL {pil_ms:.1f} ms", file=sys.stderr)  # fmt: skip
    rust_ms, numpy_ms, pil_ms = (statistics.median(col) for col in zip(*rows))
    # Per round, so that a load change between rounds does not pass for overhead.
    over_numpy = statistics.median((p / r - 1) * 100 for r, p, _ in rows)
    over_pil = statistics.median((p / r - 1) * 100 for r, _, p in rows)
    fixed_pct = (py_fixed - rust_fixed["median_ms"]) / rust_ms * 100
    result = {
        "fixed_rust_ms": round(rust_fixed["median_ms"], 3), "fixed_python_ms": round(py_fixed, 3),
        "fixed_overhead_pct_of_rust_predict": round(fixed_pct, 3),
        "size": args.size, "strategy": args.strategy, "model": Path(model).name,
        "rounds": args.rounds, "iters": args.iters, "rust_ms": round(rust_ms, 2),
        "python_numpy_ms": round(numpy_ms, 2), "python_pil_ms": round(pil_ms, 2),
        "overhead_numpy_pct": round(over_numpy, 2), "overhead_pil_pct": round(over_pil, 2),
        "threads": rust["threads"], "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
    }  # fmt: skip
    print("| input | median ms / predict | overhead vs Rust (median of per-round ratios) |")
    print("|---|---|---|")
    print(f"| Rust `Inpainter::predict` | {rust_ms:.1f} | — |")
    print(f"| Python, numpy arrays | {numpy_ms:.1f} | {over_numpy:+.2f} % |")
    print(f"| Python, PIL images | {pil_ms:.1f} | {over_pil:+.2f} % |")
    print()
    print("| no-hole call (fixed cost of a call) | median ms |")
    print("|---|---|")
    print(f"| Rust | {rust_fixed['median_ms']:.3f} |")
    print(f"| Python, numpy arrays | {py_fixed:.3f} |")
    print(f"| difference, as a share of the Rust predict | {fixed_pct:+.3f} % |")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
