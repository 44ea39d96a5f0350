"""Does a checkpoint fit a config? The one check behind resume, evaluation and inference.

A checkpoint carries the config it was trained with (JSON) and, since checksums came in,
the curriculum schedule resolved from it. `incompatibilities` lists every difference
that changes what the params mean: the method, the model, the losses, the curriculum
(keys and the resolved schedule), SSync, the data's name / resolution / clip length,
and the param shapes. Training refuses to resume such a workdir; evaluation and
inference refuse such a checkpoint, or with `--use_checkpoint_config` take the saved
config instead (`config_for_checkpoint`), keeping only this machine's own settings
(`LOCAL`: data paths, eval batch, mesh, weights path).
"""
from __future__ import annotations

import copy
import json
from typing import Any, Sequence

from absl import logging
import ml_collections

from slotcurri_jax import curriculum
from slotcurri_jax import errors
from slotcurri_jax import params as params_lib

# Config sections and keys whose values define the method and what the params mean.
MEANING = ('method', 'model', 'loss', 'curriculum', 'ssync', 'data.name', 'data.resolution',
           'data.train_clip_len', 'data.synthetic')
# ... except these, which change speed, memory or initialisation only (the restored
# params replace the initial ones), never what a trained param means.
NOT_MEANING = ('model.compute_dtype', 'model.encoder.dtype', 'model.decoder.remat',
               'model.encoder.weights', 'model.encoder.random_init', 'model.init_gains')
# Settings of this machine and this evaluation, kept from --config when the checkpoint's
# config is used: where the data and weights are, how they are read and sharded.
LOCAL = ('data.data_dir', 'data.ytvis.manual_dir', 'data.eval_batch_size',
         'data.num_eval_videos', 'data.prefetch', 'data.preprocess_on_device',
         'data.read_retries', 'data.read_backoff_s', 'data.video_folder',
         'model.encoder.weights', 'eval.steps', 'mesh', 'distributed')
# The curriculum keys that only make the schedule: compared through the resolved schedule.
SCHEDULE_KEYS = ('curriculum.schedule', 'curriculum.stage_fractions',
                 'curriculum.first_num_slots')
SHOWN = 12  # differing keys listed in a refusal


def flatten(tree: dict, prefix: str = '') -> dict[str, Any]:
  """{"a.b.c": value} of a nested dict (tuples as lists, as they read back from JSON)."""
  flat = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      flat.update(flatten(v, f'{prefix}{k}.'))
    else:
      flat[f'{prefix}{k}'] = list(v) if isinstance(v, tuple) else v
  return flat


def _inside(key: str, prefixes: Sequence[str]) -> bool:
  return any(key == p or key.startswith(p + '.') for p in prefixes)


def _meaningful(key: str) -> bool:
  return _inside(key, MEANING) and not _inside(key, NOT_MEANING)


def _as_json(value: Any) -> Any:
  """Tuples as lists, recursively (how a schedule reads back from JSON)."""
  return [_as_json(v) for v in value] if isinstance(value, (list, tuple)) else value


def resolved_schedule(config) -> list:
  """The curriculum schedule of `config` as saved with a checkpoint: [[step, K], ...]."""
  return _as_json(curriculum.build_schedule(config.curriculum, config.model.max_slots,
                                            config.train.steps))


def _schedule_of_old_checkpoint(saved_config: dict) -> list | None:
  """A checkpoint written before schedules were saved: its schedule rebuilt from its config."""
  try:
    return resolved_schedule(ml_collections.ConfigDict(saved_config))
  except Exception:  # an odd old config: its keys are compared one by one anyway  # pylint: disable=broad-except
    return None


