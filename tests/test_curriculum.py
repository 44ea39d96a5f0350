"""Curriculum: schedule, active counts (quirk 6), slot error, allocation and the spawn (docs/method.md §7)."""
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from slotcurri_jax import config as config_lib
from slotcurri_jax import curriculum


# Jitted once per switch combination: eager dispatch of the spawn loop is slow on CPU.
_spawn = jax.jit(curriculum.spawn, static_argnames=('scale', 'neighbor', 'norm_rows', 'mode'))


def _cc(**overrides):
  cc = config_lib.default_config().curriculum
  for k, v in overrides.items():
    cc[k] = v
  return cc


# --------------------------------------------------------------------------- schedule

@pytest.mark.parametrize('max_slots,steps,expected', [
    (11, 100_000, ((0, 2), (10_000, 5), (25_000, 11))),  # MOVi-C
    (15, 300_000, ((0, 2), (30_000, 7), (75_000, 15))),  # MOVi-E
    (7, 100_000, ((0, 2), (10_000, 3), (25_000, 7))),  # YT-VIS
])
def test_default_schedules(max_slots, steps, expected):
  schedule = curriculum.build_schedule(_cc(), max_slots, steps)
  assert schedule == expected
  assert curriculum.spawn_steps(schedule) == tuple(s for s, _ in expected[1:])


def test_explicit_and_disabled_schedules():
  assert curriculum.build_schedule(_cc(schedule=[[0, 1], [5, 4]]), 4, 10) == ((0, 1), (5, 4))
  assert curriculum.build_schedule(_cc(enabled=False), 11, 100) == ((0, 11),)


@pytest.mark.parametrize('schedule,message', [
    (((0, 2), (10, 12)), 'num_slots=12 exceeds max_slots=11 in config.curriculum.schedule'),
    (((1, 2), (10, 5)), 'must be 0'),
    (((0, 2), (10, 5), (10, 7)), 'not strictly increasing'),
    (((0, 5), (10, 3)), 'decreases'),
    (((0, 0), (10, 3)), 'below 1'),
])
def test_bad_schedules_raise(schedule, message):
  with pytest.raises(ValueError, match=message):
    curriculum.build_schedule(_cc(schedule=schedule), 11, 100)


@pytest.mark.parametrize('steps,expected', [
    (10, ((0, 2), (1, 5), (2, 11))),
    (9, ((0, 5), (2, 11))),  # floor(0.9) = 0: the 2-slot stage would last 0 steps
    (5, ((0, 5), (1, 11))),
    (4, ((0, 5), (1, 11))),
    (3, ((0, 11),)),
    (1, ((0, 11),)),
])
def test_short_runs_drop_empty_default_stages(steps, expected, caplog):
  assert curriculum.build_schedule(_cc(), 11, steps) == expected
  if steps < 10:
    assert f'curriculum: train.steps={steps} leaves stages of 0 steps' in caplog.text
  with pytest.raises(ValueError, match='train.steps=0; it must be at least 1'):
    curriculum.build_schedule(_cc(), 11, 0)


