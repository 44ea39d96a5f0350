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
#   SKIP_INSTALL=1  do not (re)install the requirements
#
# jax.distributed is initialised automatically on a TPU pod (every worker finds the
# coordinator through the TPU metadata); each worker reads its own shard of the data
# and only worker 0 writes summaries. Checkpoints go through orbax's multi-host path.
set -euo pipefail
usage() { sed -n '2,19p' "$0"; exit 2; }
[[ $# -ge 2 ]] || { echo "error: missing arguments (config and workdir)" >&2; usage; }
CONFIG=$1; WORKDIR=$2; shift 2
[[ -f "${CONFIG%%:*}" ]] || { echo "error: config file ${CONFIG%%:*} not found" >&2; exit 2; }
[[ "$WORKDIR" == gs://* ]] || echo "warning: workdir $WORKDIR is not on GCS; every worker must see the same directory" >&2
if [[ "${SKIP_INSTALL:-0}" != 1 ]]; then
  pip install -q -r requirements.txt -e .
  pip install -q "jax[tpu]==0.10.2"
fi
exec python -m slotcurri_jax.main --config="$CONFIG" --workdir="$WORKDIR" "$@"
