"""Checkpoints: a thin wrapper over orbax's CheckpointManager.

Orbax writes each step into a temporary directory and renames it when complete,
so a crash or SIGTERM mid-save never leaves a half-written checkpoint that a
resume would pick up: resuming always starts from the last complete step.
Next to the state we save the config (JSON); on resume it is compared with the
current config, and an incompatible workdir is refused before anything in it
is touched.
"""
from __future__ import annotations

import json
import os
import signal
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from slotcurri_jax import train_state as train_state_lib

# Config keys whose change makes a saved state unusable (shapes or meaning of params).
_COMPATIBILITY_KEYS = (
    'model.encoder.kind', 'model.encoder.variant', 'model.encoder.cnn_patch_size',
    'model.encoder.cnn_features', 'model.slot_dim', 'model.max_slots',
    'model.feature_mlp_hidden', 'model.decoder.hidden', 'model.predictor.num_blocks',
    'model.predictor.num_heads', 'model.predictor.mlp_ratio', 'data.resolution',
    'curriculum.error_window',
)


def _lookup(config_dict: dict, dotted: str):
  value = config_dict
  for part in dotted.split('.'):
    if not isinstance(value, dict) or part not in value:
      return None
    value = value[part]
  return list(value) if isinstance(value, tuple) else value


class Checkpointer:
  """Saves and restores TrainStates under `workdir/checkpoints`."""

  def __init__(self, workdir: str, config, *, async_save: bool = True):
    self.directory = epath.Path(workdir) / 'checkpoints'
    self.config = config
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=config.train.keep_checkpoints,
            create=True,
            enable_async_checkpointing=async_save))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def check_compatible(self) -> None:
    """Raise if the workdir's newest checkpoint was written by an incompatible config."""
    step = self.latest_step()
    if step is None:
      return
    saved = self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))['config']
    current = json.loads(self.config.to_json_best_effort())
    diffs = [f'{k}: saved {_lookup(saved, k)!r} vs now {_lookup(current, k)!r}'
             for k in _COMPATIBILITY_KEYS if _lookup(saved, k) != _lookup(current, k)]
    if diffs:
      raise ValueError(
          f'workdir {self.directory.parent} holds a checkpoint (step {step}) of an incompatible '
          f'config ({"; ".join(diffs)}). Use another --workdir, or restore the old config; '
          'nothing in the workdir was changed.')

  def save(self, state: train_state_lib.TrainState, *, force: bool = False) -> None:
    step = int(jax.device_get(state.step))
    if step in self._manager.all_steps():
      return
    self._manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            config=ocp.args.JsonSave(json.loads(self.config.to_json_best_effort()))),
        force=force)

  def restore(self, abstract_state: train_state_lib.TrainState,
              step: int | None = None) -> train_state_lib.TrainState:
    """Restore into the shardings of `abstract_state` (any device count)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {self.directory}')
    try:
      restored = self._manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
    except (ValueError, KeyError, FileNotFoundError) as e:
      raise ValueError(
          f'checkpoint {self.directory / str(step)} cannot be restored into this model: {e}') from e
    return restored['state']

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def abstract_like(state: Any) -> Any:
  """ShapeDtypeStructs with shardings, the restore target for `state`'s layout."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def resolve_step_dir(path: str) -> epath.Path:
  """The newest complete step directory of a workdir, a checkpoints dir, or a step dir itself."""
  path = epath.Path(os.path.expanduser(str(path)))
  if not path.exists():
    raise FileNotFoundError(f'checkpoint {path} does not exist')
  if (path / 'checkpoints').is_dir():
    path = path / 'checkpoints'
  if (path / 'state').is_dir():
    return path
  steps = sorted(int(p.name) for p in path.iterdir() if p.name.isdigit())
  if not steps:
    raise FileNotFoundError(f'no complete checkpoint step under {path}')
  return path / str(steps[-1])


