r"""Train and evaluate SlotContrast / SlotCurri (+ SSync) from a config file.

  python -m slotcurri_jax.main --config=configs/demo.py --workdir=/tmp/demo
  python -m slotcurri_jax.main --config=configs/movi_c.py --workdir=gs://bucket/run \
      --config.train.steps=1000 --mode=train_and_eval
  python -m slotcurri_jax.main --config=configs/movi_c.py --mode=eval \
      --checkpoint=/path/to/workdir --workdir=/tmp/eval

On a TPU pod, under SLURM, or with --coordinator_address, jax.distributed is
initialised first; every host then runs the same program on its own data shard.

--help lists the flags, the config's variants and its main keys with their values.
--mode=eval reads the config saved with the checkpoint: a --config that differs in the
method or in what the params mean is refused (each differing key listed), or, with
--use_checkpoint_config, replaced by the saved one (data paths and the eval batch kept).

Exit status:
  0    the run finished (training to train.steps, evaluation to the last video);
  1    a user error (a config key or value, missing data or weights, a bad checkpoint,
       an unwritable workdir): one `error: ...` line on stderr; --debug shows the
       traceback (slotcurri_jax/cli.py);
  75   interrupted (SIGTERM, e.g. preemption or SLURM's time limit, or one Ctrl-C): a
       checkpoint was saved and the same command resumes (EX_TEMPFAIL: try again; the
       launch/ scripts requeue or rerun on it);
  130  a second Ctrl-C: exited at once, without saving.
"""
from __future__ import annotations

import json
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from slotcurri_jax import cli
from slotcurri_jax import errors

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs, metrics.')
_MODE = flags.DEFINE_enum('mode', 'train_and_eval', ['train', 'eval', 'train_and_eval'],
                          'What to run.')
_CHECKPOINT = flags.DEFINE_string('checkpoint', None,
                                  'With --mode=eval: a workdir, checkpoints dir or step dir.')
_USE_CHECKPOINT_CONFIG = flags.DEFINE_bool(
    'use_checkpoint_config', False, "With --mode=eval: evaluate with the checkpoint's saved "
    'config where --config differs in what the params mean (instead of refusing).')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None,
                                   'host:port of process 0 for multi-process runs.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Processes in a multi-process run.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process in a multi-process run.')


def maybe_initialize_distributed(config) -> None:
  """jax.distributed.initialize when launched as one of several processes.

  Explicit flags (or config.distributed) win; otherwise SLURM with several tasks
  and Cloud TPU pods are detected, where jax finds the coordinator itself.
  """
  import jax  # pylint: disable=import-outside-toplevel  (see main)
  dc = config.distributed
  address = _COORDINATOR.value or dc.coordinator_address or None
  num = _NUM_PROCESSES.value if _NUM_PROCESSES.value is not None else dc.num_processes
  pid = _PROCESS_ID.value if _PROCESS_ID.value is not None else dc.process_id
  if address:
    if num is None or num < 1 or pid is None or pid < 0:
      raise errors.UserError('--coordinator_address needs --num_processes and --process_id')
    jax.distributed.initialize(coordinator_address=address, num_processes=num, process_id=pid)
  elif int(os.environ.get('SLURM_NTASKS', '1')) > 1 or os.environ.get('TPU_WORKER_HOSTNAMES', '').count(','):
    jax.distributed.initialize()
  logging.info('process %d of %d, %d local / %d global devices', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  config = cli.config_value(_CONFIG)
  if not _WORKDIR.value:
    raise app.UsageError('--workdir is required')
  cli.check_writable(_WORKDIR.value, 'workdir')
  # jax, TensorFlow and the modules that import them load here, after cli.run has
  # quietened TensorFlow's start-up lines (and flags/config errors answer without them).
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  tf.config.set_visible_devices([], 'GPU')  # TF (the input pipeline) leaves the GPUs to JAX
  maybe_initialize_distributed(config)
  from slotcurri_jax import train  # pylint: disable=import-outside-toplevel
  if _MODE.value == 'eval':
    if not _CHECKPOINT.value:
      raise app.UsageError('--mode=eval needs --checkpoint=PATH')
    results = train.evaluate_checkpoint(config, _CHECKPOINT.value, _WORKDIR.value,
                                        use_checkpoint_config=_USE_CHECKPOINT_CONFIG.value)
  else:
    results = train.train_and_evaluate(config, _WORKDIR.value,
                                       evaluate_at_end=_MODE.value == 'train_and_eval')
  print(json.dumps(results, indent=2), file=sys.stdout)
  if 'preempted_at_step' in results:
    sys.exit(cli.EXIT_INTERRUPTED)  # saved, not finished: the same command resumes


if __name__ == '__main__':
  cli.run(main)
