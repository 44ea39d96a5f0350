"""The functional train state and the optimizer (docs/method.md §10).

Everything a resumed run needs lives in `TrainState`, so a checkpoint of it is a
complete snapshot: the params (the slot placeholders padded to max_slots inside them),
the optimizer state, the curriculum's slot-wise error record (checkpointed, unlike the
original) and the RNG. Which slots are active and which stage the run is in are
functions of `step` (`curriculum.Curriculum`); the data position is `step` itself (the
training stream is a deterministic function of (seed, step), data/pipeline.py).
"""
from __future__ import annotations

import dataclasses
import functools
import types
from typing import Any

import flax
import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  """step: [] int32, number of completed optimizer updates (the update index s).
  params: the model's params, frozen encoder included (masked out of the optimizer).
  opt_state: the state of `tx`.
  slot_error: [error_window, max_slots] float32, the curriculum's slot-wise error record
    of the last updates (ring buffer indexed by step % error_window).
  rng: a raw PRNG key (spawn directions are drawn from fold_in(rng, step)).
  tx: the run's `Optimizer` (static: not a pytree leaf, not checkpointed; a value, so
    states created apart, e.g. a restore target on another mesh, have equal trees).
  """
  step: jax.Array
  params: Any
  opt_state: Any
  slot_error: jax.Array
  rng: jax.Array
  tx: 'Optimizer' = flax.struct.field(pytree_node=False, default=None)


def learning_rate_schedule(train_config) -> optax.Schedule:
  """Linear warm-up from 0 over warmup_steps, then exponential decay to
  decay_end_factor x peak at train.steps (docs/method.md §10.1; not cosine).

  Update s uses lr(s): the original steps its LambdaLR after the optimizer, so the
  first update has lr(0) = 0 (it still fills Adam's moments and advances its count).
  """
  peak = train_config.learning_rate
  warmup = train_config.warmup_steps
  decay_steps = max(1, train_config.steps - warmup)
  return optax.join_schedules(
      [optax.linear_schedule(0.0, peak, warmup),
       optax.exponential_decay(peak, transition_steps=decay_steps,
                               decay_rate=train_config.decay_end_factor)],
      boundaries=[warmup])


def clip_by_global_norm(max_norm: float, eps: float = 1e-6
                        ) -> optax.GradientTransformationExtraArgs:
  """The original's clip: every gradient times min(1, max_norm / (||g|| + eps)), with
  ||g|| the L2 norm over all (trainable) gradients (docs/method.md §10.2).

  optax.clip_by_global_norm computes g * max_norm / max(||g||, max_norm), which differs
  by the eps: a harmless variant, but not the original's arithmetic. The train step,
  which logs ||g||, passes it in (`tx.update(..., grad_norm=...)`) so that it is
  computed once; without it the norm is computed here.
  """
  def update(updates, state, params=None, *, grad_norm=None, **extra_args):
    del params, extra_args
    norm = optax.tree.norm(updates) if grad_norm is None else grad_norm
    coef = clip_coefficient(norm, max_norm, eps)
    return jax.tree.map(lambda g: g * coef.astype(g.dtype), updates), state

  return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)


def clip_coefficient(grad_norm: jax.Array, max_norm: float, eps: float = 1e-6) -> jax.Array:
  """min(1, max_norm / (grad_norm + eps)), [] float32."""
  return jnp.minimum(1.0, max_norm / (grad_norm + eps))


def scale_by_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
                  ) -> optax.GradientTransformation:
  """Adam's direction with PyTorch's arithmetic (docs/method.md §10.2):

    m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;  t = count + 1
    direction = (m / c1) / (sqrt(v) / sqrt(c2) + eps),  c_i = 1 - b_i^t.

  optax.scale_by_adam computes the same rule, but its bias corrections 1 - b^t in float32
  lose about 1e-5 of their value to cancellation for small t (1 - 0.999^2 has
  its leading digits cancelled); the error biases every update the same way, and over a
  run it sums to a trajectory measurably off the original's (whose corrections are
  Python floats). Here c_i = -expm1(t log1p(-(1 - b_i))), accurate to float32 rounding.
  The state is optax's ScaleByAdamState (count, mu, nu).
  """
  one_minus_b1, one_minus_b2 = 1.0 - b1, 1.0 - b2  # Python floats, like the original

  def init(params):
    zeros = lambda: jax.tree.map(jnp.zeros_like, params)
    return optax.ScaleByAdamState(count=jnp.zeros((), jnp.int32), mu=zeros(), nu=zeros())

  def update(updates, state, params=None):
    del params
    mu = jax.tree.map(lambda m, g: b1 * m + one_minus_b1 * g, state.mu, updates)
    nu = jax.tree.map(lambda v, g: b2 * v + one_minus_b2 * (g * g), state.nu, updates)
    count = optax.safe_int32_increment(state.count)
    t = count.astype(jnp.float32)
    c1 = -jnp.expm1(t * jnp.log1p(jnp.float32(-one_minus_b1)))
    c2_sqrt = jnp.sqrt(-jnp.expm1(t * jnp.log1p(jnp.float32(-one_minus_b2))))
    direction = jax.tree.map(lambda m, v: (m / (jnp.sqrt(v) / c2_sqrt + eps)) / c1, mu, nu)
    return direction, optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

  return optax.GradientTransformation(init, update)


def param_labels(params: Any, frozen_encoder: bool) -> Any:
  """'frozen' for a frozen encoder's params (params['encoder']), 'trainable' otherwise."""
  def label(path, _):
    top = getattr(path[0], 'key', None)
    return 'frozen' if (frozen_encoder and top == 'encoder') else 'trainable'

  return jax.tree_util.tree_map_with_path(label, params)


@dataclasses.dataclass(frozen=True)
class Optimizer:
  """The run's optimizer, as a value built once from the config: the original's clip by
  global norm over the trainable params, then Adam (PyTorch's arithmetic, no weight
  decay) with the warm-up + exponential-decay learning rate; a frozen encoder
  (EncoderSpec.frozen) is masked out. Equal settings give equal Optimizers.
  `init` and `update` are optax's."""
  train: tuple  # (key, value) pairs of config.train that the schedule and clip read
  frozen_encoder: bool

  @classmethod
  def from_config(cls, config, frozen_encoder: bool) -> 'Optimizer':
    keys = ('learning_rate', 'warmup_steps', 'steps', 'decay_end_factor', 'clip_norm')
    return cls(tuple((k, config.train[k]) for k in keys), bool(frozen_encoder))

  @functools.cached_property
  def tx(self) -> optax.GradientTransformation:
    train = types.SimpleNamespace(**dict(self.train))
    trainable = optax.chain(
        clip_by_global_norm(train.clip_norm),
        scale_by_adam(b1=0.9, b2=0.999, eps=1e-8),
        optax.scale_by_learning_rate(learning_rate_schedule(train)))
    return optax.multi_transform({'trainable': trainable, 'frozen': optax.set_to_zero()},
                                 lambda params: param_labels(params, self.frozen_encoder))

  def init(self, params):
    return self.tx.init(params)

  def update(self, grads, state, params=None, **extra_args):
    """extra_args: `grad_norm` ([] float32, the trainable gradients' norm) spares the
    clip computing it again."""
    return self.tx.update(grads, state, params, **extra_args)


def make_optimizer(config, frozen_encoder: bool) -> Optimizer:
  return Optimizer.from_config(config, frozen_encoder)
