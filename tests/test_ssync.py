"""SSync labels, merge, regions and losses (slotcurri_jax/ssync.py) against the reference."""
import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slotcurri_jax import ssync
from slotcurri_jax.tools import check_fixture

# (key prefix in ssync.npz, key of config['cases'])
CASES = [('', 'main'), ('slotmodel_case/', 'slotmodel_case/')]


def _load(fixtures_dir, prefix, case):
  z = np.load(fixtures_dir / 'ssync.npz', allow_pickle=False)
  config = json.loads(str(z['config']))
  arrays = {k[len(prefix):]: z[k] for k in z.files
            if k.startswith(prefix) and (prefix or not k.startswith('slotmodel_case/'))}
  return arrays, config, config['cases'][case]


def _square_grid(logits):
  """The test inputs' square patch grid (G, G) of logits [B, T, K, G * G]."""
  g = math.isqrt(logits.shape[-1])
  return (g, g)


def _losses(z_enc, z_dec, active, **kw):
  kw.setdefault('grid', _square_grid(z_enc))
  loss_bd, loss_in, _ = ssync.ssync_losses(z_enc, z_dec, active, **kw)
  return loss_bd + loss_in


@functools.partial(jax.jit, static_argnames=(
    'tau_merge', 'n_bd', 'n_noise', 'n_nbd', 'temperature', 'loss', 'group_size', 'reduction'))
def _run(z_enc, z_dec, active, **kw):
  """Jitted (compiles faster than op-by-op runs): loss_bd, loss_in, aux and the
  gradients of loss_bd + loss_in wrt (z_enc, z_dec)."""
  kw.setdefault('grid', _square_grid(z_enc))

  def total(a, d):
    loss_bd, loss_in, aux = ssync.ssync_losses(a, d, active, **kw)
    return loss_bd + loss_in, (loss_bd, loss_in, aux)
  (_, (loss_bd, loss_in, aux)), grads = jax.value_and_grad(
      total, argnums=(0, 1), has_aux=True)(z_enc, z_dec)
  return loss_bd, loss_in, aux, grads


@pytest.mark.parametrize('prefix,case', CASES)
def test_golden(fixtures_dir, prefix, case):
  f, config, cc = _load(fixtures_dir, prefix, case)
  z_enc, z_dec = jnp.asarray(f['in/zA']), jnp.asarray(f['in/zD'])
  b, t, k, n = z_enc.shape
  assert (b, t, k) == (cc['B'], cc['T'], cc['S']) and n == cc['grid'][0] * cc['grid'][1]
  active = jnp.ones(k, bool)
  # The reference pooled the whole batch (one process), hence group_size = B.
  kw = dict(tau_merge=cc['tau'], n_bd=config['n_bd'], n_noise=config['n_noise'],
            n_nbd=config['n_nbd'], temperature=config['loss_temperature'], group_size=b)

  cover = ssync.coverage(z_enc, active)
  np.testing.assert_array_equal(cover, f['out/coverage'].astype(bool))
  iou_t, iou = ssync.slot_iou(cover)
  np.testing.assert_allclose(iou_t, f['out/slot_iou_per_frame'], atol=1e-6, rtol=0)
  np.testing.assert_allclose(iou, f['out/slot_iou'], atol=1e-6, rtol=0)
  labels_enc = ssync.hard_labels(z_enc, active, tuple(cc['grid']))
  np.testing.assert_array_equal(ssync.label_areas(labels_enc, k), f['out/enc_area'])

  loss_bd, loss_in, aux, (grad_enc, grad_dec) = _run(z_enc, z_dec, active, **kw)
  for key in ('labels_enc', 'labels_dec', 'labels_enc_merged', 'labels_dec_merged'):
    np.testing.assert_array_equal(aux[key], f[f'out/{key}'], err_msg=key)
  np.testing.assert_array_equal(aux['mapping'], f['out/merge_mapping'])
  np.testing.assert_array_equal(aux['boundary'], f['out/boundary_mask'].astype(bool))
  np.testing.assert_array_equal(aux['interior'], f['out/interior_mask'].astype(bool))
  assert int(aux['boundary'].sum()) == cc['n_boundary']
  assert int(aux['interior'].sum()) == cc['n_interior']
  bd_pre, in_pre = ssync.region_masks(aux['labels_enc'], aux['labels_dec'], kw['n_bd'],
                                      kw['n_noise'], kw['n_nbd'])
  np.testing.assert_array_equal(bd_pre, f['out/boundary_mask_premerge'].astype(bool))
  np.testing.assert_array_equal(in_pre, f['out/interior_mask_premerge'].astype(bool))
  np.testing.assert_allclose(loss_bd, f['out/loss_bd'], atol=1e-6, rtol=0)
  np.testing.assert_allclose(loss_in, f['out/loss_in'], atol=1e-6, rtol=0)
  np.testing.assert_allclose(grad_enc, f['out/grad_zA'], atol=1e-7, rtol=0)
  np.testing.assert_allclose(grad_dec, f['out/grad_zD'], atol=1e-7, rtol=0)


