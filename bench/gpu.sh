#!/usr/bin/env bash
# The GPU benchmark set (issue #4), for one GPU; about 6-8 minutes on an H100-class card (most of it compiling).
#
#   bash bench/gpu.sh [OUT.jsonl]          # default bench/gpu-results.jsonl; tables go to stdout
#
# Each command is its own process, so the device's peak-memory high-water mark belongs to that command's batch
# sizes; each is cut off after STEP_TIMEOUT seconds (default 150) or when the whole script's BUDGET (default 570 s)
# runs out, whichever comes first, and the script goes on with the next one (commands with under 20 s left are
# skipped and counted as failed), so the set always ends within 10 minutes.
# QUICK=1 runs the same commands with --quick (tiny shapes) to check the plumbing on any machine; FORCE=1 runs
# the full set without a GPU (slow: use the CPU commands in BENCHMARKS.md instead).
set -u
cd "$(dirname "$0")/.."
OUT=${1:-bench/gpu-results.jsonl}
STEP_TIMEOUT=${STEP_TIMEOUT:-150}
BUDGET=${BUDGET:-570}
START=$SECONDS
EXTRA=()
if [[ "${QUICK:-0}" == 1 ]]; then EXTRA=(--quick --repeats 1); fi

platform=$(python -c "import jax; print(jax.devices()[0].platform)") || exit 1
if [[ "$platform" != gpu && "${FORCE:-0}" != 1 && "${QUICK:-0}" != 1 ]]; then
  echo "bench/gpu.sh: no GPU visible to jax (platform: $platform); set FORCE=1 or QUICK=1 to run anyway" >&2
  exit 2
fi
python -c "import jax; d = jax.devices()[0]; print('device:', d.platform, d.device_kind, '| jax', jax.__version__)"

failed=0
run() {
  local left=$((BUDGET - (SECONDS - START)))
  local limit=$((left < STEP_TIMEOUT ? left : STEP_TIMEOUT))
  echo "== python -m smis_jax.bench $*   (limit ${limit} s)"
  if ((limit < 20)); then
    echo "!! skipped, out of time: $*" >&2
    failed=$((failed + 1))
    return
  fi
  if ! timeout "$limit" python -m smis_jax.bench "$@" "${EXTRA[@]}" --json-out "$OUT"; then
    echo "!! failed or timed out: $*" >&2
    failed=$((failed + 1))
  fi
}

# Labelling at the FFHQ config-f shapes: dense (19 classes) and sparse (71 classes, 9 and 150 vectors per class);
# --no-torch: the PyTorch original runs on the CPU only, see BENCHMARKS.md for its CPU numbers.
# (--quick only changes defaults, and an explicit --config wins, so QUICK=1 swaps the config itself.)
CFG=ffhq
if [[ "${QUICK:-0}" == 1 ]]; then CFG=golden; fi
run labeling --config "$CFG" --mode dense --batch 1,4,16 --dtype float32 --repeats 10 --no-torch
run labeling --config "$CFG" --mode dense --batch 1,4,16 --dtype bfloat16 --repeats 10 --no-torch
run labeling --config "$CFG" --mode sparse --batch 1,4,16 --dtype float32 --repeats 5 --no-torch
run labeling --config "$CFG" --mode sparse --batch 16 --dtype bfloat16 --repeats 5 --no-torch
run labeling --config "$CFG" --mode sparse --batch 16 --vectors-per-class 150 --repeats 5 --no-torch
# Training step (IR-SE-50, batch 2 as the original trains, and 8), inversion of K = 5 images.
run train-step --config "$CFG" --mode dense --batch 2,8 --repeats 10
run train-step --config "$CFG" --mode sparse --batch 2 --repeats 5
run inversion --config "$CFG" --batch 5 --steps 20 --repeats 3

# Label agreement between float32 matmul precisions (highest / tensorfloat32 / default = TF32 on recent NVIDIA
# cards) on the built-in generator: smis_jax.precision's policy, measured on this card.
left=$((BUDGET - (SECONDS - START)))
SAMPLES=256
if [[ "${QUICK:-0}" == 1 ]]; then SAMPLES=16; fi
echo "== python bench/precision_agreement.py --samples $SAMPLES   (limit $((left < STEP_TIMEOUT ? left : STEP_TIMEOUT)) s)"
if ((left < 20)) || ! timeout $((left < STEP_TIMEOUT ? left : STEP_TIMEOUT)) \
    python bench/precision_agreement.py --samples "$SAMPLES" --json-out "$OUT"; then
  echo "!! failed, timed out or skipped: precision agreement" >&2
  failed=$((failed + 1))
fi

echo "results appended to $OUT ($failed command(s) failed)"
exit $((failed > 0))
