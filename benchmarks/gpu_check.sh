#!/usr/bin/env bash
# One command for a machine with an NVIDIA GPU (under 8 minutes on one H100-class GPU, planned;
# not yet run on a GPU by us):
#
#   benchmarks/gpu_check.sh [--cpu] [--skip-install] [--out FILE]
#
# 1. installs the jax[cuda12] wheel of the jax version already installed (skip: --skip-install);
# 2. runs every golden fixture with float32 matmuls at "highest" precision;
# 3. times the train step of the full MOVi-C model (DINOv2 ViT-S/14, random weights, 336 px,
#    uint8 frames resized on device) at per-device batches 8, 32 and the largest that fits, in
#    float32 and bfloat16: step time, MFU against the GPU's dense bf16 peak, device memory,
#    compile time;
# 4. trains the demo for 300 steps and evaluates it;
# and writes one JSON (default benchmarks/results/gpu_check_gpu.json). benchmarks/gpu_check.py
# does steps 2-4. --cpu is a dry run on any machine (no install; a tiny demo model, 2 fixtures,
# a few steps: benchmarks/gpu_check.py says which) that tests this logic in CI
# (tests/test_gpu_check.py): 100-115 s cold, 58-66 s from the compilation cache, measured on 2 cores
# that other jobs shared (load average 2-3).
set -euo pipefail

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; }
CPU=0
INSTALL=1
OUT=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --cpu) CPU=1 ;;
    --skip-install) INSTALL=0 ;;
    --out) OUT="$2"; shift ;;
    --out=*) OUT="${1#--out=}" ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PYTHON="${PYTHON:-python}"
MODE=$([[ $CPU == 1 ]] && echo cpu || echo gpu)
OUT="${OUT:-$REPO/benchmarks/results/gpu_check_$MODE.json}"
START=$(date +%s)
export TF_CPP_MIN_LOG_LEVEL=3
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"  # this checkout, whatever is installed

if [[ $CPU == 1 ]]; then
  export JAX_PLATFORMS=cpu
  # Fast compiles (LLVM's optimisations off: the dry run's times mean nothing), and reruns (CI)
  # load the compiled steps from JAX's persistent compilation cache.
  export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_backend_optimization_level=0"
  CACHE="${JAX_COMPILATION_CACHE_DIR:-$HOME/.cache/slotcurri_jax/gpu_check_cpu}"
  export JAX_COMPILATION_CACHE_DIR="$CACHE"
  export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="${JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS:-0.5}"
  echo "gpu_check.sh --cpu: dry run on the CPU (no CUDA install, tiny sizes, cache $CACHE)"
else
  if ! command -v nvidia-smi > /dev/null; then
    echo "gpu_check.sh: no nvidia-smi, so no NVIDIA GPU here; --cpu runs the dry run" >&2
    exit 1
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  if [[ $INSTALL == 1 ]]; then
    JAX_VERSION="$("$PYTHON" -c 'import jax; print(jax.__version__)')"
    echo "installing jax[cuda12]==$JAX_VERSION ..."
    "$PYTHON" -m pip install --quiet "jax[cuda12]==$JAX_VERSION"
  fi
  export JAX_PLATFORMS=cuda
  "$PYTHON" -c 'import jax; d = jax.devices()[0]; assert d.platform == "gpu", d; print("jax sees", d.device_kind, "x", jax.device_count())'
  # TensorFlow (the input pipeline) must not take the GPU's memory.
  export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0}"
  export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
fi

ARGS=(--out "$OUT")
[[ $CPU == 1 ]] && ARGS+=(--cpu)
STATUS=0
"$PYTHON" benchmarks/gpu_check.py "${ARGS[@]}" || STATUS=$?
echo "gpu_check.sh: $(( $(date +%s) - START )) s, exit $STATUS, report $OUT"
exit $STATUS
