"""Metrics: golden test against metrics.npz, sklearn / brute-force cross-checks, edge cases."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from slotcurri_jax import metrics


def _config(fixtures_dir) -> dict:
  with np.load(fixtures_dir / 'metrics.npz', allow_pickle=False) as z:
    return json.loads(str(z['config']))


def _load(fixtures_dir, case):
  z = np.load(fixtures_dir / 'metrics.npz', allow_pickle=False)
  data = {k[len(case) + 1:]: z[k] for k in z.files if k.startswith(case + '/')}
  if case == 'ytvis':
    # Instance channels -> ids (channel c is id c + 1, 0 = no instance); with
    # ignore_background=True this is the reference's instance-channel convention.
    mask = data['in/true_mask'].astype(bool)
    assert (mask.sum(2) <= 1).all()
    data['true'] = np.where(mask.any(2), mask.argmax(2) + 1, 0).astype(np.int32)
  else:
    data['true'] = data['in/true_ids']
  return data


@pytest.mark.parametrize('case', ['movi', 'ytvis'])
def test_fixture(fixtures_dir, case):
  d = _load(fixtures_dir, case)
  soft = jnp.asarray(d['in/pred_soft'])  # [B, T, K, N] -> [B, T, K, G_h, G_w]
  soft = soft.reshape(soft.shape[:3] + tuple(_config(fixtures_dir)['cases'][case]['patch_grid']))
  out_hw = d['true'].shape[-2:]
  np.testing.assert_allclose(np.asarray(metrics.upsample_masks(soft, out_hw)),
                             d['out/pred_resized'], atol=1e-6, rtol=0)
  active = jnp.ones((soft.shape[2],), bool)
  pred = np.asarray(jax.jit(metrics.masks_to_ids, static_argnums=2)(soft, active, out_hw))
  np.testing.assert_array_equal(pred, d['out/pred_labels'])

  true = d['true']
  ari = metrics.fg_ari(pred, true, ignore_background=True)
  mbo = metrics.mbo(pred, true, ignore_background=True)
  np.testing.assert_allclose(ari, d['out/ari_per_video'], atol=1e-6, rtol=0)
  np.testing.assert_allclose(mbo, d['out/mbo_per_video'], atol=1e-6, rtol=0)
  np.testing.assert_allclose(np.nanmean(ari), d['out/ari'], atol=1e-6, rtol=0)
  np.testing.assert_allclose(np.nanmean(mbo), d['out/mbo'], atol=1e-6, rtol=0)
  for name, fn in (('image_ari', metrics.image_fg_ari), ('image_mbo', metrics.image_mbo)):
    values, counted = fn(pred, true, ignore_background=True, convention=case)
    np.testing.assert_array_equal(counted, d[f'out/{name}_per_frame_counted'].astype(bool))
    assert np.isnan(values[~counted]).all()
    np.testing.assert_allclose(values[counted], d[f'out/{name}_per_frame'][counted],
                               atol=1e-6, rtol=0)
    per_video = [values[b][counted[b]].mean() for b in range(values.shape[0])]
    np.testing.assert_allclose(per_video, d[f'out/{name}_per_video'], atol=1e-6, rtol=0)
    np.testing.assert_allclose(values[counted].mean(), d[f'out/{name}'], atol=1e-6, rtol=0)


def test_movi_background_only_frame_counts_for_ari_only(fixtures_dir):
  d = _load(fixtures_dir, 'movi')
  pred, true = d['out/pred_labels'], d['true']
  assert (true[0, 3] == 0).all()  # the fixture's background-only frame
  ari, ari_counted = metrics.image_fg_ari(pred, true, convention='movi')
  _, mbo_counted = metrics.image_mbo(pred, true, convention='movi')
  assert ari_counted[0, 3] and ari[0, 3] == 1.0 and not mbo_counted[0, 3]
  _, ari_counted_yt = metrics.image_fg_ari(pred, true, convention='ytvis')
  assert not ari_counted_yt[0, 3]


def _random_ids(rng, shape, num_true, num_pred):
  true = rng.integers(0, num_true, size=shape).astype(np.int32)
  # Correlate the prediction with the truth so the ARI is not ~0 everywhere.
  pred = np.where(rng.random(shape) < 0.6, true % num_pred,
                  rng.integers(0, num_pred, size=shape)).astype(np.int32)
  return pred, true


@pytest.mark.parametrize('ignore_background', [True, False])
def test_fg_ari_matches_sklearn(ignore_background):
  rng = np.random.default_rng(0)
  pred, true = _random_ids(rng, (4, 3, 9, 7), num_true=5, num_pred=4)
  ours = metrics.fg_ari(pred, true, ignore_background=ignore_background)
  assert ours.dtype == np.float64
  for b in range(pred.shape[0]):
    keep = (true[b] > 0) if ignore_background else np.ones_like(true[b], bool)
    ref = adjusted_rand_score(true[b][keep], pred[b][keep])
    np.testing.assert_allclose(ours[b], ref, atol=1e-10)
  values, counted = metrics.image_fg_ari(pred, true, ignore_background=ignore_background)
  assert counted.all()
  for b, t in np.ndindex(*pred.shape[:2]):
    keep = (true[b, t] > 0) if ignore_background else np.ones_like(true[b, t], bool)
    np.testing.assert_allclose(
        values[b, t], adjusted_rand_score(true[b, t][keep], pred[b, t][keep]), atol=1e-10)


def _brute_mbo(pred, true, ignore_background):
  """One video [T, H, W]: loops over objects and predicted ids with boolean masks."""
  scores = []
  for c in np.unique(true):
    if ignore_background and c == 0:
      continue
    g = true == c
    best = 0.0
    for j in range(pred.max() + 1):
      q = pred == j
      best = max(best, (g & q).sum() / (g | q).sum())
    scores.append(best)
  return np.mean(scores) if scores else np.nan


@pytest.mark.parametrize('ignore_background', [True, False])
def test_mbo_matches_brute_force(ignore_background):
  rng = np.random.default_rng(1)
  pred, true = _random_ids(rng, (3, 4, 8, 8), num_true=6, num_pred=5)
  true[1][true[1] == 3] = 0  # an id that never appears in video 1
  ours = metrics.mbo(pred, true, ignore_background=ignore_background)
  for b in range(3):
    np.testing.assert_allclose(ours[b], _brute_mbo(pred[b], true[b], ignore_background),
                               atol=1e-12)
  values, counted = metrics.image_mbo(pred, true, ignore_background=ignore_background)
  assert counted.all()
  for b, t in np.ndindex(3, 4):
    np.testing.assert_allclose(
        values[b, t], _brute_mbo(pred[b, t:t + 1], true[b, t:t + 1], ignore_background),
        atol=1e-12)


def test_perfect_and_permuted_predictions_score_one():
  rng = np.random.default_rng(2)
  true = rng.integers(0, 4, size=(2, 3, 6, 6)).astype(np.int32)
  permuted = np.asarray([5, 2, 0, 3], np.int32)[true]  # background gets a slot too
  for pred in (true, permuted):
    np.testing.assert_allclose(metrics.fg_ari(pred, true), 1.0)
    np.testing.assert_allclose(metrics.mbo(pred, true), 1.0)
    np.testing.assert_allclose(metrics.image_fg_ari(pred, true)[0], 1.0)
    np.testing.assert_allclose(metrics.image_mbo(pred, true)[0], 1.0)
    np.testing.assert_allclose(metrics.fragmentation(pred, true), 1.0)


def test_background_only_video_is_nan():
  true = np.zeros((2, 2, 4, 4), np.int32)
  true[1, 0, :2, :2] = 1
  pred = np.zeros_like(true)
  ari, mbo = metrics.fg_ari(pred, true), metrics.mbo(pred, true)
  assert np.isnan(ari[0]) and np.isnan(mbo[0])
  assert ari[1] == 1.0 and mbo[1] == pytest.approx(4 / 32)
  assert np.isnan(metrics.fragmentation(pred, true)[0])
  values, counted = metrics.image_fg_ari(pred, true, convention='ytvis')
  np.testing.assert_array_equal(counted, [[False, False], [True, False]])
  values, counted = metrics.image_fg_ari(pred, true, convention='movi')
  assert counted.all() and (values == 1.0).all()
  # With the background as a regular cluster every video and frame has ground truth.
  assert np.isfinite(metrics.fg_ari(pred, true, ignore_background=False)).all()


def test_fragmentation_hand_made():
  true = np.zeros((1, 1, 4, 10), np.int32)
  true[0, 0, :, :4] = 1  # object 1: 16 px
  true[0, 0, :, 4:8] = 2  # object 2: 16 px
  pred = np.zeros_like(true)
  pred[0, 0, :2, :4] = 1  # object 1 split into slots 1 and 2
  pred[0, 0, 2:, :4] = 2
  pred[0, 0, :, 4:8] = 3
  pred[0, 0, 0, 8:] = 3  # slot 3 spills onto 2 background px: still 16/18 inside object 2
  np.testing.assert_allclose(metrics.fragmentation(pred, true), [(2 + 1) / 2])
  # One slot covering both objects lies 50% inside each: a fragment of both (>= inside).
  pred_merged = np.where(true > 0, 1, 0).astype(np.int32)
  np.testing.assert_allclose(metrics.fragmentation(pred_merged, true), [1.0])
  # Unequal objects: the slot lies 75% inside the big one and 25% inside the small one.
  true_unequal = true.copy()
  true_unequal[0, 0, :, 4:6] = 1
  pred_unequal = np.where(true_unequal > 0, 1, 0).astype(np.int32)
  np.testing.assert_allclose(metrics.fragmentation(pred_unequal, true_unequal), [0.5])
  # A slot below the cover threshold does not count.
  pred_tiny = pred.copy()
  pred_tiny[0, 0, 0, 0] = 4  # 1 px of object 1's 16: 6% -> counts at cover=0.05, not at 0.1
  np.testing.assert_allclose(metrics.fragmentation(pred_tiny, true), [(3 + 1) / 2])
  np.testing.assert_allclose(metrics.fragmentation(pred_tiny, true, cover=0.1), [(2 + 1) / 2])


def test_masks_to_ids_excludes_inactive_and_breaks_ties_low():
  masks = np.zeros((1, 1, 3, 2, 2), np.float32)
  masks[0, 0, 2] = 1.0  # the largest mask belongs to an inactive slot
  masks[0, 0, 0] = masks[0, 0, 1] = 0.5  # tie between the two active slots
  ids = metrics.masks_to_ids(jnp.asarray(masks), jnp.asarray([True, True, False]), (4, 4))
  assert ids.dtype == jnp.int32 and ids.shape == (1, 1, 4, 4)
  assert (np.asarray(ids) == 0).all()
  with pytest.raises(ValueError, match=r'masks must be \[B, T, K, G_h, G_w\]'):
    metrics.upsample_masks(jnp.zeros((1, 1, 2, 4)), (4, 4))


@pytest.mark.parametrize('convention', ['movi', 'ytvis'])
def test_video_scores_equals_single_functions(convention):
  rng = np.random.default_rng(3)
  pred, true = _random_ids(rng, (2, 3, 8, 8), num_true=4, num_pred=5)
  true[0, 1] = 0  # a background-only frame, where the conventions differ
  got = metrics.video_scores(pred, true, convention=convention)
  np.testing.assert_array_equal(got['ari'], metrics.fg_ari(pred, true))
  np.testing.assert_array_equal(got['mbo'], metrics.mbo(pred, true))
  np.testing.assert_array_equal(got['fragmentation'], metrics.fragmentation(pred, true))
  for name, fn in (('image_ari', metrics.image_fg_ari), ('image_mbo', metrics.image_mbo)):
    values, counted = fn(pred, true, convention=convention)
    np.testing.assert_array_equal(got[name], values)
    np.testing.assert_array_equal(got[f'{name}_counted'], counted)


def test_bad_inputs_raise():
  ids = np.zeros((1, 2, 3, 3), np.int32)
  with pytest.raises(ValueError, match='must both be'):
    metrics.fg_ari(ids, ids[:, :1])
  with pytest.raises(ValueError, match='integer'):
    metrics.mbo(ids.astype(np.float32), ids)
  with pytest.raises(ValueError, match='convention'):
    metrics.image_mbo(ids, ids, convention='coco')


def test_masks_to_ids_on_a_non_square_grid():
  """A 2 x 3 patch grid upsampled to 4 x 6: slot 1 owns the last patch column, so it wins
  the output columns whose bilinear source lies past the middle of columns 1 and 2."""
  masks = np.zeros((1, 1, 2, 2, 3), np.float32)
  masks[0, 0, 0, :, :2] = 1.0
  masks[0, 0, 1, :, 2] = 1.0
  ids = np.asarray(metrics.masks_to_ids(jnp.asarray(masks), jnp.ones(2, bool), (4, 6)))
  np.testing.assert_array_equal(ids[0, 0], [[0, 0, 0, 0, 1, 1]] * 4)
