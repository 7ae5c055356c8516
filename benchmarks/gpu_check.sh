#!/usr/bin/env bash
# One-GPU check, at most 10 minutes: the paper table at CelebA 64 (cU-Net vs DDPM U-Net)
# and the MNIST training comparison with an equal wall-clock budget per run.
#
#   bash benchmarks/gpu_check.sh [OUTDIR]     (default: $OUT, else benchmarks/results/gpu)
#
# Needs python3 with jax for the GPU (CUDA), flax, diffrax, optax, orbax-checkpoint,
# ml_collections, scikit-learn and matplotlib, and MNIST's IDX files. Without network
# access, put a wheel of any missing pure-Python package (ml_collections, say) in WHEELS
# and copy the IDX files next to the repository, e.g.:
#   mkdir -p .cache/wheels .cache/mnist && cp <mnist dir>/*.gz .cache/mnist/
#   pip download ml_collections --no-deps -d .cache/wheels
# Environment: WHEELS (default .cache/wheels), MNIST_DIR (default .cache/mnist, else
# ../shared/data/mnist), PYTHON (default: .venv/bin/python if present, else python3).
set -uo pipefail
start=$(date +%s)
cd "$(dirname "$0")/.."
OUTDIR="${1:-${OUT:-benchmarks/results/gpu}}"
mkdir -p "$OUTDIR"
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # so memory_stats' peak reflects use, not the pool
WHEELS="${WHEELS:-.cache/wheels}"
for mod in ml_collections grain; do
  if ! "$PY" -c "import $mod" 2>/dev/null && [ -d "$WHEELS" ]; then
    "$PY" -m pip install --quiet --no-index --no-deps --find-links "$WHEELS" "$WHEELS"/*.whl || true
    break
  fi
done
MNIST_DIR="${MNIST_DIR:-$( [ -d .cache/mnist ] && echo .cache/mnist || echo ../shared/data/mnist )}"

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
  "$PY" -c "import jax, flax, optax, diffrax, orbax.checkpoint, grain, ml_collections
print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'diffrax', diffrax.__version__,
      'grain', getattr(grain, '__version__', '?'))
print(jax.devices())" || exit 1; } 2>&1 | tee "$OUTDIR/device.txt"
[ "${PIPESTATUS[0]}" = 0 ] || { echo "gpu_check: the Python packages above are missing"; exit 1; }

# the MNIST comparison of benchmarks/train_compare.py at configs/mnist.py widths (preset gpu),
# every run trained for the same seconds; the script keeps its JSON, plot and samples
# current after every turn, so what the time limit leaves is still a result
timeout 330 "$PY" benchmarks/train_compare.py --preset gpu --data "$MNIST_DIR" --lrs 1e-3,2e-3 \
  --sweep_steps 200 --seeds 0,1 --steps 100000 --eval_every 500 --time_budget 30 \
  --runs_dir "${TMPDIR:-/tmp}/odediff_runs" --out "$OUTDIR" --cache_dir "${TMPDIR:-/tmp}/odediff_cache" \
  2>&1 | grep -v "^WARNING" | tee -a "$OUTDIR/log.txt"
echo "train_compare: exit ${PIPESTATUS[0]} after $(( $(date +%s) - start )) s" | tee -a "$OUTDIR/log.txt"

# the paper table at CelebA 64 (DDIM 50/256 at batch 1, training step at batch 16); its main
# table is written before the solver rows, so a cut leaves the JSON with "solvers": null
left=$(( 560 - ($(date +%s) - start) ))
[ "$left" -lt 60 ] && left=60
timeout "$left" "$PY" benchmarks/paper_table.py --batch 16 --repeats 10 --solvers euler,heun,rk4 \
  --out "$OUTDIR/paper_table.json" 2>&1 | grep -v "^WARNING" | tee -a "$OUTDIR/log.txt"
echo "paper_table: exit ${PIPESTATUS[0]} after $(( $(date +%s) - start )) s" | tee -a "$OUTDIR/log.txt"
# 11 files in $OUTDIR: device.txt, log.txt, paper_table.json, train_compare.{json,png},
# samples_{unet,cunet_rk4,cunet_heun}.{png,npz} (the .npz only once a run was scored)