def load_params(path: str, config=None) -> Any:
  """Model params from any saved form, as host numpy arrays (placement is up to the caller).

  path: a training workdir, its checkpoints dir or one step dir (orbax), or a params
  file: `.npz` of '/'-joined paths (tools.import_reference, tools.convert_dinov2) or
  `.msgpack` (flax.serialization). `config` is unused (kept for symmetry with the importers).
  """
  del config
  p = epath.Path(os.path.expanduser(str(path)))
  if p.is_file() and p.suffix in ('.npz', '.msgpack'):
    try:
      if p.suffix == '.npz':
        from slotcurri_jax.models import encoders
        params = encoders.load_params_npz(p)
      else:
        import flax.serialization
        params = flax.serialization.msgpack_restore(p.read_bytes())
    except Exception as e:  # numpy/msgpack raise several types for unreadable files
      raise ValueError(f'params file {p} is corrupt or unreadable: {str(e).splitlines()[0]}') from e
    params = params['params'] if isinstance(params, dict) and 'params' in params else params
    return jax.tree.map(np.asarray, params)
  step_dir = resolve_step_dir(path)
  try:
    restored = ocp.StandardCheckpointer().restore(step_dir / 'state')
  except Exception as e:  # orbax raises several types for unreadable data
    raise ValueError(f'checkpoint {step_dir} is corrupt or unreadable: {e}') from e
  params = restored['params'] if isinstance(restored, dict) else restored.params
  return jax.tree.map(np.asarray, params)


def check_params(model, params: Any, config, source: str) -> None:
  """Raise if params do not have the tree and shapes of `model` (a config mismatch)."""
  r = config.data.resolution
  expected = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 1, r, r, 3)),
                            jnp.ones((config.model.max_slots,), bool))['params']
  flat_want = {jax.tree_util.keystr(k): v.shape
               for k, v in jax.tree_util.tree_leaves_with_path(expected)}
  flat_got = {jax.tree_util.keystr(k): np.shape(v)
              for k, v in jax.tree_util.tree_leaves_with_path(params)}
  diffs = [f'{k}: missing' for k in flat_want if k not in flat_got]
  diffs += [f'{k}: unexpected' for k in flat_got if k not in flat_want]
  diffs += [f'{k}: {flat_got[k]} vs model {flat_want[k]}' for k in flat_want
            if k in flat_got and tuple(flat_got[k]) != tuple(flat_want[k])]
  if diffs:
    raise ValueError(f'checkpoint {source} does not fit the model of this config '
                     f'({len(diffs)} differences, e.g. {"; ".join(diffs[:4])}); pass the '
                     '--config (and overrides) the checkpoint was trained with')


class PreemptionGuard:
  """SIGTERM (preemption, `kill`, SLURM's time limit) and SIGINT (Ctrl-C) become a flag
  the loop checks after every step: it then saves a checkpoint and exits cleanly. A
  second SIGINT raises KeyboardInterrupt at once (no save; the last checkpoint stands).

  Orbax's own preemption check (`CheckpointManager.reached_preemption`) needs the
  jax.distributed preemption service and sees no signal in a single process, so the
  handlers are installed here; the loop shares the flag across hosts itself.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.requested = False
    self.signal_name = 'SIGTERM'
    self._previous = {}

  def __enter__(self):
    try:
      self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
    except ValueError:  # not the main thread: signals stay with their handlers
      self._previous = {}
    return self

  def _handle(self, signum, frame):
    del frame
    if self.requested and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signal_name = signal.Signals(signum).name
    self.requested = True
    logging.warning('%s received: saving a checkpoint after this step, then exiting%s',
                    self.signal_name,
                    ' (Ctrl-C again exits at once, without saving)' if signum == signal.SIGINT
                    else '')

  def __exit__(self, *exc):
    for s, previous in self._previous.items():
      signal.signal(s, previous if previous is not None else signal.SIG_DFL)
    return False
