"""The MLP broadcast decoder with alpha masks (docs/method.md §4.6)."""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from slotcurri_jax.models import layers


class MLPDecoder(nn.Module):
  """Decodes each slot at every patch position; alpha masks mix the per-slot outputs.

  Params: 'pos_emb' [N, D_s] (reference [1, 1, N, D_s]), 'mlp' (dense_0 ... dense_L;
  the last one has D_f + 1 outputs, the alpha logit is the **last** channel).

  Attributes:
    grid: the patch grid (G_h, G_w) of a frame, N = G_h * G_w patches (row-major).
    output_dim: D_f, the reconstruction width.
    hidden: hidden widths of the MLP (ReLU after each).
    pos_init: 'normal', the reference's N(0, 1/D_s) init of pos_emb; or 'sincos', 2-D
      sine-cosine features of the patch coordinates (the demo's head start: with pixel
      targets the decoder need not discover the grid's geometry first).
    remat: recompute the MLP's activations in the backward pass instead of storing them
      ([..., K, N, hidden] per layer, the largest arrays of a training step).
    dtype: compute dtype of the MLP; the masks are a float32 softmax.
  """
  grid: tuple[int, int]
  output_dim: int
  hidden: Sequence[int] = (1024, 1024, 1024)
  pos_init: str = 'normal'
  remat: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, slots: jax.Array, active: jax.Array) -> dict[str, jax.Array]:
    """slots: [..., K, D_s] corrected slots; active: [K] bool.

    Returns recon [..., N, D_f]; masks [..., K, N] (softmax over active slots, exactly
    0 on inactive rows); alpha [..., K, N] (alpha logits, unmasked).
    """
    d = slots.shape[-1]
    inits = {'normal': layers.scaled_normal_init(d), 'sincos': sincos_position_init(self.grid)}
    if self.pos_init not in inits:
      raise ValueError(f'decoder pos_init={self.pos_init!r}; use one of {sorted(inits)}')
    pos_emb = self.param('pos_emb', inits[self.pos_init], (self.grid[0] * self.grid[1], d))
    x = slots[..., :, None, :] + pos_emb  # broadcast: [..., K, N, D_s]
    mlp_class = nn.remat(layers.MLP) if self.remat else layers.MLP
    out = mlp_class(hidden=tuple(self.hidden), out_features=self.output_dim + 1,
                     dtype=self.dtype, name='mlp')(x)
    per_slot, alpha = out[..., :self.output_dim], out[..., self.output_dim].astype(jnp.float32)
    masks = jax.nn.softmax(layers.mask_slots(alpha, active, axis=alpha.ndim - 2), axis=-2)
    recon = jnp.einsum('...kn,...knd->...nd', masks, per_slot.astype(jnp.float32))
    return {'recon': recon, 'masks': masks, 'alpha': alpha}


def sincos_position_init(grid: tuple[int, int]):
  """An init of pos_emb [N, D] (N = G_h * G_w) with 2-D sine-cosine features of each
  patch's (row, column) on the patch grid `grid`.

  D/4 geometric frequencies per axis (periods from twice the axis' side down to 3
  patches, so none aliases on the integer grid), sin and cos each: neighbouring patches
  get similar rows. The init's `key` is unused (it is deterministic).
  """
  def init(key, shape, dtype=jnp.float32) -> jax.Array:
    del key
    n, d = shape
    if n != grid[0] * grid[1] or d % 4:
      raise ValueError(f'sincos position init of shape {tuple(shape)} needs N = '
                       f'{grid[0]} x {grid[1]} (the patch grid) and D % 4 == 0')
    rows, cols = jnp.meshgrid(jnp.arange(grid[0]), jnp.arange(grid[1]), indexing='ij')

    def feats(x, side):
      periods = 2.0 * side * (3.0 / (2.0 * side)) ** (jnp.arange(d // 4) / max(d // 4 - 1, 1))
      angle = 2 * jnp.pi * x.reshape(-1, 1) / periods
      return [jnp.sin(angle), jnp.cos(angle)]

    return jnp.concatenate(feats(rows, grid[0]) + feats(cols, grid[1]), axis=1).astype(dtype)

  return init