def _areas_to_labels(areas, t=1, g=4):
  """One clip's encoder labels [1, t, g, g] with the given per-slot patch counts."""
  flat = np.concatenate([np.full(a, s) for s, a in enumerate(areas)])
  assert flat.size == t * g * g
  return jnp.asarray(flat.reshape(1, t, g, g), jnp.int32)


def test_merge_is_transitive():
  k, tau = 5, 0.7
  iou = np.eye(k, dtype=np.float32)
  iou[0, 1] = iou[1, 0] = 0.8  # A ~ B
  iou[1, 3] = iou[3, 1] = 0.75  # B ~ C
  iou[0, 3] = iou[3, 0] = 0.3  # IoU(A, C) < tau
  iou[2, 4] = iou[4, 2] = 0.7  # exactly tau: no edge (strict)
  labels = _areas_to_labels([3, 2, 4, 6, 1])
  mapping = ssync.merge_mapping(jnp.asarray(iou[None]), labels, jnp.ones(k, bool), tau)
  # {0, 1, 3} merge into 3 (largest area); 2 and 4 stay singletons.
  np.testing.assert_array_equal(mapping, [[3, 3, 2, 3, 4]])


def test_merge_long_chain_ties_and_inactive():
  k, tau = 9, 0.5
  iou = np.eye(k, dtype=np.float32)
  for i in range(k - 2):  # chain 0-1-...-7: path of length 7 needs 3 squarings
    iou[i, i + 1] = iou[i + 1, i] = 0.9
  iou[7, 8] = iou[8, 7] = 0.9  # 8 is inactive: this edge must be ignored
  areas = [1, 4, 1, 1, 1, 4, 1, 1, 2]  # tie between slots 1 and 5: the search visits 1 first
  labels = _areas_to_labels(areas)
  active = jnp.arange(k) < 8
  mapping = ssync.merge_mapping(jnp.asarray(iou[None]), labels, active, tau)
  np.testing.assert_array_equal(mapping, [[1] * 8 + [8]])


def test_merge_fixture_of_the_original(fixtures_dir):
  """ssync_merge.npz: ties broken in the original's depth-first visiting order."""
  with np.load(fixtures_dir / 'ssync_merge.npz', allow_pickle=False) as z:
    data = check_fixture._Loaded(z)
  config = check_fixture.fixture_config(data)
  components = [c for case in config['cases'].values() for clip in case['clips']
                for c in clip['components']]
  # The file must separate the visiting order from the lowest index, or it proves nothing.
  assert sum(c['winner'] != c['lowest_index_among_tied'] for c in components) >= 5
  for case, outputs in check_fixture.ssync_merge_outputs(data).items():
    for name, ours in outputs.items():
      if name == 'inactive_rows_map_to_themselves':
        assert np.all(ours), case
      elif name == 'slot_iou':
        np.testing.assert_allclose(ours, data[f'{case}/out/{name}'], **check_fixture.TOL_IOU)
      else:
        np.testing.assert_array_equal(ours, data[f'{case}/out/{name}'], err_msg=f'{case}/{name}')


