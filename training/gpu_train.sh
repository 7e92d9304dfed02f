#!/usr/bin/env bash
# Trains default-model candidates on a remote GPU machine in one go (sized for a slot of
# about 15 minutes), fine-tunes the better one on the interiors domain, and measures GPU
# inference. Run from the repo root there, with these carried in `.carry/`
# (`training/gpu_carry.sh` prepares them here):
#   partialconv              the release CLI built here (its rpath points at this machine's
#                            venv, so LD_LIBRARY_PATH is set to the device's own torch below)
#   photos/{train,val}/      the training photos scaled to a 512-pixel short side
#   photos/interiors/{train,val}/  the fine-tuning domain
#   vgg19_pool3.safetensors  from `partialconv import-vgg`
# Everything is sized to end by DEADLINE_S seconds after the start; what comes back through
# $OUT: each candidate's model (split in 15 MB parts), and runs.tgz with the logs, plots,
# sample grids, eval tables and benchmark lines.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
DEADLINE_S=${DEADLINE_S:-530}
# Seconds kept after training for the fine-tune, the evals, the bench and packing.
RESERVE_S=${RESERVE_S:-150}
FT_MINUTES=${FT_MINUTES:-1.0}
DEVICE=${DEVICE:-cuda}
THREADS=${THREADS:-7}
WIDTH=${WIDTH:-48}
BATCH=${BATCH:-16}
LR=${LR:-5e-4}
EXTRA=${EXTRA:-}   # a CPU dry run: "--train-size 64 --val-size 128 --max-val-images 2 --width 8"
EVAL_EXTRA=${EVAL_EXTRA:-}
PY=${PY:-python3}
torch_lib=$("$PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$torch_lib:${LD_LIBRARY_PATH:-}"
bin=.carry/partialconv
runs=/tmp/pc_runs; rm -rf "$runs"; mkdir -p "$runs"
pack() {
  tar czf "$OUT/runs.tgz" -C "$runs" --exclude='*.safetensors' --exclude='checkpoint*' .
  ls -la "$OUT"
}
trap pack EXIT
left() { echo $((DEADLINE_S - SECONDS)); }
nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null | tee "$runs/gpu.txt"
"$bin" --version || exit 1

minutes=$("$PY" -c "print(max(0.5, ($(left) - $RESERVE_S) / 60))")
echo "training budget: $minutes min per candidate"
train() { # name, extra args...
  local name=$1; shift
  "$bin" train --data .carry/photos/train --val-data .carry/photos/val \
    --out "$runs/$name.safetensors" --run-dir "$runs/$name" --device "$DEVICE" \
    --vgg .carry/vgg19_pool3.safetensors --max-minutes "$minutes" --steps 1000000 \
    --val-every 1500 --checkpoint-every 2000 --max-val-images "${VAL_IMAGES:-100}" --loader-threads "$THREADS" \
    --half --width "$WIDTH" --batch-size "$BATCH" --lr "$LR" --seed "${SEED:-0}" $EXTRA "$@" \
    > "$runs/$name.log" 2>&1
}
# a: the paper's loss weights; b: a lighter style term (the style term dominates the loss).
train a &
train b --style-weight 30 &
wait
best=""; best_psnr=-1
for name in a b; do
  tail -4 "$runs/$name.log"
  [ -f "$runs/$name.safetensors" ] || continue
  psnr=$("$PY" - "$runs/$name.safetensors" <<'EOF'
import json, struct, sys
with open(sys.argv[1], "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    meta = json.loads(f.read(n))["__metadata__"]
print(json.loads(meta["partialconv"])["training"].get("val_mean_psnr") or -1)
EOF
)
  echo "$name: validation mean PSNR $psnr"
  if "$PY" -c "import sys; sys.exit(0 if float('$psnr') > float('$best_psnr') else 1)"; then
    best=$name; best_psnr=$psnr
  fi
  split -b 15M -d "$runs/$name.safetensors" "$OUT/$name.safetensors.part"
done
[ -n "$best" ] || exit 1
echo "best: $best ($best_psnr dB); $(left) s left"

# The fine-tuning proof: the better candidate, tuned on 30 interiors, scored on the other 7.
ft_seconds=$("$PY" -c "print(int($FT_MINUTES * 60 + 60))")
timeout "$ft_seconds" "$bin" train --data .carry/photos/interiors/train \
  --val-data .carry/photos/interiors/val --base "$runs/$best.safetensors" \
  --out "$runs/ft.safetensors" --run-dir "$runs/ft" --device "$DEVICE" \
  --vgg .carry/vgg19_pool3.safetensors --max-minutes "$FT_MINUTES" --steps 100000 \
  --val-every 100000 --checkpoint-every 100000 --loader-threads 14 --half \
  --batch-size "$BATCH" $EXTRA > "$runs/ft.log" 2>&1
tail -3 "$runs/ft.log"
for m in "$best" ft; do
  [ -f "$runs/$m.safetensors" ] && [ "$(left)" -gt 20 ] || continue
  timeout 60 "$bin" eval --model "$runs/$m.safetensors" --images .carry/photos/interiors/val \
    --device "$DEVICE" $EVAL_EXTRA > "$runs/eval_interiors_$m.txt" 2>&1
  echo "interiors/val, $m:"; cat "$runs/eval_interiors_$m.txt"
done

# GPU inference figures for docs/benchmarks.md, after training so nothing shares the GPU.
for half in "" --half; do for batch in 1 8; do
  [ "$(left)" -gt 25 ] || break 2
  timeout 30 "$bin" bench --width 64 --device "$DEVICE" --size "${BENCH_SIZE:-512}" --batch "$batch" \
    --iters 20 --json $half >> "$runs/bench.jsonl" 2>&1
done; done
cat "$runs/bench.jsonl" 2>/dev/null
echo "done with $(left) s left"
