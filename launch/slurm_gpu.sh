#!/usr/bin/env bash
# Multi-node GPU training under SLURM: one task per node, all GPUs of the node per task.
#
#   sbatch --nodes=2 --ntasks-per-node=1 --gpus-per-node=8 --cpus-per-task=32 \
#     launch/slurm_gpu.sh configs/movi_c.py /shared/runs/movi_c --config.data.data_dir=/shared/tfds
#
# Arguments:
#   $1  config file (configs/*.py, optionally with :variant)  [required]
#   $2  workdir on a filesystem shared by all nodes            [required]
#   ... further flags passed to slotcurri_jax.main
# Environment:
#   VENV=path   virtualenv to activate (default: .venv; created and installed if missing)
#
# srun starts one process per node; main.py sees SLURM_NTASKS > 1 and calls
# jax.distributed.initialize(), which reads the coordinator, process count and id
# from SLURM's environment.
#SBATCH --job-name=slotcurri
#SBATCH --output=slotcurri-%j.out
#SBATCH --signal=TERM@120
#SBATCH --requeue
set -euo pipefail
usage() { sed -n '2,18p' "$0"; exit 2; }
[[ $# -ge 2 ]] || { echo "error: missing arguments (config and workdir)" >&2; usage; }
CONFIG=$1; WORKDIR=$2; shift 2
[[ -f "${CONFIG%%:*}" ]] || { echo "error: config file ${CONFIG%%:*} not found" >&2; exit 2; }
command -v srun >/dev/null || { echo "error: srun not found: submit this script with sbatch" >&2; exit 2; }
VENV=${VENV:-.venv}
if [[ ! -d "$VENV" ]]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q -r requirements.txt -e .
  "$VENV/bin/pip" install -q "jax[cuda12]==0.10.2"
fi
# --signal=TERM@120 above: SLURM sends SIGTERM 2 minutes before the time limit (and a
# preemption sends one too); the training loop writes a final checkpoint and exits with
# status 75 (main.py: interrupted, saved). The job is then requeued: it runs this script
# again and resumes from that checkpoint. Status 0 is a finished run, 1 a user error.
# A SIGTERM to this batch shell (a preemption signals every process of the job) must not
# end it before srun returns: the trap keeps it alive to requeue; srun passes the signal on.
trap 'echo "SIGTERM: waiting for the run to save its checkpoint" >&2' TERM
status=0
srun --kill-on-bad-exit=1 "$VENV/bin/python" -m slotcurri_jax.main \
  --config="$CONFIG" --workdir="$WORKDIR" "$@" || status=$?
if [[ $status == 75 ]]; then
  echo "interrupted after saving a checkpoint: requeueing job $SLURM_JOB_ID to resume" >&2
  scontrol requeue "$SLURM_JOB_ID"
fi
exit "$status"