def _stack_search_winners(edges, areas):
  """docs/method.md §9.3 step 5 in plain Python: components by a stack search from the
  smallest index, neighbours pushed in increasing index, a slot marked when popped; the
  winner is the first visited slot of largest area."""
  k = len(areas)
  winner, seen = list(range(k)), set()
  for start in range(k):
    if start in seen or not edges[start].any():
      continue
    order, stack = [], [start]
    while stack:
      node = stack.pop()
      if node not in seen:
        seen.add(node)
        order.append(node)
        stack.extend(int(j) for j in np.flatnonzero(edges[node]) if j not in seen)
    best = max(order, key=lambda s: (areas[s], -order.index(s)))
    for s in order:
      winner[s] = best
  return winner


@pytest.mark.parametrize('k', [2, 7, 11])
def test_merge_winner_matches_a_plain_stack_search(k):
  """Random graphs with many area ties, 64 clips in one batch."""
  rng = np.random.default_rng(k)
  b, g = 64, 4
  upper = np.triu(rng.random((b, k, k)) < rng.uniform(0.1, 0.6, (b, 1, 1)), 1)
  edges = upper | upper.transpose(0, 2, 1)
  iou = np.where(edges, 0.9, 0.1).astype(np.float32)
  labels = rng.integers(0, min(k, 4), (b, 1, g, g)).astype(np.int32)  # few labels: many ties
  mapping = jax.jit(ssync.merge_mapping, static_argnums=3)(
      jnp.asarray(iou), jnp.asarray(labels), jnp.ones(k, bool), 0.5)
  areas = np.asarray(ssync.label_areas(jnp.asarray(labels), k))
  expected = [_stack_search_winners(edges[i], areas[i]) for i in range(b)]
  np.testing.assert_array_equal(mapping, expected)


def _brute_force_regions(labels, n_bd, n_noise, n_nbd):
  b, t, h, w = labels.shape
  d = np.zeros(labels.shape, np.int32)
  for bi, ti, y, x in np.ndindex(*labels.shape):
    for dt, dy, dx in ssync.NEIGHBOUR_OFFSETS:
      tt, yy, xx = min(max(ti + dt, 0), t - 1), min(max(y + dy, 0), h - 1), min(max(x + dx, 0), w - 1)
      d[bi, ti, y, x] += labels[bi, tt, yy, xx] != labels[bi, ti, y, x]
  return (d >= n_bd) & (10 - d >= n_noise), d < n_nbd


@pytest.mark.parametrize('t,thresholds', [(3, (1, 1, 1)), (1, (2, 3, 2))])
def test_region_masks_match_brute_force(t, thresholds):
  rng = np.random.default_rng(0)
  # Few labels in blocks, so every disagreement count 0..10 is likely to occur.
  labels = np.repeat(rng.integers(0, 3, size=(2, t, 4, 3)), 2, axis=3)[..., :5]
  boundary, interior = ssync.region_masks(jnp.asarray(labels), jnp.asarray(labels), *thresholds)
  want_bd, want_in = _brute_force_regions(labels, *thresholds)
  np.testing.assert_array_equal(boundary, want_bd)
  np.testing.assert_array_equal(interior, want_in)


