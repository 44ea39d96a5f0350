"""The three training losses of SlotContrast / SlotCurri (docs/method.md §6), as pure functions.

Every loss is a scalar float32 mean over the arrays it is given (the global batch
under jit with sharded inputs); SSync's losses live in ssync.py.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

# SSIM constants (docs/method.md §6.3): data range 1, K1 = 0.01, K2 = 0.03, Gaussian sigma 1.5, 3 taps.
_C1 = 0.01 ** 2
_C2 = 0.03 ** 2
_SSIM_SIGMA = 1.5
_SSIM_TAPS = 3
_MINMAX_EPS = 1e-6


def feature_mse(recon: jax.Array, targets: jax.Array) -> jax.Array:
  """Feature reconstruction loss, the mean over every element (docs/method.md §6.1).

  recon: [B, T, N, D_f] decoder reconstruction; targets: [B, T, N, D_f] (stop-gradient).
  Returns [] float32.
  """
  diff = recon.astype(jnp.float32) - jax.lax.stop_gradient(targets).astype(jnp.float32)
  return jnp.mean(jnp.square(diff))


def slot_contrast(slots: jax.Array, active_mask: jax.Array, temperature: float = 0.1,
                  group_size: int = 64) -> jax.Array:
  """Slot-slot contrastive loss between consecutive frames (docs/method.md §6.2, quirk 10).

  The pool of a group of `group_size` consecutive clips holds their active slots (pool
  index b * K + k). For every anchor, a slot at frame t+1, the positive is the same
  slot at frame t and the softmax runs over all frame-t slots of the pool (the class
  axis of the reference's cross-entropy is the frame-t slot axis). The loss is the
  mean over the (T-1) * group_size * K_active anchors of a group, then over groups.

  Args:
    slots: [B, T, K, D] corrected slots (L2-normalised here).
    active_mask: [K] bool; inactive slots are neither anchors nor negatives.
    temperature: tau.
    group_size: clips per pool; B must be a multiple of it. group_size >= B means
      one pool of all B clips.

  Returns [] float32; 0 when T < 2.
  """
  b, t, k, d = slots.shape
  if active_mask.shape != (k,):
    raise ValueError(f'active_mask shape {active_mask.shape} does not match {k} slots')
  if t < 2:
    return jnp.zeros((), jnp.float32)
  group = min(group_size, b)
  if b % group:
    raise ValueError(f'batch of {b} clips is not a multiple of loss.contrast_group_size='
                     f'{group_size}; change the batch size or the group size')
  x = slots.astype(jnp.float32)
  # torch F.normalize: x / max(||x||, 1e-12).
  x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
  x = x.reshape(b // group, group, t, k, d).transpose(0, 2, 1, 3, 4)
  x = x.reshape(b // group, t, group * k, d)  # pool index = clip * K + slot
  valid = jnp.tile(active_mask, group)  # [P]
  logits = jnp.einsum('gtid,gtjd->gtij', x[:, :-1], x[:, 1:]) / temperature  # i: frame t
  logits = jnp.where(valid[:, None], logits, -1e9)  # inactive frame-t slots: not negatives
  log_probs = jax.nn.log_softmax(logits, axis=2)  # over frame-t slots, per anchor j
  nll = -jnp.diagonal(log_probs, axis1=2, axis2=3)  # [G, T-1, P]
  weights = jnp.broadcast_to(valid, nll.shape).astype(jnp.float32)
  per_group = jnp.sum(nll * weights, axis=(1, 2)) / jnp.maximum(jnp.sum(weights, axis=(1, 2)), 1)
  return jnp.mean(per_group)


def _gaussian_taps() -> np.ndarray:
  coords = np.arange(_SSIM_TAPS, dtype=np.float64) - _SSIM_TAPS // 2
  g = np.exp(-(coords ** 2) / (2 * _SSIM_SIGMA ** 2))
  return (g / g.sum()).astype(np.float32)


def _gaussian_filter(x: jax.Array, axes: Sequence[int]) -> jax.Array:
  """Separable 3-tap Gaussian, valid padding, along each axis of length >= 3
  (pytorch-msssim skips shorter axes)."""
  g = _gaussian_taps()
  for axis in axes:
    n = x.shape[axis]
    if n < _SSIM_TAPS:
      continue
    taps = [jax.lax.slice_in_dim(x, i, n - _SSIM_TAPS + 1 + i, axis=axis)
            for i in range(_SSIM_TAPS)]
    x = g[0] * taps[0] + g[1] * taps[1] + g[2] * taps[2]
  return x


def ssim3d(recon: jax.Array, targets: jax.Array, grid_hw: tuple[int, int]) -> jax.Array:
  """Structure-aware 3-D SSIM loss, 1 - SSIM (docs/method.md §6.3), always in float32.

  Each of the D_f feature channels is a [T, h, w] volume. Prediction and target are
  min-max normalised jointly per sample (min and max over both, stop-gradient), then
  SSIM uses a separable Gaussian 3x3x3 window (sigma 1.5) with valid padding, and is
  averaged over valid window centres, channels and batch.

  Args:
    recon: [B, T, N, D_f] reconstruction.
    targets: [B, T, N, D_f] targets (stop-gradient).
    grid_hw: (h, w) with h * w = N, patches row-major.

  Returns [] float32.
  """
  b, t, n, c = recon.shape
  h, w = grid_hw
  if h * w != n:
    raise ValueError(f'grid_hw={grid_hw} does not match N={n} patches')
  x = recon.astype(jnp.float32).reshape(b, t, h, w, c)
  y = jax.lax.stop_gradient(targets).astype(jnp.float32).reshape(b, t, h, w, c)
  axes = (1, 2, 3, 4)
  lo = jax.lax.stop_gradient(jnp.minimum(jnp.min(x, axis=axes, keepdims=True),
                                         jnp.min(y, axis=axes, keepdims=True)))
  hi = jax.lax.stop_gradient(jnp.maximum(jnp.max(x, axis=axes, keepdims=True),
                                         jnp.max(y, axis=axes, keepdims=True)))
  x = (x - lo) / (hi - lo + _MINMAX_EPS)
  y = (y - lo) / (hi - lo + _MINMAX_EPS)

  blur = lambda v: _gaussian_filter(v, (1, 2, 3))
  mu_x, mu_y = blur(x), blur(y)
  sigma_xx = blur(x * x) - mu_x * mu_x
  sigma_yy = blur(y * y) - mu_y * mu_y
  sigma_xy = blur(x * y) - mu_x * mu_y
  luminance = (2 * mu_x * mu_y + _C1) / (mu_x * mu_x + mu_y * mu_y + _C1)
  contrast_structure = (2 * sigma_xy + _C2) / (sigma_xx + sigma_yy + _C2)
  return 1.0 - jnp.mean(luminance * contrast_structure)
