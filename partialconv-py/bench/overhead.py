"""Python overhead over the Rust API: `Inpainter.predict` from Python against
`partialconv::Inpainter::predict` from Rust (examples/bench_predict.rs), same model, same
512×512 image and mask, same strategy; calls paired one by one so that both sides of each
comparison see the same load. Both run libtorch on one thread (--threads), so that the
calling thread's CPU time measures a call; its wall time is reported too, but on a shared
machine that one mostly measures the other processes.

    python partialconv-py/bench/overhead.py [--model M] [--pairs 21] [--threads 1]

Without --model, a random-weight model (7 levels, --width, default 32: narrower than the
bundled model, so the most overhead-sensitive) is written first; the weights do not
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


def times_ms(f, iters):
    f()  # warm-up, as the Rust side does
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        f()
        times.append((time.perf_counter() - t) * 1e3)
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--strategy", default="original")
    ap.add_argument("--pairs", type=int, default=21)
    ap.add_argument("--threads", type=int, default=1, help="libtorch intra-op threads")
    ap.add_argument("--width", type=int, default=32)
    args = ap.parse_args()
    exe = bench_binary()
    d = Path(tempfile.mkdtemp(prefix="pc-overhead-"))
    model = args.model
    if model is None:
        model = str(d / f"width{args.width}.safetensors")
        subprocess.run([exe, "--make-model", model, "--width", str(args.width)], check=True)
    img, holes = inputs(d, args.size)
    # One thread: all the work is on the calling thread, whose CPU time is then a measure
    # the other processes on a shared machine hardly disturb. (torch and the extension share
    # libtorch, so this sets the extension's threads too.)
    torch.set_num_threads(args.threads)
    pil_img, pil_mask = Image.open(d / "image.png"), Image.open(d / "mask.png")
    pil_img.load(), pil_mask.load()
    inpainter = partialconv.Inpainter.load(model)
    rust_cmd = [
        exe, "--model", model, "--image", d / "image.png", "--mask", d / "mask.png",
        "--strategy", args.strategy,
    ]  # fmt: skip
    # Fixed cost per call: no hole, so no network; many iterations, it is cheap.
    fixed_cmd = [str(c) for c in rust_cmd]
    fixed_cmd[fixed_cmd.index("--mask") + 1] = str(d / "no_hole.png")
    fixed_cmd += ["--iters", "200"]
    rust_fixed = json.loads(subprocess.run(fixed_cmd, capture_output=True, check=True).stdout)
    no_hole = np.zeros_like(holes)
    py_fixed = statistics.median(
        times_ms(lambda: inpainter.predict(img, no_hole, args.strategy), 200)
    )
    # Calls are paired one by one (the Rust side serves single predictions over a pipe), in
    # rotating order, so that each comparison sees the same load on this shared machine.
    server = subprocess.Popen(
        [*map(str, rust_cmd), "--serve", "--threads", str(args.threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert server.stdout.readline().strip() == "ready"

    def rust_call():
        server.stdin.write("\n")
        server.stdin.flush()
        wall, cpu = map(float, server.stdout.readline().split())
        return wall, cpu

    def py_call(image, mask):
        t, c = time.perf_counter(), time.thread_time()
        inpainter.predict(image, mask, args.strategy)
        return (time.perf_counter() - t) * 1e3, (time.thread_time() - c) * 1e3

    sides = {
        "rust": rust_call,
        "numpy": lambda: py_call(img, holes),
        "pil": lambda: py_call(pil_img, pil_mask),
    }
    sides["numpy"](), sides["pil"]()  # warm-up (the server warmed up before "ready")
    names = list(sides)
    rows = []
    for i in range(args.pairs):
        order = names[i % 3 :] + names[: i % 3]
        got = {k: sides[k]() for k in order}
        rows.append(tuple(got[k] for k in names))
        print(f"{i + 1}: " + ", ".join(f"{k} {w:.1f} ms ({c:.1f} CPU)" for k, (w, c) in got.items()),
              file=sys.stderr)  # fmt: skip
    server.stdin.close()
    server.wait()

    def summary(clock):
        cols = [[row[k][clock] for row in rows] for k in range(3)]
        medians = [statistics.median(c) for c in cols]
        # Per pair, so that a load change during the run does not pass for overhead.
        over = [statistics.median((p / r - 1) * 100 for r, p in zip(cols[0], c)) for c in cols[1:]]
        return medians, over

    (rust_ms, numpy_ms, pil_ms), (over_numpy, over_pil) = summary(0)
    (rust_cpu, numpy_cpu, pil_cpu), (cpu_numpy, cpu_pil) = summary(1)
    fixed_pct = (py_fixed - rust_fixed["median_ms"]) / rust_ms * 100
    result = {
        "fixed_rust_ms": round(rust_fixed["median_ms"], 3), "fixed_python_ms": round(py_fixed, 3),
        "fixed_overhead_pct_of_rust_predict": round(fixed_pct, 3),
        "size": args.size, "strategy": args.strategy, "model": Path(model).name,
        "pairs": args.pairs, "rust_ms": round(rust_ms, 2),
        "python_numpy_ms": round(numpy_ms, 2), "python_pil_ms": round(pil_ms, 2),
        "overhead_numpy_pct": round(over_numpy, 2), "overhead_pil_pct": round(over_pil, 2),
        "rust_cpu_ms": round(rust_cpu, 2), "python_numpy_cpu_ms": round(numpy_cpu, 2),
        "python_pil_cpu_ms": round(pil_cpu, 2), "cpu_overhead_numpy_pct": round(cpu_numpy, 2),
        "cpu_overhead_pil_pct": round(cpu_pil, 2),
        "threads": args.threads,
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
    }  # fmt: skip
    print("| caller | CPU ms / predict | vs Rust | wall ms / predict | vs Rust |")
    print("|---|---|---|---|---|")
    print(f"| Rust `Inpainter::predict` | {rust_cpu:.1f} | — | {rust_ms:.1f} | — |")
    print(f"| Python `Inpainter.predict`, numpy arrays | {numpy_cpu:.1f} | {cpu_numpy:+.2f} % | "
          f"{numpy_ms:.1f} | {over_numpy:+.2f} % |")  # fmt: skip
    print(f"| Python `Inpainter.predict`, PIL images | {pil_cpu:.1f} | {cpu_pil:+.2f} % | "
          f"{pil_ms:.1f} | {over_pil:+.2f} % |")  # fmt: skip
    print()
    print("| no-hole call (fixed cost of a call) | median ms |")
    print("|---|---|")
    print(f"| Rust | {rust_fixed['median_ms']:.3f} |")
    print(f"| Python, numpy arrays | {py_fixed:.3f} |")
    print(f"| difference, as a share of the Rust predict | {fixed_pct:+.3f} % |")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
