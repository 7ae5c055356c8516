#!/usr/bin/env bash
# One-GPU check, at most 10 minutes per part:
#   compare (default): the MNIST training comparison of benchmarks.train_compare at
#                      configs/mnist.py widths, every run trained for the same seconds;
#   table:             training and sampling throughput at CelebA 64, cU-Net against the DDPM
#                      U-Net (benchmarks/gpu_table.py), in 540 s;
#   profile:           each model's training step (batch 128, bfloat16) and forward at CelebA 64,
#                      op by op from a profiler trace (benchmarks/op_profile.py).
#
#   bash benchmarks/gpu_check.sh [OUTDIR] [compare|table|profile]   (OUTDIR default: $OUT, else benchmarks/results/gpu)
#
# A run stopped by its time limit resumes when run again on the same machine.
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
case "$PART" in compare|table|profile) ;; *) echo "gpu_check.sh: unknown part '$PART': use compare, table or profile" >&2; exit 2 ;; esac
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
  timeout "$left" "$PY" -m benchmarks.train_compare --preset gpu --data "$MNIST_DIR" --lrs 2e-3,4e-3 \
    --sweep_steps 200 --seeds 0,1 --steps 100000 --eval_every 500 --time_budget 20 \
    --runs_dir "${TMPDIR:-/tmp}/odediff_runs" --out "$OUTDIR" --cache_dir "${TMPDIR:-/tmp}/odediff_cache" \
    2>&1 | grep -v -E "^(WARNING|W[0-9]{4} )" | tee -a "$OUTDIR/log.txt"
  echo "train_compare: exit ${PIPESTATUS[0]} after $(( $(date +%s) - start )) s" | tee -a "$OUTDIR/log.txt"
  # 11 files: device.txt, log.txt, train_compare.{json,md,png}, samples_{unet,cunet_rk4,cunet_heun}.{png,npz}
elif [ "$PART" = profile ]; then
  # benchmarks.op_profile at CelebA 64, the library's build alone: wall time side by side, then
  # each kernel's time by the HLO op that launched it, library kernels (cuDNN, cuBLAS) apart.
  timeout -k 10 "$left" "$PY" -m benchmarks.op_profile --setting celeba64 --batch 128 --compute_dtype bfloat16 \
    --no_lax --repeats 10 --calls 3 --out "$OUTDIR/op_profile" \
    2>&1 | grep -v -E "^(WARNING|W[0-9]{4} )" | tee -a "$OUTDIR/log.txt"
  echo "op_profile: exit ${PIPESTATUS[0]} after $(( $(date +%s) - start )) s" | tee -a "$OUTDIR/log.txt"
  # 4 files: device.txt, log.txt, op_profile/op_profile.{json,md}
else
  # benchmarks.gpu_table at CelebA 64: training steps (batch 128, then 64; bfloat16 and float32),
  # DDIM 50, the training loop on generated JPEGs, then XLA options while time is left, all
  # within 540 s of this script's start; its JSON and Markdown are rewritten after every row, so
  # what the time limit leaves is a result. The training loop's log needs tensorboardX: put its
  # wheel in WHEELS too (pip download tensorboardX --no-deps -d .cache/wheels).
  if ! "$PY" -c "import tensorboardX" 2>/dev/null && compgen -G "$WHEELS/tensorboard[xX]-*.whl" >/dev/null; then
    "$PY" -m pip install --quiet --no-index --no-deps "$WHEELS"/tensorboard[xX]-*.whl || true
  fi
  left=$(( 530 - ($(date +%s) - start) ))
  timeout -k 10 "$left" "$PY" -m benchmarks.gpu_table --out "$OUTDIR" --time_limit $(( left - 15 )) \
    2>&1 | grep -v -E "^(WARNING|W[0-9]{4} )" | tee -a "$OUTDIR/log.txt"
  echo "gpu_table: exit ${PIPESTATUS[0]} after $(( $(date +%s) - start )) s" | tee -a "$OUTDIR/log.txt"
  # 4 files: device.txt, log.txt, gpu_table.json, gpu_table.md
fi
