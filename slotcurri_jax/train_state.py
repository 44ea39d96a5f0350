"""The functional train state and its creation: params, optimizer, curriculum bookkeeping.

Everything a resumed run needs lives in `TrainState`, so a checkpoint of it is a
complete snapshot: the slot placeholders (padded to max_slots, inside params),
the active-slot mask, the curriculum stage, the slot-wise error accumulator
(SPEC §7.3, checkpointed unlike the reference) and the RNG. The data position
is `step` itself: the training stream is a deterministic function of
(seed, step) (data/pipeline.py).
"""
from __future__ import annotations

from typing import Any

import flax
import flax.struct
import jax
import jax.numpy as jnp
import optax

from slotcurri_jax import curriculum

PLACEHOLDERS = ('initializer', 'placeholders')  # path of the slot placeholders in params


@flax.struct.dataclass
class TrainState:
  """step: [] int32, number of completed optimizer updates (SPEC's s).
  params: the model's params, frozen encoder included (masked out of the optimizer).
  opt_state: optax state.
  active_mask: [max_slots] bool, the slots the current curriculum stage trains.
  stage: [] int32, curriculum stage index.
  slot_error: [error_window, max_slots] float32, slot-wise error of the last steps
    (ring buffer indexed by step % error_window), consumed at a stage change.
  rng: a raw PRNG key.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  active_mask: jax.Array
  stage: jax.Array
  slot_error: jax.Array
  rng: jax.Array


def learning_rate_schedule(train_config) -> optax.Schedule:
  """Linear warm-up from 0 over warmup_steps, then exponential decay to
  decay_end_factor x peak at train.steps (SPEC §10.1; not cosine)."""
  peak = train_config.learning_rate
  warmup = train_config.warmup_steps
  decay_steps = max(1, train_config.steps - warmup)
  return optax.join_schedules(
      [optax.linear_schedule(0.0, peak, warmup),
       optax.exponential_decay(peak, transition_steps=decay_steps,
                               decay_rate=train_config.decay_end_factor)],
      boundaries=[warmup])


def encoder_is_frozen(config) -> bool:
  return config.model.encoder.kind == 'dinov2'


def param_labels(params: Any, config) -> Any:
  """'frozen' for the pretrained encoder's params, 'trainable' for the rest."""
  frozen = encoder_is_frozen(config)

  def label(path, _):
    top = getattr(path[0], 'key', None)
    return 'frozen' if (frozen and top == 'encoder') else 'trainable'

  return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(config, params: Any) -> optax.GradientTransformation:
  """Adam (eps outside the sqrt, no weight decay) after a global-norm clip over
  the trainable params; the frozen encoder is masked out declaratively."""
  trainable = optax.chain(
      optax.clip_by_global_norm(config.train.clip_norm),
      optax.adam(learning_rate_schedule(config.train), b1=0.9, b2=0.999, eps=1e-8))
  return optax.multi_transform(
      {'trainable': trainable, 'frozen': optax.set_to_zero()},
      param_labels(params, config))


def create_train_state(config, params: Any, rng: jax.Array) -> TrainState:
  """The state at step 0 for freshly initialised (or imported) params."""
  max_slots = config.model.max_slots
  schedule = curriculum.build_schedule(config.curriculum, max_slots, config.train.steps)
  num_active = schedule[0][1]
  tx = make_optimizer(config, params)
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      opt_state=tx.init(params),
      active_mask=jnp.arange(max_slots) < num_active,
      stage=jnp.zeros((), jnp.int32),
      slot_error=jnp.zeros((config.curriculum.error_window, max_slots), jnp.float32),
      rng=rng)
