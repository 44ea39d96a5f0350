#!/usr/bin/env bash
# Train on a Cloud TPU VM pod slice. Run on EVERY worker at once, e.g.:
#
#   gcloud compute tpus tpu-vm ssh $TPU_NAME --zone=$ZONE --worker=all --command \
#     "cd slotcurri_jax && bash launch/tpu_pod.sh configs/movi_c.py gs://my-bucket/runs/movi_c \
#        --config.data.data_dir=gs://my-bucket/tfds"
#
# Arguments:
#   $1  config file (configs/*.py, optionally with :variant)     [required]
#   $2  workdir, a GCS path shared by all workers (gs://...)      [required]
#   ... further flags passed to slotcurri_jax.main (--config.x=y overrides)
# Environment:
#   SKIP_INSTALL=1    do not (re)install the requirements
#   SKIP_AOT_CHECK=1  train without first compiling the steps for this slice
#   TPU_TYPE=v5p-8    the slice's accelerator type (default: read from the TPU VM metadata)
#   MAX_RESTARTS=100  reruns after an interruption that saved a checkpoint (status 75)
#
# Before training, every worker compiles the run's train and eval steps for this slice on
# its CPU (python -m slotcurri_jax.tools.aot; no chip is used, about one to three minutes):
# a step that does not fit the chips' HBM stops here, with the cheapest options that fit,
# instead of after the job has started.
#
# jax.distributed is initialised automatically on a TPU pod (every worker finds the
# coordinator through the TPU metadata); each worker reads its own shard of the data
# and only worker 0 writes summaries. Checkpoints go through orbax's multi-host path.
# A SIGTERM on any worker (a maintenance event) stops every worker at one saved step with
# exit status 75 (main.py); the loop at the end then runs the same command again, which
# resumes. Ctrl-C or a SIGTERM sent to this script ends the loop after that save.
set -euo pipefail
usage() { sed -n '2,28p' "$0"; exit 2; }
[[ $# -ge 2 ]] || { echo "error: missing arguments (config and workdir)" >&2; usage; }
CONFIG=$1; WORKDIR=$2; shift 2
[[ -f "${CONFIG%%:*}" ]] || { echo "error: config file ${CONFIG%%:*} not found" >&2; exit 2; }
[[ "$WORKDIR" == gs://* ]] || echo "warning: workdir $WORKDIR is not on GCS; every worker must see the same directory" >&2
if [[ "${SKIP_INSTALL:-0}" != 1 ]]; then
  pip install -q -r requirements.txt -e .
  pip install -q -e ".[aot]"  # jax[tpu]: libtpu for the chips and for the check below
fi
if [[ "${SKIP_AOT_CHECK:-0}" != 1 ]]; then
  TPU_TYPE=${TPU_TYPE:-$(curl -sf -H Metadata-Flavor:Google \
    http://metadata.google.internal/computeMetadata/v1/instance/attributes/accelerator-type || true)}
  if [[ -z "$TPU_TYPE" ]]; then
    echo "warning: could not read this slice's accelerator type; set TPU_TYPE=v5p-8 (say) to check that the steps fit" >&2
  else
    overrides=()
    for arg in "$@"; do if [[ "$arg" == --config.* ]]; then overrides+=("$arg"); fi; done
    python -m slotcurri_jax.tools.aot --config="$CONFIG" --topology="$TPU_TYPE" "${overrides[@]}" || {
      echo "error: the AOT check failed for $TPU_TYPE (above); SKIP_AOT_CHECK=1 trains anyway" >&2
      exit 1
    }
  fi
fi
# Ctrl-C reaches python from the terminal (its process group); a SIGTERM sent to this script
# alone is passed on to python, which saves and exits with 75; either ends the loop.
stop=0
child=
trap 'stop=1' INT
trap 'stop=1; [[ -n "$child" ]] && kill -TERM "$child" 2>/dev/null || true' TERM
restarts=0
while true; do
  python -m slotcurri_jax.main --config="$CONFIG" --workdir="$WORKDIR" "$@" &
  child=$!
  while kill -0 "$child" 2>/dev/null; do wait "$child" || true; done  # a trap ends a wait early
  status=0
  wait "$child" || status=$?
  child=
  [[ $status == 75 && $stop == 0 && $restarts -lt ${MAX_RESTARTS:-100} ]] || exit "$status"
  restarts=$((restarts + 1))
  echo "interrupted after saving a checkpoint: resuming (restart $restarts)" >&2
done
