"""Checkpoints: a thin wrapper over orbax's CheckpointManager.

Orbax writes each step into a temporary directory and renames it when complete,
so a crash or SIGTERM mid-save never leaves a half-written checkpoint that a
resume would pick up. Once the save has finished, the checksums of every file of
the step are written next to it (`checksums.py`); restoring verifies them. A step
that is unreadable, or whose files differ from their checksums (a truncated file,
a disk error, bytes overwritten), is skipped with a warning that names it: training
moves it aside to `checkpoints_unreadable/<step>` and resumes from the newest intact
step; evaluation and inference read the newest intact one and restore the params only.

Next to the state we save the config (JSON) and the curriculum schedule it resolved
to. On resume the saved checkpoint is compared with the current config
(`compat.incompatibilities`); an incompatible workdir is refused, with every
differing key listed, before anything in it is touched. Evaluation and inference
make the same comparison (`compat.config_for_checkpoint`).
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
from typing import Any

from absl import logging
import flax.serialization
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from slotcurri_jax import checksums
from slotcurri_jax import compat
from slotcurri_jax import errors
from slotcurri_jax import params as params_lib
from slotcurri_jax import train_state as train_state_lib
from slotcurri_jax.models import encoders

CHECKPOINT_FORMS = ('--checkpoint takes a training workdir (it holds checkpoints/), its '
                    'checkpoints/ directory, one step directory (checkpoints/<step>/, holding '
                    'state/), or a params file (.npz from tools.import_reference, .msgpack)')
RESOLVED = 'resolved'  # item of a step: what the config resolved to ({'curriculum_schedule'})


def read_json_item(step_dir: epath.Path, item: str) -> Any:
  """The JSON of a step's `item` (orbax's JsonSave writes it to <item>/metadata); None
  when the step has no such item (a checkpoint of an older version)."""
  path = epath.Path(step_dir) / item / 'metadata'
  return json.loads(path.read_text()) if path.exists() else None


def saved_schedule(step_dir: epath.Path) -> list | None:
  """The resolved curriculum schedule saved with a step ([[step, K], ...]), or None."""
  resolved = read_json_item(step_dir, RESOLVED)
  return None if resolved is None else resolved.get('curriculum_schedule')


def verify(step_dir: epath.Path) -> None:
  """Raise checksums.Mismatch unless the step's files match the checksums written with it.

  A step without checksums.json passes, unverified, with a warning: either an older
  version wrote it (no RESOLVED item), or the run stopped after orbax had finalized the
  step (its rename: the step is complete) but before its checksums were written."""
  step_dir = epath.Path(step_dir)
  if checksums.has_checksums(step_dir):
    checksums.verify(step_dir)
  elif (step_dir / RESOLVED).exists():
    logging.warning('checkpoint %s has no checksums (the run stopped right after saving it, '
                    'before they were written): its files are read unverified', step_dir)
  else:
    logging.warning('checkpoint %s has no checksums (an older version wrote it): its files are '
                    'read unverified', step_dir)


class Checkpointer:
  """Saves and restores TrainStates under `workdir/checkpoints`."""

  def __init__(self, workdir: str, config, *, async_save: bool = True):
    self.directory = epath.Path(workdir) / 'checkpoints'
    self.config = config
    self.schedule = compat.resolved_schedule(config)
    self._unsealed: list[int] = []  # steps saved here whose checksums are not written yet
    self._verified: dict[int, Exception | None] = {}  # step -> its checksum failure, if any
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=config.train.keep_checkpoints,
            create=True,
            enable_async_checkpointing=async_save))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def _saved_config(self) -> tuple[int, dict] | None:
    """(step, config) of the newest step whose config reads; None without checkpoints."""
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        restored = self._manager.restore(
            step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
        return step, restored['config']
      except Exception as e:  # orbax raises many types for unreadable files
        logging.warning('checkpoint %s: its config is unreadable (%s)',
                        self.directory / str(step), _first_line(e))
    return None

  def check_compatible(self, model_params: Any = None) -> None:
    """Raise (a user error) if the workdir's newest checkpoint was written by another
    method or by settings that change what its params mean (`compat.incompatibilities`).

    model_params: the model's param tree (arrays or ShapeDtypeStructs), whose shapes
    are compared with the checkpoint's.
    """
    found = self._saved_config()
    if found is None:
      return
    step, saved = found
    saved_shapes = model_shapes = None
    if model_params is not None:
      meta = self._state_metadata(step)
      if meta is not None:  # else unreadable: the restore reports it
        saved_shapes = params_lib.shapes(meta['params'])
        model_shapes = params_lib.shapes(model_params)
    try:
      schedule = saved_schedule(self.directory / str(step))
    except (OSError, ValueError):  # unreadable: the restore reports it; rebuilt from the config
      schedule = None
    diffs = compat.incompatibilities(saved, self.config, saved_schedule=schedule,
                                     saved_shapes=saved_shapes, model_shapes=model_shapes)
    if diffs:
      self.close()
      raise compat.refusal(
          f'workdir {self.directory.parent} holds a checkpoint (step {step}) '
          f'{compat.ANOTHER_METHOD}', diffs,
          'Use another --workdir, or pass the saved settings; nothing in the workdir was '
          'changed.')

  def save(self, state: train_state_lib.TrainState, *, force: bool = False) -> None:
    step = int(jax.device_get(state.step))
    if step in self._manager.all_steps():
      return
    self._seal()  # the previous save has finished: its checksums first
    self._verified.pop(step, None)  # a step moved aside and now written again
    self._manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            config=ocp.args.JsonSave(json.loads(self.config.to_json_best_effort())),
            **{RESOLVED: ocp.args.JsonSave({'curriculum_schedule': self.schedule})}),
        force=force)
    self._unsealed.append(step)

  def _seal(self) -> None:
    """Wait for the saves in flight, then write each one's checksums (process 0)."""
    if not self._unsealed:
      return
    self._manager.wait_until_finished()
    if jax.process_index() == 0:
      for step in self._unsealed:
        step_dir = self.directory / str(step)
        if step_dir.exists():  # not already removed by max_to_keep
          checksums.write(step_dir)
    self._unsealed = []

  def restore(self, abstract_state: train_state_lib.TrainState,
              step: int | None = None) -> train_state_lib.TrainState:
    """Restore into the shardings of `abstract_state` (any device count).

    step None: the newest intact step. Unreadable newer steps are moved aside to
    `checkpoints_unreadable/<step>` (process 0) with a warning, so that training can
    write those steps again.
    """
    steps = sorted(self._manager.all_steps(), reverse=True) if step is None else [step]
    if not steps:
      raise errors.UserError(f'no checkpoint in {self.directory}')
    self._check_state_fields(steps[0])
    failures = []
    for s in steps:
      try:
        self._verify(s)
        restored = self._manager.restore(
            s, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
      except Exception as e:  # orbax/tensorstore raise many types for unreadable data
        failures.append(f'step {s}: {_first_line(e)}')
        if step is not None:
          break
        logging.warning('checkpoint %s is unreadable (%s); skipping it',
                        self.directory / str(s), _first_line(e))
        continue
      if failures:
        self._move_aside([int(f.split(':')[0].split()[1]) for f in failures])
        logging.warning('resuming from step %d, the newest intact checkpoint', s)
      return restored['state']
    self.close()  # no teardown noise from orbax's threads after the message
    raise errors.UserError(f'no readable checkpoint in {self.directory} ('
                           + '; '.join(failures) + '). Use another --workdir, or delete the '
                           'unreadable steps to start again.')

  def _verify(self, step: int) -> None:
    """`verify` of a step, its files read once per run (the compatibility check, the
    state-field check and the restore all ask about the newest step)."""
    if step not in self._verified:
      try:
        verify(self.directory / str(step))
        self._verified[step] = None
      except checksums.Mismatch as e:
        self._verified[step] = e
    if self._verified[step] is not None:
      raise self._verified[step]

  def _state_metadata(self, step: int) -> dict | None:
    """The tree metadata of a step's train state; None when its files fail their checksums
    or the metadata does not read. Checked before orbax reads anything: tensorstore reading
    a corrupt step leaves threads that print tracebacks after the error is handled."""
    step_dir = self.directory / str(step)
    try:
      self._verify(step)
      with ocp.PyTreeCheckpointer() as checkpointer:
        return _tree(checkpointer.metadata(step_dir / 'state'))
    except Exception:  # pylint: disable=broad-except  (orbax raises many types)
      return None

  def _check_state_fields(self, step: int) -> None:
    """A checkpoint whose train state has other top-level fields was written by another
    version of slotcurri_jax: say so (and that its params still evaluate) instead of
    treating it as unreadable and moving it aside."""
    meta = self._state_metadata(step)
    if meta is None:  # unreadable: the restore reports it
      return
    saved = set(meta)
    want = {f.name for f in dataclasses.fields(train_state_lib.TrainState) if f.name != 'tx'}
    if saved != want:
      self.close()
      raise errors.UserError(
          f'checkpoint {self.directory / str(step)} was written by another version of '
          f'slotcurri_jax (its train state has {sorted(saved)}, this version {sorted(want)}), '
          'so training cannot resume from it. Train in a new --workdir; --mode=eval and '
          f'infer still read its params (--checkpoint={self.directory / str(step)}). Nothing '
          'in the workdir was changed.')

  def _move_aside(self, steps: list[int]) -> None:
    aside = self.directory.parent / 'checkpoints_unreadable'
    for s in steps:
      self._verified.pop(s, None)
    if jax.process_index() == 0:
      aside.mkdir(exist_ok=True)
      for s in steps:
        target = aside / str(s)
        if target.exists():
          target = aside / f'{s}.{len(list(aside.iterdir()))}'
        (self.directory / str(s)).rename(target)
        logging.warning('moved the unreadable checkpoint step %d to %s', s, target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices('checkpoint_move_aside')
    self._manager.reload()

  def reached_preemption(self, step: int) -> bool:
    """Several processes: whether every host has reached the step jax's preemption
    service chose after a SIGTERM (False in one process, or with the service off)."""
    return self._manager.reached_preemption(step)

  def close(self) -> None:
    """Finish the saves in flight and write their checksums; closing twice is harmless."""
    self._seal()
    self._manager.wait_until_finished()
    self._manager.close()


def _first_line(error: BaseException, limit: int = 160) -> str:
  """'Type: first line' of an error, without TensorStore's pointer to its details."""
  text = str(error).strip()
  line = text.splitlines()[0] if text else ''
  line = line.split(' See full TensorStore details')[0]
  return f'{type(error).__name__}: {line[:limit]}{"..." if len(line) > limit else ""}'


def _tree(metadata: Any) -> Any:
  """The pytree of an orbax metadata object (older versions return the tree itself)."""
  tree = getattr(metadata, 'item_metadata', metadata)
  return getattr(tree, 'tree', tree)


def abstract_like(state: Any) -> Any:
  """ShapeDtypeStructs with shardings, the restore target for `state`'s layout."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def _steps_in(path: epath.Path) -> list[int]:
  return sorted((int(p.name) for p in path.iterdir() if p.name.isdigit() and p.is_dir()),
                reverse=True)


def step_dirs(path: str) -> list[epath.Path]:
  """Candidate step directories, newest first: a workdir's or checkpoints dir's complete
  steps, or a step dir itself. Raises a user error naming the accepted forms."""
  path = epath.Path(os.path.expanduser(str(path)))
  if not path.exists():
    raise errors.mark(FileNotFoundError(f'checkpoint {path} does not exist. {CHECKPOINT_FORMS}.'))
  if not path.is_dir():
    raise errors.mark(NotADirectoryError(f'{path} is not a checkpoint: it is a file without the '
                                      f'.npz/.msgpack suffix. {CHECKPOINT_FORMS}.'))
  if (path / 'checkpoints').is_dir():
    path = path / 'checkpoints'
  if (path / 'state').is_dir():
    return [path]
  steps = _steps_in(path)
  if not steps:
    raise errors.mark(FileNotFoundError(f'no checkpoint step under {path}. {CHECKPOINT_FORMS}.'))
  return [path / str(s) for s in steps]


def restore_params(step_dir: epath.Path) -> tuple[Any, int]:
  """(params, step) of one step's saved TrainState, as numpy: the params and the state's
  own step counter (not the folder's name), without the optimizer state."""
  with ocp.PyTreeCheckpointer() as checkpointer:
    meta = _tree(checkpointer.metadata(step_dir / 'state'))
    wanted = {'params': meta['params'], 'step': meta['step']}
    item = jax.tree.map(lambda m: np.zeros((0,), m.dtype), wanted)
    restore_args = jax.tree.map(lambda m: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
    restored = checkpointer.restore(step_dir / 'state', args=ocp.args.PyTreeRestore(
        item=item, restore_args=restore_args, partial_restore=True))
  return restored['params'], int(restored['step'])


@dataclasses.dataclass(frozen=True)
class Loaded:
  """Params read from a checkpoint or a params file, and what was saved with them."""
  params: Any  # host numpy arrays of the model's tree
  step: int  # the saved TrainState's step; 0 for a params file
  source: str  # the step directory or file read
  config: dict | None = None  # the config the checkpoint was trained with (JSON)
  schedule: list | None = None  # its resolved curriculum schedule, [[step, K], ...]


def load_params(path: str, config=None) -> Any:
  """Model params from any saved form, as host numpy arrays (see `load`).
  `config` is unused (kept for symmetry with the importers)."""
  return load(path).params


def load(path: str) -> Loaded:
  """Params (host numpy; placement is up to the caller), step and saved config.

  path: a training workdir, its checkpoints dir or one step dir (orbax; the newest
  intact step whose checksums match, params only), or a params file: `.npz` of
  '/'-joined paths (tools.import_reference, tools.convert_dinov2) or `.msgpack`
  (flax.serialization), which carry no step and no config.
  """
  p = epath.Path(os.path.expanduser(str(path)))
  if p.is_file() and p.suffix in ('.npz', '.msgpack'):
    try:
      if p.suffix == '.npz':
        params = encoders.load_params_npz(p)
      else:
        params = flax.serialization.msgpack_restore(p.read_bytes())
    except Exception as e:  # numpy/msgpack raise several types for unreadable files
      raise errors.mark(ValueError(f'params file {p} is corrupt or unreadable: '
                                   f'{str(e).splitlines()[0]}')) from e
    params = params['params'] if isinstance(params, dict) and 'params' in params else params
    return Loaded(jax.tree.map(np.asarray, params), 0, str(p))
  candidates = step_dirs(path)
  failures = []
  for step_dir in candidates:
    try:
      verify(step_dir)
      params, step = restore_params(step_dir)
      config, schedule = read_json_item(step_dir, 'config'), saved_schedule(step_dir)
    except Exception as e:  # orbax raises several types for unreadable data
      failures.append(f'{step_dir}: {_first_line(e)}')
      if len(candidates) > 1:
        logging.warning('checkpoint %s is unreadable (%s); trying the previous step', step_dir,
                        _first_line(e))
      continue
    if failures:
      logging.warning('using %s, the newest intact checkpoint', step_dir)
    return Loaded(jax.tree.map(np.asarray, params), step, str(step_dir), config, schedule)
  raise errors.mark(ValueError('no readable checkpoint: ' + '; '.join(failures)))


class PreemptionGuard:
  """Decides the step at which a signalled run saves a checkpoint and exits.

  One process: SIGTERM (preemption, `kill`, SLURM's time limit) and SIGINT (Ctrl-C) set
  a flag, and `reached(step)` is true after the step in flight.

  Several processes (jax.distributed): jax's preemption service, started by
  jax.distributed.initialize, catches SIGTERM on any host, tells the others through
  the coordination service and picks one step at which every host stops; orbax's
  `CheckpointManager.reached_preemption(step)` says when that step is reached, so no
  step pays a cross-host collective. Ctrl-C on a host is passed on to that process as
  SIGTERM and takes the same path. With jax_enable_preemption_service off, no handler
  is installed: a signal ends the process and the last checkpoint stands.

  A second Ctrl-C raises KeyboardInterrupt at once (no save; the last checkpoint stands).
  """

  def __init__(self, checkpointer: 'Checkpointer'):
    self._checkpointer = checkpointer
    self._multi_process = jax.process_count() > 1
    self.requested = False
    self.signal_name = 'preemption' if self._multi_process else 'SIGTERM'
    self._previous = {}

  def reached(self, step: int) -> bool:
    """Whether the run must save and exit after `step` (called after every step)."""
    if self._multi_process:
      return self._checkpointer.reached_preemption(step)
    return self.requested

  def __enter__(self):
    if not self._multi_process:
      signals = (signal.SIGTERM, signal.SIGINT)
    elif jax.config.jax_enable_preemption_service:
      signals = (signal.SIGINT,)  # SIGTERM stays with jax's preemption service
    else:
      signals = ()
    try:
      self._previous = {s: signal.signal(s, self._handle) for s in signals}
    except ValueError:  # not the main thread: signals stay with their handlers
      self._previous = {}
    return self

  def _handle(self, signum, frame):
    del frame
    if self.requested and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.requested = True
    when = ('at a step every host agrees on' if self._multi_process else 'after this step')
    logging.warning('%s received: saving a checkpoint %s, then exiting%s',
                    signal.Signals(signum).name, when,
                    ' (Ctrl-C again exits at once, without saving)' if signum == signal.SIGINT
                    else '')
    if self._multi_process:
      signal.raise_signal(signal.SIGTERM)  # to the preemption service: every host stops
    else:
      self.signal_name = signal.Signals(signum).name

  def __exit__(self, *exc):
    for s, previous in self._previous.items():
      signal.signal(s, previous if previous is not None else signal.SIG_DFL)
    return False
