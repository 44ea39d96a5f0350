"""Losses against direct float64 NumPy transcriptions of docs/method.md §6 and the golden fixture."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slotcurri_jax import losses

# Jitted once per shape: eager mode would compile every small op separately.
_contrast = jax.jit(losses.slot_contrast, static_argnums=(2, 3))
_contrast_grad = jax.jit(jax.grad(losses.slot_contrast), static_argnums=(2, 3))
_ssim = jax.jit(losses.ssim3d, static_argnums=2)


def _numpy_contrast(slots, active, tau, group):
  """docs/method.md §6.2 with explicit loops: anchors are frame-(t+1) slots, softmax over frame t."""
  b, t, k, _ = slots.shape
  s = slots / np.linalg.norm(slots, axis=-1, keepdims=True)
  idx = [i for i in range(k) if active[i]]
  per_group = []
  for g in range(b // group):
    pool = [(c, i) for c in range(g * group, (g + 1) * group) for i in idx]
    terms = []
    for step in range(t - 1):
      for anchor in pool:
        logits = np.array([s[c, step, i] @ s[anchor[0], step + 1, anchor[1]] / tau
                           for c, i in pool])
        positive = pool.index(anchor)
        terms.append(np.log(np.exp(logits).sum()) - logits[positive])
    per_group.append(np.mean(terms))
  return np.mean(per_group)


def _numpy_ssim_loss(recon, targets, hw):
  b, t, n, c = recon.shape
  x = recon.astype(np.float64).reshape(b, t, *hw, c).transpose(0, 4, 1, 2, 3)
  y = targets.astype(np.float64).reshape(b, t, *hw, c).transpose(0, 4, 1, 2, 3)
  lo = np.minimum(x.min(axis=(1, 2, 3, 4), keepdims=True), y.min(axis=(1, 2, 3, 4), keepdims=True))
  hi = np.maximum(x.max(axis=(1, 2, 3, 4), keepdims=True), y.max(axis=(1, 2, 3, 4), keepdims=True))
  x, y = (x - lo) / (hi - lo + 1e-6), (y - lo) / (hi - lo + 1e-6)
  g = np.exp(-np.array([1.0, 0.0, 1.0]) / (2 * 1.5 ** 2))
  g /= g.sum()

  def blur(v):
    for axis in (2, 3, 4):
      if v.shape[axis] >= 3:
        v = sum(g[i] * np.take(v, range(i, v.shape[axis] - 2 + i), axis=axis) for i in range(3))
    return v

  mx, my = blur(x), blur(y)
  sxx, syy, sxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
  ssim = ((2 * mx * my + 1e-4) / (mx ** 2 + my ** 2 + 1e-4)) * (
      (2 * sxy + 9e-4) / (sxx + syy + 9e-4))
  return 1 - ssim.reshape(b, c, -1).mean(-1).mean()


def test_feature_mse_is_plain_mean_and_stops_target_gradient():
  r = np.random.RandomState(0)
  recon, targets = r.randn(2, 3, 4, 5).astype(np.float32), r.randn(2, 3, 4, 5).astype(np.float32)
  np.testing.assert_allclose(losses.feature_mse(recon, targets), np.mean((recon - targets) ** 2),
                             rtol=1e-6)
  assert np.all(jax.grad(losses.feature_mse, argnums=1)(recon, targets) == 0)


@pytest.mark.parametrize('group', [2, 4])
def test_slot_contrast_matches_spec_with_masks_and_groups(group):
  r = np.random.RandomState(1)
  slots = r.randn(4, 3, 5, 6).astype(np.float32)
  active = np.array([True, True, False, True, False])
  got = _contrast(jnp.asarray(slots), jnp.asarray(active), 0.1, group)
  np.testing.assert_allclose(got, _numpy_contrast(slots, active, 0.1, group), rtol=1e-5)


def test_slot_contrast_direction_and_padding():
  r = np.random.RandomState(2)
  slots = r.randn(2, 3, 3, 4).astype(np.float32)
  active = np.ones(3, bool)
  forward = _contrast(slots, active, 0.1, 64)
  # Reversing time swaps which frame is the softmax axis: a different value (docs/method.md §6.2).
  reversed_time = _contrast(slots[:, ::-1], active, 0.1, 64)
  assert abs(float(forward) - float(reversed_time)) > 1e-3
  # group_size >= B is one pool of all clips.
  np.testing.assert_allclose(forward, _numpy_contrast(slots, active, 0.1, 2), rtol=1e-5)
  # Inactive padded slots (even huge ones) change nothing and get zero gradient.
  padded = np.concatenate([slots, 1e3 * r.randn(2, 3, 2, 4).astype(np.float32)], axis=2)
  mask = np.array([True, True, True, False, False])
  np.testing.assert_allclose(_contrast(padded, mask, 0.1, 64), forward, rtol=1e-5)
  grad = _contrast_grad(jnp.asarray(padded), jnp.asarray(mask), 0.1, 64)
  assert np.all(np.asarray(grad)[:, :, 3:] == 0) and np.all(np.isfinite(grad))


def test_slot_contrast_errors_and_single_frame():
  slots = jnp.ones((6, 2, 3, 4))
  with pytest.raises(ValueError, match='multiple of loss.contrast_group_size=4'):
    losses.slot_contrast(slots, jnp.ones(3, bool), 0.1, group_size=4)
  assert float(losses.slot_contrast(slots[:, :1], jnp.ones(3, bool), 0.1, 64)) == 0.0


@pytest.mark.parametrize('t', [4, 2])  # T=2: the time axis is too short to filter along
def test_ssim3d_matches_spec(t):
  r = np.random.RandomState(3)
  targets = r.randn(2, t, 20, 5).astype(np.float32)
  recon = (targets + 0.5 * r.randn(*targets.shape)).astype(np.float32)
  got = _ssim(jnp.asarray(recon), jnp.asarray(targets), (4, 5))
  np.testing.assert_allclose(got, _numpy_ssim_loss(recon, targets, (4, 5)), atol=2e-6)
  assert abs(float(_ssim(targets, targets, (4, 5)))) < 1e-5
  grads = jax.jit(jax.grad(losses.ssim3d, argnums=(0, 1)), static_argnums=2)(
      jnp.asarray(recon), jnp.asarray(targets), (4, 5))
  assert np.abs(np.asarray(grads[0])).max() > 0
  assert np.all(np.asarray(grads[1]) == 0)  # the target is stop-gradient


def test_ssim3d_is_float32_under_bfloat16_inputs():
  r = np.random.RandomState(4)
  x = r.randn(1, 3, 9, 2).astype(np.float32)
  got = _ssim(jnp.asarray(x, jnp.bfloat16), jnp.asarray(x + 0.1, jnp.bfloat16), (3, 3))
  assert got.dtype == jnp.float32


def test_ssim3d_on_the_stored_reference_recon(fixtures_dir):
  with np.load(fixtures_dir / 'slot_model.npz', allow_pickle=False) as z:
    x = z['in/X']
    grid = int(round(x.shape[2] ** 0.5))
    for rollout in ('fwd', 'fwdN', 'cyc'):
      got = _ssim(z[f'out/{rollout}/recon'], x, (grid, grid))
      np.testing.assert_allclose(got, z[f'out/{rollout}/loss_ssim'], atol=2e-5)
      np.testing.assert_allclose(losses.feature_mse(z[f'out/{rollout}/recon'], x),
                                 z[f'out/{rollout}/loss_mse'], atol=1e-6)
