"""Replay a whole-run golden fixture through the train step that trains, and compare.

A trajectory fixture (fixtures/trajectory/*.npz, fixtures/README.md) records S optimizer
updates of the original code on precomputed tokens: initial params, the token batches,
the spawn directions, and per update the losses, LR, gradient norm, clip, active slot
count, update norm; the captured slot errors and spawned placeholders; params after each
boundary and at the end; for SSync the per-step labels and region masks.

`replay` builds the run exactly as `python -m slotcurri_jax.main` does (`train.Run`,
`train.create_state`, `train.stage_train_steps`: the objective, curriculum, SSync gate,
clip, Adam and LR schedule of a config), with the fixture's sizes and hyperparameters read
from its `config` (nothing is hard-coded, so held-back sets with other seeds, sizes,
lengths and clips replay the same way). Only three things come from the fixture: the
initial params (through the reference-key import), the token batches (the 'tokens'
encoder, as a user with precomputed backbone features trains), and the spawn directions
(batch['spawn_directions']). `check_trajectory` then compares every quantity of the
fixture README's tolerance table, per step, and yields one record per quantity.

Both train steps are replayed (`TRAIN_STEPS`): the padded one (all max_slots rows,
inactive ones masked; one compilation) and `train.active_slots_only` (only the stage's
rows; one compilation per stage), which promises the same losses, so the same
tolerances apply.

`drift` measures, without any tolerance, how far a replay with another compute dtype
(bfloat16) strays from the float32 fixture; from the command line:

  python -m slotcurri_jax.tools.trajectory --dtype=bfloat16 [--train_step=padded] [FILE.npz ...]

prints, per file and update, the relative deviation of each loss term and of the
gradient norm, their maxima (relative and absolute), and the relative L2 deviation of
the final parameters per tensor (fixtures/README.md, "bfloat16").
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from typing import Any, Iterator

import jax
import numpy as np

from slotcurri_jax import config as config_lib
from slotcurri_jax import fixtures
from slotcurri_jax import parallel
from slotcurri_jax import train
from slotcurri_jax.tools import import_reference

KINDS = ('slotcurri_trajectory', 'ssync_trajectory')
TRAIN_STEPS = ('padded', 'active_slots_only')
LABEL_KEYS = ('labels_enc', 'labels_dec', 'labels_enc_merged', 'labels_dec_merged',
              'boundary_mask', 'interior_mask')
_OUR_AUX = {'boundary_mask': 'boundary', 'interior_mask': 'interior'}


class FixtureError(ValueError):
  """A trajectory fixture that cannot be replayed (missing key, sizes, settings)."""


def _need(cfg: dict, *path: str) -> Any:
  value = cfg
  for part in path:
    if not isinstance(value, dict) or part not in value:
      raise FixtureError(f'config has no {".".join(path)!r}')
    value = value[part]
  return value


def trajectory_config(cfg: dict):
  """Our config for a trajectory fixture's run (every number from the fixture's config)."""
  method = _need(cfg, 'method')
  if method not in ('slotcurri', 'ssync'):
    raise FixtureError(f'method {method!r}; this checker replays slotcurri and ssync runs')
  sizes = _need(cfg, 'sizes')
  c = config_lib.default_config()
  c.model.encoder.kind = 'tokens'
  c.model.encoder.token_dim = sizes['D_f']
  grid = tuple(sizes['grid'])
  if grid[0] != grid[1] or grid[0] * grid[1] != sizes['N_patch']:
    raise FixtureError(f'patch grid {grid} with N_patch={sizes["N_patch"]}: not a square grid')
  c.model.encoder.token_grid = grid[0]
  c.model.slot_dim = sizes['D_s']
  c.model.max_slots = sizes['N_slots_total']
  c.model.feature_mlp_hidden = sizes['feature_mlp_hidden']
  c.model.decoder.hidden = tuple(sizes['decoder_hidden'])
  c.model.predictor.num_blocks = sizes['predictor_blocks']
  c.model.predictor.num_heads = sizes['predictor_heads']
  c.model.slot_attention.iters_first = sizes['sa_iters_first_frame']
  c.model.slot_attention.iters = sizes['sa_iters']
  c.data.train_clip_len = sizes['T']
  c.data.batch_size = sizes['B']
  c.loss.contrast_group_size = sizes['B']  # the original pooled its whole batch

  steps = int(_need(cfg, 'max_steps'))
  opt, sched = _need(cfg, 'optimizer'), _need(cfg, 'lr_schedule')
  if opt.get('name') != 'Adam' or tuple(opt.get('betas', ())) != (0.9, 0.999) or (
      opt.get('eps') != 1e-8 or opt.get('weight_decay', 0.0) != 0.0):
    raise FixtureError(f'optimizer {opt}: only Adam(0.9, 0.999, eps 1e-8, no decay) is ours')
  if sched.get('decay_steps') != steps:
    raise FixtureError(f'LR decay over {sched.get("decay_steps")} steps != max_steps {steps}')
  c.train.steps = steps
  c.train.learning_rate = opt['lr']
  c.train.warmup_steps = sched['warmup_steps']
  c.train.decay_end_factor = sched['decay_rate']
  c.train.clip_norm = _need(cfg, 'grad_clip', 'gradient_clip_val')

  weights = _need(cfg, 'loss_weights')
  c.loss.mse_weight, c.loss.ss_weight = weights['mse'], weights['ss']
  config_lib.set_method(c, method)  # 'ssync': SSync on SlotContrast, as in the original
  if method == 'slotcurri':
    c.loss.ssim_weight = weights['ssim']
    c.curriculum.spawn_scale = _need(cfg, 'curriculum', 'lambda')
  else:
    sc = _need(cfg, 'ssync')
    c.ssync.tau_merge = sc['merge_iou_threshold']
    c.ssync.n_bd, c.ssync.n_noise, c.ssync.n_nbd = sc['n_bd'], sc['n_noise'], sc['n_nbd']
    c.ssync.temperature = sc['loss_temperature']
    c.ssync.start_fraction = sc['synergistic_warmup_ratio']
    c.ssync.bd_weight, c.ssync.in_weight = weights['bd'], weights['in']
  return c


def replay(data, config=None, train_step: str = 'padded') -> dict:
  """Run the fixture's S updates through the jitted train step.

  data: the loaded fixture ({key: array}). config: our config (default: from the
  fixture's; tests pass a changed one to see the check fail). train_step: one of
  TRAIN_STEPS (sets `train.active_slots_only` on a copy of the config).
  Returns per-step host arrays ('loss_total' ... [S], labels [S, B, T, G, G]), the
  params after each update that the fixture keeps ('params_after' {s: tree}), and the
  placeholders each update started from ('placeholders' [S, max_slots, D_s]).
  """
  if train_step not in TRAIN_STEPS:
    raise ValueError(f'train_step={train_step!r}; choose one of {TRAIN_STEPS}')
  config = copy.deepcopy(config or trajectory_config(json.loads(str(data['config']))))
  config.train.active_slots_only = train_step == 'active_slots_only'
  run = train.Run.from_config(config)
  state_dict = {k[len('param/'):]: data[k] for k in data.files if k.startswith('param/')}
  params = import_reference.state_dict_to_params(state_dict, config)
  mesh = parallel.create_mesh(devices=jax.devices()[:1])
  state, shardings = train.create_state(run, mesh, jax.random.PRNGKey(0), params=params)
  step_for = train.stage_train_steps(run, mesh, shardings, diagnostics=True)

  x_pool, order = data['in/X_pool'], data['in/batch_index']
  steps = int(config.train.steps)
  if x_pool.shape[-2:] != (run.spec.num_patches, run.spec.input_dim):
    raise FixtureError(f'in/X_pool has shape {x_pool.shape}, but the sizes in config give '
                       f'[M, B, T, {run.spec.num_patches}, {run.spec.input_dim}]')
  if order.shape != (steps,):
    raise FixtureError(f'in/batch_index has shape {order.shape}, max_steps is {steps}')
  max_slots, dim = config.model.max_slots, config.model.slot_dim
  directions = np.zeros((steps, max_slots, dim), np.float32)
  for j in range(1, 1 + len(run.curriculum.boundaries)):
    if f'spawn{j}/step' in data.files:
      unit = data[f'spawn{j}/directions_unit']
      directions[int(data[f'spawn{j}/step']), :unit.shape[0]] = unit

  keep = {int(data[k]) for k in data.files if k.startswith('spawn') and k.endswith('/step')}
  keep.add(steps - 1)
  records: dict[str, list] = {}
  params_after: dict[int, Any] = {}
  for s in range(steps):
    before = jax.device_get(state.params)
    tokens = x_pool[order[s]]
    batch = {'features': tokens,
             'spawn_directions': np.repeat(directions[s][None], tokens.shape[0], axis=0)}
    state, metrics = step_for(s)(state, parallel.host_to_global(batch, mesh))
    metrics = jax.device_get(metrics)
    after = jax.device_get(state.params)
    metrics['update_norm'] = _tree_norm(jax.tree.map(np.subtract, after, before))
    metrics['param_norm_after'] = _tree_norm(after)
    for key, value in metrics.items():
      records.setdefault(key, []).append(np.asarray(value))
    if s in keep:
      params_after[s] = after
  out = {k: np.stack(v) for k, v in records.items()}
  out['params_after'] = params_after
  out['config'] = config
  out['curriculum'] = run.curriculum
  return out


def _tree_norm(tree) -> float:
  return float(np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64)))
                           for x in jax.tree.leaves(tree))))


# ------------------------------------------------------------------ comparison

def _record(name: str, ours, ref, allowed, *, relative: bool) -> dict:
  """One record for a per-step quantity: worst step by err / allowed."""
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  if ours.shape != ref.shape:
    return dict(output=name, ok=False, note=f'shape {ours.shape} != reference {ref.shape}')
  err = np.abs(ours - ref)
  if relative:
    err = err / np.maximum(np.abs(ref), 1e-30)
  allowed = np.broadcast_to(np.asarray(allowed, np.float64), err.shape)
  ratio = np.where(allowed > 0, err / np.where(allowed > 0, allowed, 1), np.where(err > 0, np.inf, 0))
  worst = int(np.argmax(ratio)) if ratio.size else 0
  return dict(output=name, max_err=float(err.max()) if err.size else 0.0,
              worst_step=worst, err_at_worst=float(err.flat[worst]) if err.size else 0.0,
              tol_at_worst=float(allowed.flat[worst]) if err.size else 0.0,
              error_kind='relative' if relative else 'absolute',
              ok=bool(np.all(err <= allowed)))


def _envelope(data, quantity: str, steps: int) -> np.ndarray:
  key = f'noise/envelope/{quantity}_reldiff'
  if key in data.files:
    return np.asarray(data[key], np.float64)
  key = f'noise/{quantity}_reldiff'
  if key in data.files:  # no envelope stored: the running max of the float64 comparison
    return np.maximum.accumulate(np.asarray(data[key], np.float64))
  return np.zeros((steps,))


def _rel_l2_masked(ours: np.ndarray, ref: np.ndarray, mask: np.ndarray | None) -> float:
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  if mask is not None:
    keep = mask == 0
    ours, ref = ours[keep], ref[keep]
  norm = np.linalg.norm(ref)
  return float(np.linalg.norm(ours - ref) / norm) if norm > 0 else float(np.linalg.norm(ours))


def check_every_train_step(path, data) -> Iterator[dict]:
  """`check_trajectory` with each of TRAIN_STEPS; records name theirs ('train_step')."""
  for train_step in TRAIN_STEPS:
    for record in check_trajectory(path, data, train_step=train_step):
      yield dict(train_step=train_step, **record)


def check_trajectory(path, data, config=None, train_step: str = 'padded') -> Iterator[dict]:
  """Replay `data` through `train_step` (one of TRAIN_STEPS) and yield one record per
  quantity of the fixture README's table."""
  del path
  for key in ('config', 'in/X_pool', 'in/batch_index', 'out/step/loss_total'):
    if key not in data.files:
      raise FixtureError(f'missing key {key!r}')
  got = replay(data, config, train_step)
  cfg = json.loads(str(data['config']))
  steps = data['out/step/loss_total'].shape[0]
  for name in ('loss_total', 'loss_mse', 'loss_ss', 'loss_ssim', 'loss_bd', 'loss_in'):
    if f'out/step/{name}' in data.files:
      allowed = np.maximum(1e-5, 20 * _envelope(data, name, steps))
      yield _record(f'step/{name}', got[name], data[f'out/step/{name}'], allowed, relative=True)
  grad_env = _envelope(data, 'grad_norm', steps)
  yield _record('step/grad_norm', got['grad_norm'], data['out/step/grad_norm'],
                np.maximum(1e-4, 20 * grad_env), relative=True)
  yield _record('step/lr', got['learning_rate'], data['out/step/lr'], 1e-6, relative=True)
  yield _record('step/num_active', got['active_slots'], data['out/step/num_active'], 0,
                relative=False)
  clip = float(cfg['grad_clip']['gradient_clip_val'])
  decided = np.abs(data['out/step/grad_norm'] - clip) > 1e-4 * clip
  ours_clipped = (got['clip_coef'] < 1.0).astype(np.float64)
  yield _record('step/clipped', np.where(decided, ours_clipped, 0),
                np.where(decided, data['out/step/clipped'], 0), 0, relative=False)
  yield _record('step/clip_coef', got['clip_coef'], data['out/step/clip_coef'],
                np.maximum(1e-4, 20 * grad_env), relative=True)
  update_env = np.maximum(grad_env, _envelope(data, 'update_norm', steps))
  yield _record('step/update_norm[0]', got['update_norm'][:1], data['out/step/update_norm'][:1],
                0, relative=False)
  yield _record('step/update_norm', got['update_norm'][1:], data['out/step/update_norm'][1:],
                np.maximum(1e-4, 20 * update_env[1:]), relative=True)
  param_env = np.asarray(data['noise/envelope/param_rel_l2_max'], np.float64)
  yield _record('step/param_norm_after', got['param_norm_after'],
                data['out/step/param_norm_after'], np.maximum(1e-5, 20 * param_env), relative=True)
  if 'out/step/ssync_on' in data.files:
    yield _record('step/ssync_on', got['ssync_gate'], data['out/step/ssync_on'], 0,
                  relative=False)
    yield from _check_labels(data, got, steps)
  yield from _check_curriculum(data, got, cfg)
  yield from _check_params(data, got, param_env)


def _check_labels(data, got, steps) -> Iterator[dict]:
  """Labels and masks: exact while the loss envelope is <= 1e-5; afterwards up to four
  times the most patches that an equally valid float32 run flipped so far (at least 4)."""
  loss_env = _envelope(data, 'loss_total', steps)
  for name in LABEL_KEYS:
    ours = got[_OUR_AUX.get(name, name)].astype(np.int64)
    ref = data[f'out/step/{name}'].astype(np.int64)
    if ours.shape != ref.shape:
      yield dict(output=f'step/{name}', ok=False, note=f'shape {ours.shape} != {ref.shape}')
      continue
    mismatches = np.sum(ours != ref, axis=tuple(range(1, ours.ndim)))
    noise = np.zeros((steps,))
    for key in (f'noise/{name}_mismatch_f64', f'noise/ulp/{name}_mismatch'):
      if key in data.files:
        noise = np.maximum(noise, np.asarray(data[key], np.float64).reshape(-1, steps).max(0))
    allowed = np.where(loss_env <= 1e-5, 0, np.maximum(4, 4 * np.maximum.accumulate(noise)))
    yield _record(f'step/{name} (patches differing)', mismatches, np.zeros(steps), allowed,
                  relative=False)
  exact = loss_env <= 1e-5
  differ = np.sum(got['mapping'] != data['out/step/merge_mapping'], axis=(1, 2))
  yield _record('step/merge_mapping (entries differing, exact-label steps)',
                np.where(exact, differ, 0), np.zeros(steps), 0, relative=False)


def _check_curriculum(data, got, cfg) -> Iterator[dict]:
  curriculum = got['curriculum']
  if 'curriculum' not in cfg:
    return
  want = cfg['curriculum']
  ours_steps = list(curriculum.boundaries)
  ours_counts = [k for _, k in curriculum.schedule]
  yield _record('curriculum/spawn_steps', ours_steps, want['spawn_steps'], 0, relative=False)
  yield _record('curriculum/stage_counts', ours_counts, want['hier_n_slots'], 0, relative=False)
  for j, boundary in enumerate(curriculum.boundaries, start=1):
    prefix = f'spawn{j}'
    if f'{prefix}/step' not in data.files:
      yield dict(output=f'{prefix}', ok=False, note=f'missing key {prefix}/step')
      continue
    k_old, k_new = int(data[f'{prefix}/K_old']), int(data[f'{prefix}/K_new'])
    yield _record(f'{prefix}/step', boundary, data[f'{prefix}/step'], 0, relative=False)
    capture = int(data[f'out/capture{j}/step'])
    yield _record(f'capture{j}/step', boundary - 1, capture, 0, relative=False)
    yield _record(f'capture{j}/slot_error', got['slot_error'][capture][:k_old],
                  data[f'out/capture{j}/slot_error'], 1e-6, relative=False)
    # The spawn wrote the rows the boundary update started from.
    p_after = got['placeholders'][boundary]
    yield _record(f'{prefix}/counts', got['spawn_counts'][boundary][:k_old],
                  data[f'{prefix}/counts'], 0, relative=False)
    yield _record(f'{prefix}/K_new', k_old + int(got['spawn_counts'][boundary].sum()), k_new, 0,
                  relative=False)
    yield _record(f'{prefix}/P_after', p_after, data[f'{prefix}/P_after'], 1e-6, relative=False)


def _check_params(data, got, param_env) -> Iterator[dict]:
  """after_boundary{j}/* and final/*: per tensor, zero-gradient coordinates excluded."""
  config = got['config']
  targets = [(f'after_boundary{j}', int(data[f'spawn{j}/step']))
             for j in range(1, 10) if f'after_boundary{j}/initializer.slots' in data.files]
  targets.append(('final', max(got['params_after'])))
  for prefix, step in targets:
    ours = import_reference.params_to_state_dict(got['params_after'][step], config)
    worst, worst_key, ok = 0.0, '', True
    for key, value in ours.items():
      ref_key = f'{prefix}/{key}'
      if ref_key not in data.files:
        yield dict(output=f'{prefix}', ok=False, note=f'missing key {ref_key}')
        ok = False
        continue
      mask_key = f'meta/zero_grad_mask/{key}'
      mask = data[mask_key] if mask_key in data.files else None
      err = _rel_l2_masked(value, data[ref_key], mask)
      allowed = max(1e-5, 20 * float(param_env[step]))
      if prefix == 'final' and f'noise/envelope/final_rel_l2/{key}' in data.files:
        allowed = max(allowed, 20 * float(data[f'noise/envelope/final_rel_l2/{key}']))
      ok &= err <= allowed
      if err / allowed > worst:
        worst, worst_key = err / allowed, key
    yield dict(output=f'{prefix}/* (rel L2 per tensor, step {step})', worst_tensor=worst_key,
               worst_err_over_tol=worst, ok=bool(ok))


# ------------------------------------------------------------------ drift (no tolerance)

DRIFT_TERMS = ('loss_total', 'loss_mse', 'loss_ss', 'loss_ssim', 'loss_bd', 'loss_in',
               'grad_norm')


def drift(data, config=None, train_step: str = 'padded') -> dict:
  """How far a replay (e.g. with model.compute_dtype='bfloat16') strays from the fixture.

  Returns {'per_step': {quantity: {'abs': [S], 'rel': [S], 'float32_envelope': [S]}},
  'final_params': {tensor: relative L2 deviation}} for every loss term the fixture has
  and the gradient norm; the envelope is the spread of equally valid float32 runs of
  the original (its check tolerance is 20 times that). Zero-gradient coordinates
  (meta/zero_grad_mask) are left out of the parameters, as in the check.
  """
  got = replay(data, config, train_step)
  steps = data['out/step/loss_total'].shape[0]
  per_step = {}
  for name in DRIFT_TERMS:
    if f'out/step/{name}' in data.files:
      ours = np.asarray(got[name], np.float64)
      ref = np.asarray(data[f'out/step/{name}'], np.float64)
      err = np.abs(ours - ref)
      per_step[name] = {'abs': err, 'rel': err / np.maximum(np.abs(ref), 1e-30),
                        'float32_envelope': _envelope(data, name, steps)}
  final = import_reference.params_to_state_dict(got['params_after'][max(got['params_after'])],
                                                got['config'])
  params = {}
  for key, value in final.items():
    mask = data[f'meta/zero_grad_mask/{key}'] if f'meta/zero_grad_mask/{key}' in data.files else None
    params[key] = _rel_l2_masked(value, data[f'final/{key}'], mask)
  return {'per_step': per_step, 'final_params': params}


def _print_drift(path, result: dict, dtype: str, train_step: str) -> None:
  per_step, params = result['per_step'], result['final_params']
  names = list(per_step)
  steps = len(per_step['loss_total']['rel'])
  print(f'{path}: {train_step} train step, {dtype} compute, {steps} updates; '
        'relative deviation from the fixture')
  row = lambda label, cells: print(f'{label:>8} ' + ' '.join(f'{c:>11}' for c in cells))
  row('update', names)
  for s in range(steps):
    row(s, (f'{per_step[n]["rel"][s]:.2e}' for n in names))
  row('max rel', (f'{per_step[n]["rel"].max():.2e}' for n in names))
  row('at upd', (int(per_step[n]['rel'].argmax()) for n in names))
  row('max abs', (f'{per_step[n]["abs"].max():.2e}' for n in names))
  row('f32 env', (f'{per_step[n]["float32_envelope"].max():.2e}' for n in names))
  print('(f32 env: the largest relative spread of equally valid float32 runs of the original)')
  worst = max(params, key=params.get)
  print(f'final params, relative L2 per tensor ({len(params)} tensors): max {params[worst]:.2e} '
        f'({worst}), median {float(np.median(list(params.values()))):.2e}')


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      description='Replay the whole-run fixtures and print how far the run strays from them '
                  '(no pass/fail; python -m slotcurri_jax.tools.check_fixture checks float32).')
  parser.add_argument('files', nargs='*', help='trajectory .npz files (default: all shipped)')
  parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'),
                      help='model.compute_dtype of the replay')
  parser.add_argument('--train_step', default='padded', choices=TRAIN_STEPS)
  parser.add_argument('--json', default='', help='also write the numbers to this file')
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  paths = args.files or sorted(str(p) for p in fixtures.fixtures_dir('trajectory').glob('*.npz'))
  out = {}
  from slotcurri_jax.tools import check_fixture  # it imports this module
  for path in paths:
    with np.load(path, allow_pickle=False) as z:
      data = check_fixture._Loaded(z)  # pylint: disable=protected-access
    config = trajectory_config(json.loads(str(data['config'])))
    config.model.compute_dtype = args.dtype
    result = drift(data, config, args.train_step)
    _print_drift(path, result, args.dtype, args.train_step)
    out[path] = {'dtype': args.dtype, 'train_step': args.train_step,
                 'per_step': {n: {k: v.tolist() for k, v in q.items()}
                              for n, q in result['per_step'].items()},
                 'final_params': result['final_params']}
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(out, f, indent=1)
  return 0


if __name__ == '__main__':
  sys.exit(main())
