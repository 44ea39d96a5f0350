"""Layers shared by the slot stack: PyTorch-default initialisers, LayerNorm, the MLP.

The reference is PyTorch, and its initialisation is part of the method (docs/method.md §5):
Flax's defaults (LeCun-normal kernels, zero biases, LayerNorm eps 1e-6) differ, so
every trainable layer of the model is built from the helpers here.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

# PyTorch nn.LayerNorm's default; every LayerNorm of the trainable model uses it (docs/method.md §4.1).
LN_EPS = 1e-5

# nn.Linear's default weight init, kaiming_uniform(a=sqrt(5)), is U(+-1/sqrt(fan_in)):
# variance_scaling(1/3, fan_in, uniform) has bound sqrt(3 * (1/3) / fan_in).
torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


def torch_bias_init(fan_in: int) -> nn.initializers.Initializer:
  """nn.Linear's default bias init U(+-1/sqrt(fan_in)) (the bias alone cannot see fan_in)."""
  bound = 1.0 / (fan_in ** 0.5)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def scaled_normal_init(dim: int) -> nn.initializers.Initializer:
  """N(0, 1) * dim^-1/2: slot placeholders and the decoder position embedding (docs/method.md §5)."""

  def init(key, shape, dtype=jnp.float32):
    return jax.random.normal(key, shape, dtype) * dim ** -0.5

  return init


def layer_norm(name: str | None = None) -> nn.LayerNorm:
  """A LayerNorm with PyTorch's eps; statistics in float32 whatever the compute dtype."""
  return nn.LayerNorm(epsilon=LN_EPS, dtype=jnp.float32, use_fast_variance=False, name=name)


def torch_dense(features: int, fan_in: int, *, use_bias: bool = True, zero_bias: bool = False,
                dtype: Any = jnp.float32, name: str | None = None) -> nn.Dense:
  """nn.Dense initialised like torch.nn.Linear (bias zero when `zero_bias`)."""
  bias_init = nn.initializers.zeros if zero_bias else torch_bias_init(fan_in)
  return nn.Dense(features, use_bias=use_bias, kernel_init=torch_kernel_init,
                  bias_init=bias_init, dtype=dtype, name=name)


class MLP(nn.Module):
  """The reference's shared MLP: [LayerNorm] -> (Linear -> ReLU)* -> Linear [+ residual].

  Used for the feature MLP, the slot-attention residual MLP and the decoder. Weights
  follow PyTorch's Linear default, **all biases start at 0** (the reference's MLP
  class overrides them, docs/method.md §5). Submodules: 'norm' (if `layer_norm_first`), then
  'dense_0' ... 'dense_{len(hidden)}'.

  Attributes:
    hidden: widths of the hidden layers (ReLU after each).
    out_features: output width.
    layer_norm_first: apply a LayerNorm to the input first.
    residual: return x + MLP(x) (needs out_features == input width).
    dtype: compute dtype of the Linears.
  """
  hidden: Sequence[int]
  out_features: int
  layer_norm_first: bool = False
  residual: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [..., D_in] -> [..., out_features]."""
    inputs = x
    if self.layer_norm_first:
      x = layer_norm('norm')(x)
    widths = list(self.hidden) + [self.out_features]
    fan_in = x.shape[-1]
    for i, width in enumerate(widths):
      x = torch_dense(width, fan_in, zero_bias=True, dtype=self.dtype, name=f'dense_{i}')(x)
      if i < len(widths) - 1:
        x = nn.relu(x)
      fan_in = width
    if self.residual:
      x = inputs + x.astype(inputs.dtype)
    return x


def dtype_from_name(name: str) -> Any:
  """'float32' | 'bfloat16' -> the jnp dtype (errors name the accepted values)."""
  table = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
  if name not in table:
    raise ValueError(f'dtype={name!r} is not supported; use one of {sorted(table)}')
  return table[name]


def mask_slots(logits: jax.Array, active: jax.Array, axis: int) -> jax.Array:
  """Replace the logits of inactive slots by a large finite negative (never -inf).

  logits: any shape with the slot axis at `axis`; active: [max_slots] bool. After a
  softmax over `axis` the inactive entries are exactly 0 and get exactly zero
  gradient, while every computation stays finite (docs/method.md §17.3-17.4).
  """
  shape = [1] * logits.ndim
  shape[axis] = active.shape[0]
  return jnp.where(active.reshape(shape), logits, jnp.asarray(-1e9, logits.dtype))
