#!/usr/bin/env bash
# The sampling engine and the real peer (a PyTorch loop of T passes, same weights) on one
# accelerator, ending in one table, in under 8 minutes. On an H200 its steps took ~95 s per
# peer batch and ~180 s for the bench (two calls of 2026-11-27; experiments/BENCHMARKS.md).
#
#   bash experiments/device_bench.sh [OUT_DIR]          # default OUT_DIR: runs/device_bench
#
# Steps, each under its own time limit so the whole ends within ~7.5 min:
#   1. installs what the accelerator image lacks: ml-collections, from wheels in .whl/
#      (python3 -m pip download --no-deps -d .whl ml_collections==1.1.0); the bench path
#      needs neither TFDS nor array_record;
#   2. experiments/torch_peer.py at 224 px, batch 8 and 32, T 20 and 100: the logits check,
#      then engine vs PyTorch eager float32 (and bfloat16 autocast) loops, taking turns;
#   3. main.py --mode=bench with configs/bench_accelerator.py:quick (224 px x 8, float32 and
#      bfloat16, measured chunks, memory at T=20 and T=100; bench.json is written row by row,
#      so a cut-short step still reports what it measured);
#   4. experiments/device_report.py: one table and the issue's targets -> OUT/device_bench.md.
# DEVICE_BENCH_TINY=1 runs the same path at toy sizes (the CPU test, tests/apps/test_device_bench.py).
set -u -o pipefail
OUT=${1:-runs/device_bench}
mkdir -p "$OUT"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PY=${PYTHON:-python3}
start=$(date +%s)
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false

if ! $PY -c "import ml_collections" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/segqual_site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/segqual_site:${PYTHONPATH:-}
  else
    echo "ml_collections is missing and .whl/ holds no wheel of it" >&2; exit 1
  fi
fi
export PYTHONPATH=$ROOT:${PYTHONPATH:-}

if [ "${DEVICE_BENCH_TINY:-0}" = 1 ]; then
  SIZE=32; BATCHES="2"; SAMPLES="--samples=3"; ROUNDS=1; PEER_S=300; BENCH_S=300
  BENCH_ARGS="--config=configs/bench_accelerator.py:quick --config.bench.cases=32x2
    --config.bench.samples=(3,) --config.bench.repeats=1 --config.bench.matmul_size=256 --config.bench.ceiling_batch=4
    --config.seg.depth=2 --config.bench.base_widths=(4,) --config.uncertainty.ensemble_members=2"
else
  SIZE=224; BATCHES="8 32"; SAMPLES="--samples=20 --samples=100"; ROUNDS=3; PEER_S=110; BENCH_S=230
  BENCH_ARGS="--config=configs/bench_accelerator.py:quick"
fi

if $PY -c "import torch" 2>/dev/null; then
  for batch in $BATCHES; do
    timeout "$PEER_S" $PY experiments/torch_peer.py --config=configs/bench_accelerator.py:quick \
      $( [ "${DEVICE_BENCH_TINY:-0}" = 1 ] && echo "--config.seg.depth=2 --config.seg.base_width=4" ) \
      --size=$SIZE --batch=$batch $SAMPLES --rounds=$ROUNDS --torch_compile=false --torch_bf16 \
      --out="$OUT/peer_b$batch" 2>&1 | grep -v -E "^(I|W)[0-9]{4} " || echo "torch_peer (batch $batch) failed or ran out of time"
  done
else
  echo "PyTorch is not installed: the peer is skipped (pip install -r experiments/requirements-peer.txt)"
fi
timeout "$BENCH_S" $PY main.py $BENCH_ARGS --workdir="$OUT/bench" --mode=bench 2>&1 \
  | grep -v -E "^(I|W)[0-9]{4} " | tail -40 || echo "the bench failed or ran out of time"
$PY experiments/device_report.py --dir="$OUT"
echo "device_bench: $(( $(date +%s) - start )) s in all"
