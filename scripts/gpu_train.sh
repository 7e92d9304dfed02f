#!/usr/bin/env bash
# Trains default-model candidates on a lent GPU machine in one go (the device tool gives a
# session ~15 minutes). Run from the repo root there, with these carried in `.carry/`:
#   partialconv            the release CLI built here (its rpath points at this machine's venv,
#                          so LD_LIBRARY_PATH is set to the device's own torch below)
#   photos/{train,val}/    the training photos scaled to a 512-pixel short side
#   vgg19_pool3.safetensors  from `partialconv import-vgg`
# Two candidates train side by side on the one GPU (neither saturates it alone); both are
# evaluated on the validation split, and everything comes back through $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
MINUTES=${MINUTES:-7}
DEVICE=${DEVICE:-cuda}
THREADS=${THREADS:-7}
WIDTH=${WIDTH:-48}
BATCH=${BATCH:-16}
EVAL_EXTRA=${EVAL_EXTRA:-}
EXTRA=${EXTRA:-}   # e.g. a CPU dry run: "--train-size 128 --val-size 128 --max-val-images 2"
PY=${PY:-python3}
torch_lib=$("$PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$torch_lib:${LD_LIBRARY_PATH:-}"
bin=.carry/partialconv
runs=/tmp/pc_runs; mkdir -p "$runs"
nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null | tee "$runs/gpu.txt"

train() { # name, extra args...
  local name=$1; shift
  "$bin" train --data .carry/photos/train --val-data .carry/photos/val \
    --out "$runs/$name.safetensors" --run-dir "$runs/$name" --device "$DEVICE" \
    --vgg .carry/vgg19_pool3.safetensors --max-minutes "$MINUTES" --steps "${STEPS:-1000000}" \
    --val-every 1000 --checkpoint-every 2000 --loader-threads "$THREADS" --half \
    --width "$WIDTH" --batch-size "$BATCH" $EXTRA "$@" \
    > "$runs/$name.log" 2>&1
}
CANDIDATES=${CANDIDATES:-a b}
[[ " $CANDIDATES " == *" a "* ]] && train a &
[[ " $CANDIDATES " == *" b "* ]] && train b --style-weight 30 &
wait
for name in $CANDIDATES; do
  tail -3 "$runs/$name.log"
  "$bin" eval --model "$runs/$name.safetensors" --images .carry/photos/val --device "$DEVICE" --json $EVAL_EXTRA \
    > "$runs/eval_$name.json" 2> "$runs/eval_$name.err"
  cat "$runs/eval_$name.json"
  # Files come back at most 16 MiB each.
  split -b 15M -d "$runs/$name.safetensors" "$OUT/$name.safetensors.part"
done
# GPU inference figures for docs/benchmarks.md, after training so they don't share the GPU.
[ -n "${NO_BENCH:-}" ] || for half in "" --half; do for batch in 1 8; do
  "$bin" bench --width 64 --device "$DEVICE" --size "${BENCH_SIZE:-512}" --batch "$batch" --iters 20 --json $half \
    >> "$runs/bench.jsonl" 2>&1
done; done
cat "$runs/bench.jsonl"
tar czf "$OUT/runs.tgz" -C "$runs" --exclude='*.safetensors' .
ls -la "$OUT"
