#!/usr/bin/env bash
# One-GPU check, about 8 minutes: the paper table at CelebA 64 (cU-Net vs DDPM U-Net)
# and a short equal-budget MNIST training comparison.
#
#   bash benchmarks/gpu_check.sh [OUTDIR]     (default: $OUT, else benchmarks/results/gpu)
#
# On the device machine (python3 with jax[cuda], flax, diffrax, optax, orbax; no
# network): ml_collections is not in that image, so carry a wheel folder, and carry
# the MNIST IDX files, e.g. here first:
#   mkdir -p .cache/wheels .cache/mnist && cp ../shared/data/mnist/*.gz .cache/mnist/
#   pip download ml_collections --no-deps -d .cache/wheels
# then run with carry [".cache"] and command "bash benchmarks/gpu_check.sh $OUT".
# Environment: WHEELS (default .cache/wheels), MNIST_DIR (default .cache/mnist, else
# ../shared/data/mnist), PYTHON (default: .venv/bin/python if present, else python3).
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR="${1:-${OUT:-benchmarks/results/gpu}}"
mkdir -p "$OUTDIR"
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # so memory_stats' peak reflects use, not the pool
WHEELS="${WHEELS:-.cache/wheels}"
if ! "$PY" -c "import ml_collections" 2>/dev/null && [ -d "$WHEELS" ]; then
  "$PY" -m pip install --quiet --no-index --no-deps --find-links "$WHEELS" ml_collections || true
fi
MNIST_DIR="${MNIST_DIR:-$( [ -d .cache/mnist ] && echo .cache/mnist || echo ../shared/data/mnist )}"

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
  "$PY" -c "import jax; print('jax', jax.__version__, jax.devices())"; } | tee "$OUTDIR/device.txt"

start=$(date +%s)
# paper table: full (DDIM 50/256 at batch 1, training step at batch 16), about 3-4 minutes
timeout 290 "$PY" benchmarks/paper_table.py --batch 16 --repeats 10 \
  --out "$OUTDIR/paper_table.json" 2>&1 | tee -a "$OUTDIR/log.txt"
echo "paper_table: exit ${PIPESTATUS[0]} after $(( $(date +%s) - start )) s"

# equal-budget training on MNIST at configs/mnist.py widths, about 3 minutes
left=$(( 470 - ($(date +%s) - start) ))
[ "$left" -lt 60 ] && left=60
timeout "$left" "$PY" benchmarks/train_compare.py --data "$MNIST_DIR" --steps 1500 --batch 128 \
  --eval_every 500 --num_eval_samples 1000 --eval_steps 50 --cunet_nf 16 --unet_ch 64 \
  --cheap_solvers heun:1 --runs_dir "${TMPDIR:-/tmp}/odediff_runs" \
  --out "$OUTDIR" --cache_dir "${TMPDIR:-/tmp}/odediff_cache" 2>&1 | tee -a "$OUTDIR/log.txt"
echo "train_compare: exit ${PIPESTATUS[0]} after $(( $(date +%s) - start )) s"
# 8 files in $OUTDIR (the device tool returns at most 8): device.txt, log.txt, paper_table.json,
# train_compare.{json,png}, samples_{cunet,cunet_heun1,unet}.png
