#!/usr/bin/env bash
# Continues a model from training/gpu_train.sh on a remote GPU machine for the time that is
# left, then scores it and measures CUDA inference. Carried in `.carry/`:
#   partialconv.gz           the release CLI built here, stripped and gzipped (the 64 MiB
#                            limit also has to hold the base model)
#   base.safetensors         the model to continue
#   vgg19_pool3.safetensors  as in gpu_train.sh
#   photos/{train,val}/      as in gpu_train.sh; val may be a few photos
# (Move the tracked models/*.safetensors aside while it travels; they don't fit beside it.)
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
DEADLINE_S=${DEADLINE_S:-200}
RESERVE_S=${RESERVE_S:-60}
DEVICE=${DEVICE:-cuda}
PY=${PY:-python3}
torch_lib=$("$PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$torch_lib:${LD_LIBRARY_PATH:-}"
runs=/tmp/pc_runs; rm -rf "$runs"; mkdir -p "$runs"
bin=$runs/partialconv
gzip -dc .carry/partialconv.gz > "$bin" && chmod +x "$bin" || exit 1
pack() {
  tar czf "$OUT/runs.tgz" -C "$runs" --exclude='*.safetensors' --exclude=partialconv .
  ls -la "$OUT"
}
trap pack EXIT
left() { echo $((DEADLINE_S - SECONDS)); }
minutes=$("$PY" -c "print(max(0.5, ($(left) - $RESERVE_S) / 60))")
echo "training budget: $minutes min"
# Stage 1 at 2e-4 for the first 60 % of what fits, then stage 2 (frozen encoder BN, 5e-5).
"$bin" train --data .carry/photos/train --val-data .carry/photos/val --base .carry/base.safetensors \
  --out "$runs/c.safetensors" --run-dir "$runs/c" --device "$DEVICE" \
  --vgg .carry/vgg19_pool3.safetensors --max-minutes "$minutes" --steps 100000 --stage2-at 60000 \
  --lr 2e-4 --val-every 100000 --checkpoint-every 100000 --loader-threads 14 --half \
  --batch-size "${BATCH:-16}" ${EXTRA:-} "$@" > "$runs/c.log" 2>&1
tail -3 "$runs/c.log"
[ -f "$runs/c.safetensors" ] && split -b 15M -d "$runs/c.safetensors" "$OUT/c.safetensors.part"
# CUDA inference: the eval path (absorbed BN, fused convolutions) and the bench.
timeout 40 "$bin" eval --model "$runs/c.safetensors" --images .carry/photos/val --device "$DEVICE" \
  ${EVAL_EXTRA:-} 2>&1 | tee "$runs/eval.txt"
for half in "" --half; do for batch in 1 8; do
  [ "$(left)" -gt 8 ] || break 2
  timeout 20 "$bin" bench --width 64 --device "$DEVICE" --size "${BENCH_SIZE:-512}" --batch "$batch" \
    --iters 20 --json $half >> "$runs/bench.jsonl" 2>&1
done; done
cat "$runs/bench.jsonl"
echo "done with $(left) s left"