def incompatibilities(saved_config: dict, config, *, saved_schedule: list | None = None,
                      saved_shapes: dict | None = None,
                      model_shapes: dict | None = None) -> list[str]:
  """Why a checkpoint of `saved_config` (JSON dict) does not fit `config`, one line per key.

  saved_schedule: the resolved schedule saved with the checkpoint (None: an older
  checkpoint; rebuilt from its config). saved_shapes / model_shapes: '/'-joined param
  path -> shape, of the checkpoint and of the model built from `config`. Keys missing
  from the saved config (written by an older version) are not compared.
  """
  flat_saved = flatten(saved_config)
  flat_now = flatten(json.loads(config.to_json_best_effort()))
  if saved_schedule is None:
    saved_schedule = _schedule_of_old_checkpoint(saved_config)
  schedule = resolved_schedule(config)
  same_schedule = saved_schedule is not None and _as_json(saved_schedule) == schedule
  diffs = [f'{k}: saved {flat_saved[k]!r}, now {flat_now.get(k)!r}'
           for k in sorted(flat_saved) if _meaningful(k) and flat_saved[k] != flat_now.get(k)
           and not (same_schedule and _inside(k, SCHEDULE_KEYS))]
  if (saved_schedule is not None and not same_schedule
      and not any(k.startswith('curriculum.') for k in diffs)):
    diffs.append(f'curriculum schedule (from train.steps={flat_saved.get("train.steps")!r}): '
                 f'saved {_as_json(saved_schedule)}, now {schedule} (set '
                 f'config.curriculum.schedule={_as_json(saved_schedule)} to keep the saved one)')
  if saved_shapes is not None and model_shapes is not None:
    params = params_lib.differences(saved_shapes, model_shapes, given_name='saved')
    if params:
      diffs.append(f'param shapes: {len(params)} differ, e.g. {"; ".join(params[:2])}')
  return diffs


ANOTHER_METHOD = 'of another method or of settings that change what its params mean'


def refusal(head: str, diffs: list[str], fix: str) -> errors.UserError:
  """The user error: `head`, then `diffs` one per line (at most SHOWN), then `fix`."""
  shown = diffs[:SHOWN] + ([f'... and {len(diffs) - SHOWN} more'] if len(diffs) > SHOWN else [])
  return errors.UserError(f'{head}:\n  ' + '\n  '.join(shown) + f'\n{fix}')


def _with_saved_values(config, saved_config: dict):
  """(A copy of `config` with every key of `saved_config` except the LOCAL ones, the keys
  whose values that replaced)."""
  out, replaced = copy.deepcopy(config), []
  for key, value in flatten(saved_config).items():
    if _inside(key, LOCAL):
      continue
    *parents, name = key.split('.')
    node = out
    try:
      for p in parents:
        node = node[p]
      current = node[name]
    except (KeyError, AttributeError):  # a key this version no longer has
      continue
    if _as_json(value) != _as_json(current):
      node[name] = _as_tuple(value) if isinstance(current, tuple) else value
      replaced.append(key)
  return out, replaced


def _as_tuple(value: Any) -> Any:
  return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def config_for_checkpoint(config, source: str, step: int, saved_config: dict | None,
                          saved_schedule: list | None, *, use_saved: bool):
  """The config to evaluate (or segment with) the checkpoint `source` at `step`.

  `config` itself when the checkpoint fits it (or carries no config: a params file, a
  checkpoint of an early version); a user error listing the differences when it does
  not; with `use_saved`, `config` with the saved values instead (LOCAL keys kept),
  announced in one log line.
  """
  if saved_config is None:
    return config
  diffs = incompatibilities(saved_config, config, saved_schedule=saved_schedule)
  if not diffs:
    return config
  if not use_saved:
    raise refusal(f'checkpoint {source} (step {step}) is {ANOTHER_METHOD}', diffs,
                  'Pass the --config (and overrides) it was trained with, or '
                  "--use_checkpoint_config to use the checkpoint's own config.")
  keys = [d.split(':')[0] for d in diffs]
  saved, replaced = _with_saved_values(config, saved_config)
  others = [k for k in replaced if k not in keys]
  logging.warning("using the config saved with checkpoint %s (step %d), not --config, which "
                  'differs in %s%s', source, step, ', '.join(keys),
                  f' (also taken from the checkpoint: {", ".join(others)})' if others else '')
  return saved
