"""Prediction, written once: rollout -> decoder masks -> slot ids at the evaluation resolution.

`Predictor` is built once per run (evaluation during training, `--mode=eval`, the
benchmarks) and compiles once per input shape: periodic evaluation during training
reuses the same compiled rollout instead of tracing a fresh closure every time.
Inference on a user's video (infer.py) calls the same `predict` inside its own jit,
after its on-device frame preprocessing.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from slotcurri_jax import metrics as metrics_lib
from slotcurri_jax import parallel


class Predictor:
  """predictor(params, inputs, active_mask, num_frames, initial_state=None) -> dict.

  model: the VideoSlotModel; rollout: 'forward' | 'cyclic'; resolution: side R of the
  predicted id maps; mesh: when given, the outputs are replicated over it (every host
  reads them); prepare: optional inputs -> model inputs inside the jit (the on-device
  preprocessing of raw frames, data/device_preprocess.py); active_at: optional
  step -> [max_slots] bool, the slots that may win a pixel at a training step (the
  curriculum's; default: all of them).
  """

  def __init__(self, model, *, rollout: str, resolution: int, mesh=None,
               prepare: Callable[[Any], jax.Array] | None = None,
               active_at: Callable[[Any], jax.Array] | None = None):
    self.model, self.rollout, self.resolution = model, rollout, resolution
    self.prepare = prepare
    self._active_at = active_at
    self.grid = model.grid
    kwargs = {} if mesh is None else {'out_shardings': parallel.replicated(mesh)}
    self._jitted = jax.jit(self.predict, **kwargs)

  def predict(self, params: Any, inputs: jax.Array, active_mask: jax.Array,
              num_frames: jax.Array, initial_state: jax.Array | None = None) -> dict:
    """The traced prediction (call it inside a jit; `__call__` is the compiled one).

    Args:
      params: the model's params.
      inputs: the encoder's input, video [B, T, H, W, 3] (or tokens [B, T, N, D]), or
        what `prepare` turns into it (a raw batch: uint8 frames and their geometry).
      active_mask: [K] bool slots that may win a pixel (K = max_slots).
      num_frames: [B] int32 real frames per video (the rest is padding).
      initial_state: optional [B, K, D_s] predicted slots entering frame 0.

    Returns:
      ids [B, T, R, R] int32 (bilinearly upsampled masks, argmax over active slots),
      masks [B, T, K, G_h, G_w] decoder alpha masks, slots [B, T, K, D_s], error
      [B, T, G_h, G_w] per-patch reconstruction error, carry [B, K, D_s] = Pred(S) of the
      last real frame of each video (the next chunk's initial_state).
    """
    if self.prepare is not None:
      inputs = self.prepare(inputs)
    out = self.model.apply({'params': params}, inputs, active_mask, rollout=self.rollout,
                           num_frames=num_frames, initial_state=initial_state)
    b, t, k, _ = out['dec_masks'].shape
    g = self.grid
    masks = out['dec_masks'].reshape(b, t, k, *g)
    ids = metrics_lib.masks_to_ids(masks, active_mask, (self.resolution, self.resolution))
    error = jnp.mean(jnp.square(out['recon'] - out['targets']), axis=-1)
    last = jnp.clip(jnp.asarray(num_frames, jnp.int32) - 1, 0, t - 1)
    carry = jnp.take_along_axis(out['slots_predicted'], last[:, None, None, None], axis=1)[:, 0]
    return {'ids': ids, 'masks': masks,
            'slots': out['slots'], 'error': error.reshape(b, t, *g), 'carry': carry}

  def active_mask(self, step) -> jax.Array:
    """[max_slots] bool: the slots evaluated at training step `step`."""
    if self._active_at is None:
      return jnp.ones((self.model.max_slots,), bool)
    return self._active_at(step)

  def __call__(self, params, inputs, active_mask, num_frames, initial_state=None) -> dict:
    return self._jitted(params, inputs, active_mask, num_frames, initial_state)

  def lower(self, params, inputs, active_mask, num_frames) -> jax.stages.Lowered:
    """The compiled call's lowering for these (possibly abstract) arguments (tools/aot.py)."""
    return self._jitted.lower(params, inputs, active_mask, num_frames)

  def compilations(self) -> int:
    """How many input shapes this predictor has compiled for."""
    return self._jitted._cache_size()  # pylint: disable=protected-access
