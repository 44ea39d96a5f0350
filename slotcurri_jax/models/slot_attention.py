"""The corrector: single-head slot attention with a PyTorch-layout GRU (docs/method.md §4.4)."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from slotcurri_jax.models import layers


def _uniform(bound: float) -> nn.initializers.Initializer:
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


class GRUCell(nn.Module):
  """torch.nn.GRUCell: two [in, 3H] kernels and two [3H] biases, gate order (r, z, n).

  Flax's GRUCell folds the r/z bias pairs into one; keeping PyTorch's layout makes
  checkpoint import a plain copy (kernel = weight.T) and the init match (docs/method.md §4.4):
  every weight and bias ~ U(+-1/sqrt(H)). Params: 'input' {kernel, bias} (weight_ih,
  bias_ih) and 'hidden' {kernel, bias} (weight_hh, bias_hh).
  """
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs: jax.Array, hidden: jax.Array) -> jax.Array:
    """inputs: [..., D_in], hidden: [..., H] -> new hidden [..., H]."""
    init = _uniform(self.features ** -0.5)
    dense = lambda name: nn.Dense(3 * self.features, kernel_init=init, bias_init=init,
                                  dtype=self.dtype, name=name)
    i_r, i_z, i_n = jnp.split(dense('input')(inputs), 3, axis=-1)
    h_r, h_z, h_n = jnp.split(dense('hidden')(hidden), 3, axis=-1)
    r = nn.sigmoid(i_r + h_r)
    z = nn.sigmoid(i_z + h_z)
    n = jnp.tanh(i_n + r * h_n)
    return ((1.0 - z) * n + z * hidden).astype(hidden.dtype)


class SlotAttention(nn.Module):
  """Single-head slot attention, no q/k/v bias (quirk 3), GRU + residual MLP update.

  Attributes:
    slot_dim: D_s, the width of inputs, slots, q, k and v.
    eps: added to the attention before renormalising over inputs.
    gru_hidden: 'normed' (quirk 2, the reference: GRU hidden = LN(slots)) | 'raw' (textbook).
    mlp_ratio: hidden width of the residual MLP in units of slot_dim.
    dtype: compute dtype of the Linears; softmaxes run in float32.
  """
  slot_dim: int
  eps: float = 1e-8
  gru_hidden: str = 'normed'
  mlp_ratio: int = 4
  dtype: Any = jnp.float32

  def setup(self):
    if self.gru_hidden not in ('normed', 'raw'):
      raise ValueError(f"model.slot_attention.gru_hidden={self.gru_hidden!r}; use 'normed' "
                       "(reference, quirk 2) or 'raw' (textbook)")
    d = self.slot_dim
    self.norm_features = layers.layer_norm()
    self.norm_slots = layers.layer_norm()
    self.to_q = layers.torch_dense(d, d, use_bias=False, dtype=self.dtype)
    self.to_k = layers.torch_dense(d, d, use_bias=False, dtype=self.dtype)
    self.to_v = layers.torch_dense(d, d, use_bias=False, dtype=self.dtype)
    self.gru = GRUCell(d, dtype=self.dtype)
    self.mlp = layers.MLP(hidden=(self.mlp_ratio * d,), out_features=d, layer_norm_first=True,
                          residual=True, dtype=self.dtype)

  def __call__(self, features: jax.Array, slots: jax.Array, active: jax.Array,
               num_iterations: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Runs `num_iterations` slot-attention iterations on one frame.

    Args:
      features: [B, N, D_s] slot-attention inputs F of the frame.
      slots: [B, K, D_s] initial slots.
      active: [K] bool; inactive slots take no part in the competition.
      num_iterations: a Python int (3 on frame 0, 2 afterwards).

    Returns:
      slots [B, K, D_s]; masks [B, K, N], the last iteration's softmax over slots
      before +eps (exactly 0 on inactive rows); logits [B, K, N], the last
      iteration's scaled logits q.k/sqrt(D_s) (SSync's z^A; unmasked, so inactive
      rows hold finite but meaningless values).
    """
    if features.shape[-1] != self.slot_dim or slots.shape[-1] != self.slot_dim:
      raise ValueError(f'slot attention expects width slot_dim={self.slot_dim}, got features '
                       f'{features.shape} and slots {slots.shape}')
    f = self.norm_features(features)
    keys = self.to_k(f)  # computed once per frame, reused by every iteration
    values = self.to_v(f)
    scale = self.slot_dim ** -0.5
    masks = logits = None
    for _ in range(num_iterations):
      normed = self.norm_slots(slots)
      queries = self.to_q(normed)
      logits = (jnp.einsum('bkd,bnd->bkn', queries, keys) * scale).astype(jnp.float32)
      masks = jax.nn.softmax(layers.mask_slots(logits, active, axis=1), axis=1)
      weights = masks + self.eps
      weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
      updates = jnp.einsum('bkn,bnd->bkd', weights.astype(values.dtype), values)
      hidden = normed if self.gru_hidden == 'normed' else slots
      slots = self.gru(updates, hidden)
      slots = self.mlp(slots)
    return slots, masks, logits
