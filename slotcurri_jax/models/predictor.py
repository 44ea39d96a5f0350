"""The predictor: a pre-norm transformer over the slots of one frame (docs/method.md §4.5)."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from slotcurri_jax.models import layers


def _xavier_per_projection(dim: int) -> nn.initializers.Initializer:
  """Xavier-uniform on each [D, D] block of the fused [D, 3D] qkv kernel (docs/method.md §5).

  Xavier on the fused kernel would see fan_out = 3D and a smaller bound.
  """
  bound = (6.0 / (dim + dim)) ** 0.5

  def init(key, shape, dtype=jnp.float32):
    if shape != (dim, 3 * dim):
      raise ValueError(f'qkv kernel shape {shape} != {(dim, 3 * dim)}')
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class PredictorBlock(nn.Module):
  """x += MHSA(LN1 x); x += FFN(LN2 x). No dropout, no LayerScale, keys masked by activity.

  Params: norm1, qkv (rows q | k | v, head h at dims h*d_h..(h+1)*d_h of each), out_proj,
  norm2, linear1, linear2.
  """
  num_heads: int
  mlp_ratio: int = 4
  logit_scale: str = 'reference'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, active: jax.Array) -> jax.Array:
    """x: [B, K, D]; active: [K] bool -> [B, K, D]."""
    b, k, d = x.shape
    if d % self.num_heads:
      raise ValueError(f'slot_dim={d} is not divisible by model.predictor.num_heads='
                       f'{self.num_heads}')
    head_dim = d // self.num_heads
    qkv = nn.Dense(3 * d, kernel_init=_xavier_per_projection(d), bias_init=nn.initializers.zeros,
                   dtype=self.dtype, name='qkv')(layers.layer_norm('norm1')(x))
    q, kk, v = (t.reshape(b, k, self.num_heads, head_dim) for t in jnp.split(qkv, 3, axis=-1))
    scale = head_dim ** -0.5
    if self.logit_scale == 'reference':
      q = q / scale  # quirk 1: the reference divides q by d_h^-1/2, i.e. logits * sqrt(d_h)
    elif self.logit_scale == 'standard':
      q = q * scale
    else:
      raise ValueError(f"model.predictor.logit_scale={self.logit_scale!r}; use 'reference' (quirk 1) "
                       "or 'standard'")
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, kk).astype(jnp.float32)
    attn = jax.nn.softmax(layers.mask_slots(logits, active, axis=3), axis=-1)
    out = jnp.einsum('bhqk,bkhd->bqhd', attn.astype(v.dtype), v).reshape(b, k, d)
    out = nn.Dense(d, kernel_init=nn.initializers.xavier_uniform(),
                   bias_init=nn.initializers.zeros, dtype=self.dtype, name='out_proj')(out)
    x = x + out.astype(x.dtype)
    h = layers.torch_dense(self.mlp_ratio * d, d, dtype=self.dtype,
                           name='linear1')(layers.layer_norm('norm2')(x))
    h = layers.torch_dense(d, self.mlp_ratio * d, dtype=self.dtype, name='linear2')(nn.relu(h))
    return x + h.astype(x.dtype)


class Predictor(nn.Module):
  """The transition Pred(S_t): `num_blocks` PredictorBlocks ('blocks_0', ...), no final norm."""
  num_blocks: int = 1
  num_heads: int = 4
  mlp_ratio: int = 4
  logit_scale: str = 'reference'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, slots: jax.Array, active: jax.Array) -> jax.Array:
    """slots: [B, K, D_s]; active: [K] bool -> predicted slots [B, K, D_s]."""
    for i in range(self.num_blocks):
      slots = PredictorBlock(self.num_heads, self.mlp_ratio, self.logit_scale, self.dtype,
                             name=f'blocks_{i}')(slots, active)
    return slots