def test_default_boundaries_are_exact_floors():
  for steps in (7, 10, 30, 99, 1000, 100_003, 300_000):
    assert curriculum.build_schedule(_cc(), 11, steps)[-2:] == ((steps // 10, 5), (steps // 4, 11))
  # 0.29 * 100 is 28.999999999999996 in floats; the boundary is floor(29) all the same.
  assert curriculum.build_schedule(_cc(stage_fractions=(0.29,)), 4, 100) == ((0, 2), (29, 4))


@pytest.mark.parametrize('old_count,expected', [
    (True, [2, 2, 5, 5, 5, 11]),
    (False, [2, 5, 5, 5, 11, 11]),
])
def test_num_active_slots_at_boundaries(old_count, expected):
  schedule = ((0, 2), (10, 5), (25, 11))
  steps = [9, 10, 11, 24, 25, 26]
  got = [int(curriculum.num_active_slots(s, schedule, old_count)) for s in steps]
  assert got == expected
  traced = jax.jit(lambda s: curriculum.num_active_slots(s, schedule, old_count))
  assert [int(traced(s)) for s in steps] == expected
  assert int(curriculum.num_active_slots(0, schedule, old_count)) == 2
  np.testing.assert_array_equal(curriculum.active_mask(jnp.int32(3), 5),
                                [True, True, True, False, False])


# --------------------------------------------------------------------------- error, allocation

def test_slot_error_matches_fixture(fixtures_dir):
  z = np.load(fixtures_dir / 'slot_model.npz', allow_pickle=False)
  error = curriculum.slot_error(z['out/fwd/dec_masks'], z['out/fwd/recon'], z['in/X'])
  np.testing.assert_allclose(np.asarray(error), z['out/fwd/slot_error'], atol=1e-6, rtol=0)


@pytest.mark.parametrize('errors,parents,children,expected', [
    ([0.9, 0.35, 5.0, 5.0], 2, 1, [1, 0, 0, 0]),  # rows >= parents ignored
    ([0.07, 0.55, 0.38, 0.0, 0.0], 3, 4, [0, 2, 2, 0, 0]),  # fixture stage 2
    ([1.0, 1.0, 1.0, 0.0], 3, 4, [2, 1, 1, 0]),  # tie in the remainder -> lower index
    ([1.0, 3.0, 1.0, 3.0], 4, 2, [0, 1, 0, 1]),  # exact halves, no remainder
    ([0.0, 0.0, 0.0, 9.0], 3, 4, [2, 1, 1, 0]),  # zero errors -> uniform
    ([np.nan, 1.0, 0.0, 0.0], 2, 3, [2, 1, 0, 0]),  # NaN buffer -> uniform
    ([0.2, 0.8, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], 2, 6, [1, 5, 0, 0, 0, 0, 0, 0]),  # M > parents
    ([0.5, 0.5, 0.0], 2, 0, [0, 0, 0]),
])
def test_allocate_children(errors, parents, children, expected):
  counts = jax.jit(curriculum.allocate_children)(jnp.asarray(errors, jnp.float32),
                                                 parents, children)
  np.testing.assert_array_equal(counts, expected)
  assert counts.dtype == jnp.int32


# --------------------------------------------------------------------------- spawn

def _fixture_spawn(z, case):
  """Runs the spawn on a spawn.npz case with the recorded directions injected."""
  d = {k[len(case) + 1:]: z[k] for k in z.files if k.startswith(case + '/')}
  p = d['in/P']
  k_max, dim = p.shape
  k_old, k_new = int(d['in/K_old']), int(d['in/K_new'])
  errors = np.zeros((k_max,), np.float32)
  errors[:k_old] = d['in/e']
  directions = np.zeros((k_max, dim), np.float32)
  directions[:k_new - k_old] = d['in/directions_unit']
  new_p, info = _spawn(p, errors, k_old, k_new, jax.random.PRNGKey(0), directions=directions)
  return d, np.asarray(new_p), info


@pytest.mark.parametrize('case', ['stage1', 'stage2'])
def test_spawn_matches_fixture(fixtures_dir, case):
  z = np.load(fixtures_dir / 'spawn.npz', allow_pickle=False)
  d, new_p, info = _fixture_spawn(z, case)
  p, k_old, k_new = d['in/P'], int(d['in/K_old']), int(d['in/K_new'])
  np.testing.assert_allclose(new_p, d['out/P_new'], atol=1e-6, rtol=0)
  np.testing.assert_array_equal(new_p[:k_old], p[:k_old])  # parents untouched
  np.testing.assert_array_equal(new_p[k_new:], p[k_new:])
  np.testing.assert_array_equal(info['counts'][:k_old], d['out/counts'])
  np.testing.assert_array_equal(info['counts'][k_old:], 0)
  np.testing.assert_array_equal(info['child_parent'][:k_new - k_old], d['out/child_parent'])
  np.testing.assert_array_equal(info['child_parent'][k_new - k_old:], -1)
  np.testing.assert_array_equal(info['nn_idx'][:k_old], d['out/nn_idx'])
  for name in ('distance', 'mean_norm', 'sigma'):
    np.testing.assert_allclose(np.asarray(info[name])[:k_old], d[f'out/{name}'],
                               atol=1e-6, rtol=0, err_msg=name)


def test_spawn_live_distance(fixtures_dir):
  """Stage 2 is crafted so that a neighbour row is overwritten before it is measured."""
  z = np.load(fixtures_dir / 'spawn.npz', allow_pickle=False)
  crafted = json.loads(str(z['config']))['cases']['stage2']['crafted_live_distance_case']
  d, _, info = _fixture_spawn(z, 'stage2')
  i, nn = crafted['parent'], crafted['its_cosine_nn_row']
  assert int(info['nn_idx'][i]) == nn
  np.testing.assert_allclose(np.linalg.norm(d['in/P'][i] - d['in/P'][nn]),
                             crafted['frozen_distance'], atol=1e-6)
  np.testing.assert_allclose(info['distance'][i], crafted['live_distance'], atol=1e-6)


def _random_case(k_max=6, dim=8, seed=0):
  rng = np.random.default_rng(seed)
  p = rng.normal(size=(k_max, dim)).astype(np.float32)
  errors = np.abs(rng.normal(size=(k_max,))).astype(np.float32)
  return p, errors


def test_spawn_children_are_unit_perturbations_with_drawn_directions():
  p, errors = _random_case()
  new_p, info = _spawn(p, errors, 2, 5, jax.random.PRNGKey(3))
  new_p = np.asarray(new_p)
  for r in range(3):
    parent = int(info['child_parent'][r])
    step = np.linalg.norm(new_p[2 + r] - p[parent])
    np.testing.assert_allclose(step, info['sigma'][parent], rtol=1e-5)
  np.testing.assert_array_equal(new_p[5:], p[5:])
  assert not np.allclose(new_p[2], new_p[3])  # independent directions


def test_spawn_switches():
  p, errors = _random_case(seed=1)
  args = (p, errors, 3, 6, jax.random.PRNGKey(0))
  none_p, _ = _spawn(*args, mode='none')
  np.testing.assert_array_equal(np.asarray(none_p), p)
  _, info = _spawn(*args, neighbor='euclidean_active')
  sq = ((p[:3, None] - p[None, :3]) ** 2).sum(-1) + np.diag([np.inf] * 3)
  np.testing.assert_array_equal(info['nn_idx'][:3], sq.argmin(-1))
  # norm_rows='active': mu of the first spawning parent = mean norm of the parents (+ 1e-8).
  _, info = _spawn(*args, norm_rows='active')
  first = int(np.argmax(np.asarray(info['counts']) > 0))
  np.testing.assert_allclose(info['mean_norm'][first],
                             np.linalg.norm(p[:3], axis=-1).mean(), rtol=1e-6)
  with pytest.raises(ValueError, match='config.curriculum.neighbor'):
    curriculum.spawn(*args, neighbor='l2')


def test_spawn_compiles_once_for_traced_counts():
  traces = []

  def fn(p, errors, num_old, num_new, key):
    traces.append(1)
    return curriculum.spawn(p, errors, num_old, num_new, key)

  jitted = jax.jit(fn)
  p, errors = _random_case(k_max=7)
  key = jax.random.PRNGKey(0)
  out_a, info_a = jitted(p, errors, jnp.int32(2), jnp.int32(3), key)
  out_b, info_b = jitted(p, errors, jnp.int32(3), jnp.int32(7), key)
  assert len(traces) == 1
  assert int(info_a['counts'].sum()) == 1 and int(info_b['counts'].sum()) == 4
  np.testing.assert_array_equal(np.asarray(out_a)[3:], p[3:])
  assert not np.allclose(np.asarray(out_b)[3:], p[3:])


def test_spawn_config_keys_exist():
  """The train step passes these config values straight through."""
  cc = config_lib.default_config().curriculum
  assert isinstance(cc, ml_collections.ConfigDict)
  assert cc.neighbor in curriculum.NEIGHBORS and cc.norm_rows in curriculum.NORM_ROWS
  assert cc.spawn in curriculum.MODES
