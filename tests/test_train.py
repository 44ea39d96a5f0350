"""The training step: optimizer, curriculum without recompilation, sharding equivalence."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from slotcurri_jax import curriculum as curriculum_lib
from slotcurri_jax import parallel
from slotcurri_jax import train
from slotcurri_jax import train_state as train_state_lib


def _fake_batches(config, n, seed=0):
  rng = np.random.default_rng(seed)
  r, t = config.data.resolution, config.data.train_clip_len
  return [{'video': rng.normal(size=(config.data.batch_size, t, r, r, 3)).astype(np.float32)}
          for _ in range(n)]


def _run_steps(config, mesh, batches):
  run = train.Run.from_config(config)
  state, shardings = train.create_state(run, mesh, jax.random.PRNGKey(config.seed))
  step_fn = train.jit_train_step(run, mesh, shardings)
  history = []
  for batch in batches:
    state, metrics = step_fn(state, parallel.host_to_global(batch, mesh))
    history.append(jax.device_get(metrics))
  return state, history, step_fn


def test_learning_rate_schedule_matches_spec():
  config = tiny_config()
  config.train.learning_rate = 8e-4
  config.train.warmup_steps = 2500
  config.train.steps = 100_000
  lr = train_state_lib.learning_rate_schedule(config.train)
  assert float(lr(0)) == 0.0
  np.testing.assert_allclose(float(lr(1250)), 4e-4, rtol=1e-6)
  np.testing.assert_allclose(float(lr(2500)), 8e-4, rtol=1e-6)
  # docs/method.md §10.1 values: 7.58e-4 at 10k, 6.82e-4 at 25k, 5.71e-4 at 50k, 4.0e-4 at 100k.
  for step, expected in [(10_000, 7.58e-4), (25_000, 6.82e-4), (50_000, 5.71e-4), (100_000, 4.0e-4)]:
    np.testing.assert_allclose(float(lr(step)), expected, rtol=2e-3)


def test_frozen_encoder_is_masked_out_of_the_optimizer():
  config = tiny_config()
  config.train.warmup_steps = 0
  params = {'encoder': {'w': jnp.ones(3)}, 'decoder': {'w': jnp.ones(3)}}
  labels = train_state_lib.param_labels(params, frozen_encoder=True)
  assert labels == {'encoder': {'w': 'frozen'}, 'decoder': {'w': 'trainable'}}
  tx = train_state_lib.make_optimizer(config, frozen_encoder=True)
  grads = {'encoder': {'w': jnp.full(3, 100.0)}, 'decoder': {'w': jnp.full(3, 0.1)}}
  updates, _ = tx.update(grads, tx.init(params), params)
  assert np.all(np.asarray(updates['encoder']['w']) == 0.0)
  # Adam's first step is -lr * sign(g) for the trainable part.
  np.testing.assert_allclose(updates['decoder']['w'], -config.train.learning_rate, rtol=1e-4)
  trained = train_state_lib.make_optimizer(config, frozen_encoder=False)  # the CNN
  updates, _ = trained.update(grads, trained.init(params), params)
  assert np.all(np.asarray(updates['encoder']['w']) != 0.0)


def test_curriculum_stage_changes_without_recompiling():
  config = tiny_config()
  mesh = parallel.create_mesh(devices=jax.devices()[:1])
  state, history, step_fn = _run_steps(config, mesh, _fake_batches(config, 6))
  # Quirk 6: the step at a boundary still trains with the old count.
  assert [int(m['active_slots']) for m in history] == [2, 2, 2, 3, 3, 5]
  assert step_fn._cache_size() == 1
  curriculum = train.Run.from_config(config).curriculum
  assert int(curriculum.stage(state.step)) == 2
  assert bool(np.all(np.asarray(curriculum.active_mask(state.step))))
  assert all(np.isfinite(m['loss_total']) for m in history)


def test_inactive_rows_get_exactly_zero_gradient_and_moments():
  config = tiny_config()
  config.curriculum.schedule = ((0, 2), (100, 5))
  config.train.steps = 200
  mesh = parallel.create_mesh(devices=jax.devices()[:1])
  run = train.Run.from_config(config)
  state, shardings = train.create_state(run, mesh, jax.random.PRNGKey(0))
  p0 = np.asarray(state.params['initializer']['placeholders'])
  step_fn = train.jit_train_step(run, mesh, shardings)
  for batch in _fake_batches(config, 4):
    state, _ = step_fn(state, parallel.host_to_global(batch, mesh))
  p = np.asarray(state.params['initializer']['placeholders'])
  assert np.array_equal(p[2:], p0[2:])  # untouched, bit for bit
  assert not np.allclose(p[:2], p0[:2])
  moments = [np.asarray(x) for x in jax.tree.leaves(state.opt_state)
             if getattr(x, 'shape', None) == p.shape]
  assert moments, 'no Adam moments of the placeholders found'
  for m in moments:
    assert np.all(m[2:] == 0.0) and np.any(m[:2] != 0.0)


@pytest.mark.slow  # 30 s; two processes give one process's losses in the default suite (test_distributed)
def test_eight_devices_give_the_one_device_losses():
  config = tiny_config()
  config.data.batch_size = 8
  config.loss.contrast_group_size = 4
  batches = _fake_batches(config, 3, seed=1)
  _, one, _ = _run_steps(config, parallel.create_mesh(devices=jax.devices()[:1]), batches)
  _, eight, _ = _run_steps(config, parallel.create_mesh(), batches)
  for a, b in zip(one, eight):
    for key in ('loss_total', 'loss_mse', 'loss_ss', 'loss_ssim', 'grad_norm'):
      np.testing.assert_allclose(a[key], b[key], rtol=2e-5, atol=1e-6, err_msg=key)


@pytest.mark.slow  # 26 s; test_aot compiles MOVi-C with fsdp in the default suite
def test_fsdp_all_params_splits_every_matrix_and_keeps_the_losses():
  config = tiny_config()
  config.data.batch_size = 8
  config.loss.contrast_group_size = 4
  batches = _fake_batches(config, 2, seed=2)
  _, replicated, _ = _run_steps(config, parallel.create_mesh(), batches)
  config.mesh.fsdp, config.mesh.fsdp_all_params = 4, True
  state, split, _ = _run_steps(config, parallel.create_mesh(fsdp=4), batches)
  for a, b in zip(replicated, split):
    for key in ('loss_total', 'grad_norm'):
      np.testing.assert_allclose(a[key], b[key], rtol=2e-5, atol=1e-6, err_msg=key)
  leaves = jax.tree_util.tree_flatten_with_path(state.params)[0]
  leaves += jax.tree_util.tree_flatten_with_path(state.opt_state)[0]
  for path, leaf in leaves:
    spec = leaf.sharding.spec
    if leaf.ndim >= 2 and any(d % 4 == 0 for d in leaf.shape):
      assert 'fsdp' in spec, (jax.tree_util.keystr(path), leaf.shape, spec)
      assert leaf.shape[list(spec).index('fsdp')] == max(d for d in leaf.shape if d % 4 == 0)
    else:
      assert 'fsdp' not in spec, jax.tree_util.keystr(path)


# 'ssync' (SSync on SlotContrast, 23 s with a cold cache) is slow: the SSync trajectory replay trains it.
@pytest.mark.parametrize('variant', ['slotcontrast', pytest.param('ssync', marks=pytest.mark.slow),
                                     'slotcurri_ssync'])
def test_variants_train_one_step(variant):
  config = tiny_config(variant)
  config.train.steps = 1
  mesh = parallel.create_mesh(devices=jax.devices()[:1])
  _, history, _ = _run_steps(config, mesh, _fake_batches(config, 1))
  m = history[0]
  assert np.isfinite(m['loss_total'])
  assert ('loss_ssim' in m) == variant.startswith('slotcurri')
  assert ('loss_bd' in m) == variant.endswith('ssync')


# With SSync the three per-stage compilations cost ~2 minutes on 2 cores: marked slow.
@pytest.mark.parametrize('variant', [None, pytest.param('slotcurri_ssync', marks=pytest.mark.slow)])
def test_active_slots_only_gives_the_padded_losses_with_one_compile_per_stage(variant):
  config = tiny_config(variant)
  if variant:
    config.ssync.start_fraction = 0.0  # the SSync terms count from the first step
  mesh = parallel.create_mesh(devices=jax.devices()[:1])
  batches = _fake_batches(config, 6)
  padded_state, padded, _ = _run_steps(config, mesh, batches)

  config.train.active_slots_only = True
  run = train.Run.from_config(config)
  state, shardings = train.create_state(run, mesh, jax.random.PRNGKey(config.seed))
  step_for = train.stage_train_steps(run, mesh, shardings)
  sliced, used = [], []
  for step, batch in enumerate(batches):
    fn = step_for(step)
    used.append(fn)
    state, metrics = fn(state, parallel.host_to_global(batch, mesh))
    sliced.append(jax.device_get(metrics))
  assert [int(m['active_slots']) for m in sliced] == [2, 2, 2, 3, 3, 5]
  distinct = list({id(f): f for f in used}.values())
  assert len(distinct) == 3 and all(f._cache_size() == 1 for f in distinct)
  # Masked rows contribute exact zeros to every sum, so only summation order differs.
  for a, b in zip(padded, sliced):
    for key in a:
      np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6, err_msg=key)
  # Params are not compared leaf by leaf: Adam divides by sqrt(v), so an element whose
  # gradient is at rounding level moves by up to lr per step in either direction. The
  # losses of later steps above are the test that both runs follow the same params.
  np.testing.assert_allclose(padded_state.slot_error, state.slot_error, rtol=1e-5, atol=1e-7)
  assert int(state.step) == int(padded_state.step) == 6


def _spawn_config():
  """tiny_config with a global batch of 8 and two spawns, at the start of updates 1 and 2."""
  config = tiny_config()
  config.data.batch_size = 8
  config.loss.contrast_group_size = 4
  config.curriculum.schedule = ((0, 2), (1, 3), (2, 5))
  return config


def _spawn_run(mesh, directions=None):
  """Three updates of _spawn_config on `mesh` with the diagnostics; directions: the unit
  rows to inject ([max_slots, D_s]) or None (drawn from the state's key). Per update:
  the placeholders, error record and rng it started from, and its metrics."""
  config = _spawn_config()
  run = train.Run.from_config(config)
  state, shardings = train.create_state(run, mesh, jax.random.PRNGKey(0))
  step_fn = train.jit_train_step(run, mesh, shardings, diagnostics=True)
  updates = []
  for batch in _fake_batches(config, 3, seed=2):
    if directions is not None:
      batch = dict(batch, spawn_directions=np.repeat(directions[None], len(batch['video']), 0))
    before = jax.device_get(dict(placeholders=state.params['initializer']['placeholders'],
                                 record=state.slot_error, rng=state.rng))
    state, metrics = step_fn(state, parallel.host_to_global(batch, mesh))
    updates.append(dict(before, metrics=jax.device_get(metrics)))
  return updates


@pytest.fixture(scope='module')
def drawn_spawns():
  """_spawn_run on one device with the directions drawn from the state's key."""
  return _spawn_run(parallel.create_mesh(devices=jax.devices()[:1]))


@pytest.mark.slow  # 30 s on 2 cores
def test_injected_spawn_directions_on_eight_devices(drawn_spawns):
  """batch['spawn_directions'] ([B, max_slots, D_s], sharded like the batch): 5 rows on 8
  devices work, and the spawned rows equal the one-device ones (and differ from the
  key-drawn default)."""
  directions = np.random.default_rng(3).normal(size=(5, _spawn_config().model.slot_dim))
  directions = (directions / np.linalg.norm(directions, axis=-1, keepdims=True)).astype(np.float32)
  one = _spawn_run(parallel.create_mesh(devices=jax.devices()[:1]), directions)
  eight = _spawn_run(parallel.create_mesh(), directions)
  for a, b, drawn in zip(one, eight, drawn_spawns):
    np.testing.assert_allclose(b['metrics']['placeholders'], a['metrics']['placeholders'],
                               rtol=1e-6, atol=1e-7)
  assert not np.allclose(drawn['metrics']['placeholders'][3:], a['metrics']['placeholders'][3:])


def test_drawn_spawn_directions_are_unit_counted_and_new_at_each_boundary(drawn_spawns):
  """Without batch['spawn_directions'] the train step draws each boundary's directions
  from fold_in(state.rng, step) (docs/method.md §7.5): unit rows, one per child, the
  counts allocated from the recorded error, other directions at the next boundary.
  (That every process draws the same ones: tests/test_distributed.py.)"""
  curriculum = train.Run.from_config(_spawn_config()).curriculum
  spawn = jax.jit(curriculum_lib.spawn)
  used = {}
  for step, (k_old, k_new) in zip(curriculum.boundaries, ((2, 3), (3, 5))):
    u = drawn_spawns[step]
    p, after = u['placeholders'], u['metrics']['placeholders']
    counts = np.asarray(u['metrics']['spawn_counts'])
    # The right count per parent: the error record's allocation, k_new - k_old in all.
    want = curriculum_lib.allocate_children(np.mean(u['record'], axis=0), k_old, k_new - k_old)
    np.testing.assert_array_equal(counts, want)
    assert counts.sum() == k_new - k_old and np.all(counts[k_old:] == 0)
    # Each child is its parent moved by exactly sigma: a unit direction.
    directions = curriculum_lib.unit_directions(jax.random.fold_in(u['rng'], step), *p.shape)
    replayed, info = spawn(p, np.mean(u['record'], axis=0), k_old, k_new, jax.random.PRNGKey(7),
                           directions=directions)
    np.testing.assert_allclose(after, replayed, rtol=1e-6, atol=1e-7)  # the key's draws
    parents = np.repeat(np.arange(k_old), counts[:k_old])
    for r, parent in enumerate(parents):
      moved = after[k_old + r] - p[parent]
      np.testing.assert_allclose(np.linalg.norm(moved), info['sigma'][parent], rtol=1e-5)
      assert info['sigma'][parent] > 0
      used.setdefault(step, []).append(moved / info['sigma'][parent])
    np.testing.assert_array_equal(after[k_new:], p[k_new:])
  first, second = (np.stack(v) for v in used.values())
  # A new draw at the next boundary: no direction of update 2 repeats update 1's.
  assert np.all(np.abs(second @ first.T) < 0.99), second @ first.T