def test_empty_regions_give_zero_loss_and_finite_grads():
  b, t, k, g = 2, 2, 3, 4
  # Encoder: slot 0 wins everywhere -> no boundary. Decoder: a spatial checkerboard
  # of slots 1/2 -> every patch has disagreeing neighbours -> no interior.
  z_enc = jnp.zeros((b, t, k, g * g)).at[:, :, 0].set(5.0)
  checker = (np.add.outer(np.arange(g), np.arange(g)) % 2).reshape(-1)
  z_dec = jnp.zeros((b, t, k, g * g)).at[:, :, 1].set(5.0 * checker).at[:, :, 2].set(
      5.0 * (1 - checker))
  active = jnp.ones(k, bool)
  for loss in ('brier', 'ce'):
    kw = dict(tau_merge=0.7, loss=loss, group_size=1)
    loss_bd, loss_in, aux, grads = _run(z_enc, z_dec, active, **kw)
    assert not aux['boundary'].any() and not aux['interior'].any()
    assert float(loss_bd) == 0.0 and float(loss_in) == 0.0
    for grad in grads:
      assert np.isfinite(grad).all() and not np.any(grad)


@pytest.mark.parametrize('loss,reduction', [('brier', 'group'), ('ce', 'global')])
def test_inactive_slots_equal_sliced_computation(fixtures_dir, loss, reduction):
  f, _, cc = _load(fixtures_dir, '', 'main')
  z_enc, z_dec = jnp.asarray(f['in/zA']), jnp.asarray(f['in/zD'])
  b, t, k, n = z_enc.shape
  k_max = k + 3
  # Padded rows hold huge logits: they would win every argmax and merge if unmasked.
  pad = lambda z: jnp.concatenate([z, jnp.full((b, t, k_max - k, n), 1e4)], axis=2)
  kw = dict(tau_merge=cc['tau'], loss=loss, reduction=reduction, group_size=1)
  active_pad = jnp.arange(k_max) < k
  active = jnp.ones(k, bool)
  bd_pad, in_pad, aux_pad, grads_pad = _run(pad(z_enc), pad(z_dec), active_pad, **kw)
  bd, in_, aux, grads = _run(z_enc, z_dec, active, **kw)
  for key in ('labels_enc_merged', 'labels_dec_merged', 'boundary', 'interior'):
    np.testing.assert_array_equal(aux_pad[key], aux[key], err_msg=key)
  np.testing.assert_array_equal(aux_pad['mapping'][:, :k], aux['mapping'])
  np.testing.assert_array_equal(aux_pad['mapping'][:, k:], np.broadcast_to(np.arange(k, k_max), (b, k_max - k)))
  np.testing.assert_allclose(bd_pad, bd, atol=1e-7, rtol=0)
  np.testing.assert_allclose(in_pad, in_, atol=1e-7, rtol=0)
  for gp, gs in zip(grads_pad, grads):
    np.testing.assert_allclose(gp[:, :, :k], gs, atol=1e-9, rtol=0)
    assert not np.any(gp[:, :, k:])  # inactive rows: exactly zero gradient


def test_group_reduction_is_mean_of_per_group_means(fixtures_dir):
  f, _, cc = _load(fixtures_dir, '', 'main')
  z_enc, z_dec = jnp.asarray(f['in/zA']), jnp.asarray(f['in/zD'])
  b, _, k, _ = z_enc.shape
  active = jnp.ones(k, bool)
  per_clip = [_run(z_enc[i:i + 1], z_dec[i:i + 1], active, tau_merge=cc['tau'])
              for i in range(b)]
  grouped = _run(z_enc, z_dec, active, tau_merge=cc['tau'], group_size=1)
  for j in range(2):
    np.testing.assert_allclose(grouped[j], np.mean([p[j] for p in per_clip]), atol=1e-7, rtol=0)
  # 'global' ignores group_size and equals one pool of the whole batch (the fixture).
  glob = _run(z_enc, z_dec, active, tau_merge=cc['tau'], group_size=1, reduction='global')
  np.testing.assert_allclose(glob[0], f['out/loss_bd'], atol=1e-6, rtol=0)
  assert abs(float(grouped[0]) - float(glob[0])) > 1e-6  # the two reductions do differ here


