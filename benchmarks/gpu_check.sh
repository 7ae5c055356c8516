#!/usr/bin/env bash
# One-GPU check, at most 10 minutes per part:
#   compare (default): the MNIST training comparison of benchmarks/train_compare.py at
#                      configs/mnist.py widths, every run trained for the same seconds;
#   table:             the paper table at CelebA 64 (cU-Net against the DDPM U-Net).
#
#   bash benchmarks/gpu_check.sh [OUTDIR] [compare|table]   (OUTDIR default: $OUT, else benchmarks/results/gpu)
#
# Compilation dominates on a GPU: on one H100 (jax 0.11.2) the comparison's start (data,
# feature classifier, floor) took ~90 s, each of the six learning-rate sweep runs ~30 s
# for 200 steps, and the paper table ~4 minutes for its first two forward compilations.
# On a fresh machine the comparison then needed ~12 minutes in all: the first run stopped at
# its limit with every result so far written; the same command run again on that machine
# (its checkpoints and compilation cache under TMPDIR) resumed and finished in 146 s. Each
# model now compiles its step once for all its sweep rates and seeds (3 compilations, not
# 9), and on a fresh H200 the whole comparison ran in 437 s. Should a run stop at its
# limit, run it again on the same machine: it resumes.
#
# Needs python3 with jax for the GPU (CUDA), flax, diffrax, optax, orbax-checkpoint, grain,
# ml_collections, scikit-learn and matplotlib, and MNIST's IDX files. Without network
# access, put wheels of the missing packages in WHEELS (for Python 3.12, say: grain,
# array_record and portpicker as manylinux x86_64 wheels, ml_collections) and copy the IDX
# files next to the repository, e.g.:
#   mkdir -p .cache/wheels .cache/mnist && cp <mnist dir>/*.gz .cache/mnist/
#   pip download ml_collections portpicker --no-deps -d .cache/wheels
#   pip download grain array_record --no-deps --only-binary=:all: --python-version 3.12 \
#     --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .cache/wheels
# Environment: WHEELS (default .cache/wheels), MNIST_DIR (default .cache/mnist, else
# ../shared/data/mnist), PYTHON (default: .venv/bin/python if present, else python3).
set -uo pipefail
start=$(date +%s)
cd "$(dirname "$0")/.."
OUTDIR="${1:-${OUT:-benchmarks/results/gpu}}"
PART="${2:-compare}"
case "$PART" in compare|table) ;; *) echo "gpu_check.sh: unknown part '$PART': use compare or table" >&2; exit 2 ;; esac
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
left=$(( 570 - ($(date +%s) - start) ))

if [ "$PART" = compare ]; then
  # JSON, plot and samples are kept current after every turn, so what the time limit leaves is a result
  timeout "$left" "$PY" benchmarks/train_compare.py --preset gpu --data "$MNIST_DIR" --lrs 2e-3,4e-3 \
    --sweep_steps 200 --seeds 0,1 --steps 100000 --eval_every 500 --time_budget 20 \
    --runs_dir "${TMPDIR:-/tmp}/odediff_runs" --out "$OUTDIR" --cache_dir "${TMPDIR:-/tmp}/odediff_cache" \
    2>&1 | grep -v -E "^(WARNING|W[0-9]{4} )" | tee -a "$OUTDIR/log.txt"
  echo "train_compare: exit ${PIPESTATUS[0]} after $(( $(date +%s) - start )) s" | tee -a "$OUTDIR/log.txt"
  # 11 files: device.txt, log.txt, train_compare.{json,md,png}, samples_{unet,cunet_rk4,cunet_heun}.{png,npz}
else
  # DDIM 50/256 at batch 1, training step at batch 16; the main table's JSON is written
  # before the solver rows, so a cut there leaves it with "solvers": null
  timeout "$left" "$PY" benchmarks/paper_table.py --batch 16 --repeats 10 --solvers euler,heun,rk4 \
    --out "$OUTDIR/paper_table.json" 2>&1 | grep -v -E "^(WARNING|W[0-9]{4} )" | tee -a "$OUTDIR/log.txt"
  echo "paper_table: exit ${PIPESTATUS[0]} after $(( $(date +%s) - start )) s" | tee -a "$OUTDIR/log.txt"
fi