def test_ce_loss_matches_numpy(fixtures_dir):
  f, _, cc = _load(fixtures_dir, '', 'main')
  z_enc, z_dec = f['in/zA'], f['in/zD']
  b, t, k, n = z_enc.shape
  loss_bd, loss_in, _, _ = _run(jnp.asarray(z_enc), jnp.asarray(z_dec), jnp.ones(k, bool),
                                tau_merge=cc['tau'], loss='ce', temperature=0.5, group_size=b)

  def ce(z, labels, mask):
    z = z.astype(np.float64) / 0.5
    logp = z - z.max(2, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(2, keepdims=True))
    picked = np.take_along_axis(logp, labels.reshape(b, t, 1, n), axis=2)[:, :, 0]
    return -(picked * mask.reshape(b, t, n)).sum() / mask.sum()

  np.testing.assert_allclose(loss_bd, ce(z_dec, f['out/labels_enc_merged'], f['out/boundary_mask']),
                             atol=1e-6, rtol=0)
  np.testing.assert_allclose(loss_in, ce(z_enc, f['out/labels_dec_merged'], f['out/interior_mask']),
                             atol=1e-6, rtol=0)


def test_gate_switches_without_recompiling():
  rng = np.random.default_rng(1)
  z_enc = jnp.asarray(rng.normal(size=(2, 2, 3, 9)), jnp.float32)
  # Decoder slot 0 dominates: every patch is interior, so loss_in is non-zero.
  z_dec = jnp.asarray(rng.normal(size=(2, 2, 3, 9)), jnp.float32).at[:, :, 0].add(5.0)
  active = jnp.ones(3, bool)
  start, traces = 10, []

  @jax.jit
  def gated(step, a, d):
    traces.append(None)  # runs once per trace (compilation)
    fn = lambda a, d: ssync.ssync_weight(step, start) * _losses(a, d, active, tau_merge=0.7)
    return jax.value_and_grad(fn, argnums=(0, 1))(a, d)

  loss_bd, loss_in, _, _ = _run(z_enc, z_dec, active, tau_merge=0.7)
  ungated = loss_bd + loss_in
  assert float(ungated) > 0
  for step, want in ((0, 0.0), (start - 1, 0.0), (start, float(ungated)), (start + 5, float(ungated))):
    value, grads = gated(jnp.asarray(step, jnp.int32), z_enc, z_dec)
    np.testing.assert_allclose(value, want, rtol=1e-6)
    assert bool(np.any(grads[0]) and np.any(grads[1])) == (step >= start)
  assert len(traces) == 1
  assert float(ssync.ssync_weight(4, 5)) == 0.0 and float(ssync.ssync_weight(5, 5)) == 1.0


def test_errors_name_the_bad_value():
  z = jnp.zeros((2, 1, 2, 6))
  with pytest.raises(ValueError, match=r'6 patches, but the patch grid \(2, 2\) has 4'):
    ssync.hard_labels(z, jnp.ones(2, bool), (2, 2))
  z = jnp.zeros((3, 1, 2, 4))
  with pytest.raises(ValueError, match='group size 2'):
    ssync.ssync_losses(z, z, jnp.ones(2, bool), grid=(2, 2), tau_merge=0.7, group_size=2)
  with pytest.raises(ValueError, match="ssync.loss='mse'"):
    ssync.ssync_losses(z, z, jnp.ones(2, bool), grid=(2, 2), tau_merge=0.7, loss='mse')
  with pytest.raises(ValueError, match="ssync.reduction='mean'"):
    ssync.ssync_losses(z, z, jnp.ones(2, bool), grid=(2, 2), tau_merge=0.7, reduction='mean')


def test_hard_labels_on_a_non_square_grid():
  """N = 6 patches on a 2 x 3 grid, row-major: slot 1 wins the last column."""
  z = np.zeros((1, 1, 2, 6), np.float32)
  z[0, 0, 1, [2, 5]] = 1.0
  labels = np.asarray(ssync.hard_labels(jnp.asarray(z), jnp.ones(2, bool), (2, 3)))
  np.testing.assert_array_equal(labels[0, 0], [[0, 0, 1], [0, 0, 1]])
