"""The video slot model: encoder -> feature MLP -> (corrector + predictor) over time -> decoder.

SAVi's decomposition with the SlotContrast / SlotCurri numerics (docs/method.md §2, §4, §8, §17):

  X_t = encoder(x_t)                      frame-wise; frozen DINOv2 or the demo CNN
  F_t = feature_mlp(X_t)                  LN -> Linear -> ReLU -> Linear
  S_0 = corrector^(3)(placeholders, F_0)  slot attention; frame 0 peeled off the scan
  S_t = corrector^(2)(predictor(S_{t-1}), F_t)   nn.scan over t = 1..T-1
  X^_t, m_t, alpha_t = decoder(S_t)       frame-wise

Slots are always padded to max_slots; `active_mask` [max_slots] says which take part.
Inactive rows are masked (large finite negative logits) in the slot-attention softmax,
the predictor's attention keys and the decoder's alpha softmax (docs/method.md §17.3), so the
active rows equal a model with only those rows and inactive placeholders get exactly
zero gradient. Inactive rows of slots / logits hold finite, meaningless values.

Param tree: encoder, feature_mlp, initializer {placeholders [max_slots, D_s]},
corrector, predictor, decoder.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from slotcurri_jax.models import decoder as decoder_lib
from slotcurri_jax.models import encoders
from slotcurri_jax.models import layers
from slotcurri_jax.models import predictor as predictor_lib
from slotcurri_jax.models import slot_attention

ROLLOUTS = ('forward', 'cyclic')


class SlotInitializer(nn.Module):
  """Learned fixed initial slots P [max_slots, D_s], N(0,1)*D_s^-1/2, no sampling noise."""
  max_slots: int
  slot_dim: int

  @nn.compact
  def __call__(self, batch_size: int) -> jax.Array:
    """-> [batch_size, max_slots, D_s]."""
    p = self.param('placeholders', layers.scaled_normal_init(self.slot_dim),
                   (self.max_slots, self.slot_dim))
    return jnp.broadcast_to(p, (batch_size,) + p.shape)


def _over_time(fn, **kwargs):
  """Lift fn(module, frame_inputs...) -> outputs to a scan over axis 1 ([B, T, ...]).

  Frame-wise work (encoder, decoder) runs one frame at a time so that long evaluation
  videos do not hold every frame's activations at once.
  """
  def body(module, carry, *xs):
    return carry, fn(module, *xs)
  return nn.scan(body, variable_broadcast='params', split_rngs={'params': False},
                 in_axes=1, out_axes=1, **kwargs)


class VideoSlotModel(nn.Module):
  """SlotContrast / SlotCurri video slot model (see the module docstring).

  Attributes:
    encoder: the frame encoder, or None for a slot stack fed with backbone tokens
      (golden fixtures, precomputed features; only `process` is then usable).
    input_dim: D_in, width of the encoder features.
    target_dim: D_f, width of the reconstruction target.
    grid: the patch grid (G_h, G_w) of a frame; N = G_h * G_w patches, row-major.
    target: 'features' (the target is the encoder output, DINOv2) or 'patches' (the
      frame's patch pixels, the CNN); patch_size is the patch side for 'patches'.
    freeze_encoder: stop gradients at the encoder output (the frozen DINOv2).
    slot_dim, max_slots: D_s and the padded slot count.
    feature_mlp_hidden: hidden width of the feature MLP.
    iters_first, iters: slot-attention iterations on frame 0 and later frames.
    eps, gru_hidden: slot attention (docs/method.md §4.4, quirk 2).
    predictor_blocks, predictor_heads, predictor_mlp_ratio, logit_scale: docs/method.md §4.5 (quirk 1).
    decoder_hidden: hidden widths of the decoder MLP.
    decoder_pos_init: 'normal' (reference) or 'sincos' init of the decoder position embedding.
    decoder_remat: recompute the decoder MLP's activations in the backward pass.
    dtype: compute dtype of the trainable Linears.
  """
  encoder: nn.Module | None
  input_dim: int
  target_dim: int
  grid: tuple[int, int]
  target: str = 'features'
  patch_size: int = 14
  freeze_encoder: bool = True
  slot_dim: int = 64
  max_slots: int = 11
  feature_mlp_hidden: int = 768
  iters_first: int = 3
  iters: int = 2
  eps: float = 1e-8
  gru_hidden: str = 'normed'
  predictor_blocks: int = 1
  predictor_heads: int = 4
  predictor_mlp_ratio: int = 4
  logit_scale: str = 'reference'
  decoder_hidden: Sequence[int] = (1024, 1024, 1024)
  decoder_pos_init: str = 'normal'
  decoder_remat: bool = False
  dtype: Any = jnp.float32

  @property
  def num_patches(self) -> int:
    """N = G_h * G_w patches per frame."""
    return self.grid[0] * self.grid[1]

  def setup(self):
    self.feature_mlp = layers.MLP(hidden=(self.feature_mlp_hidden,), out_features=self.slot_dim,
                                  layer_norm_first=True, dtype=self.dtype)
    self.initializer = SlotInitializer(self.max_slots, self.slot_dim)
    self.corrector = slot_attention.SlotAttention(self.slot_dim, eps=self.eps,
                                                  gru_hidden=self.gru_hidden, dtype=self.dtype)
    self.predictor = predictor_lib.Predictor(self.predictor_blocks, self.predictor_heads,
                                             self.predictor_mlp_ratio, self.logit_scale,
                                             dtype=self.dtype)
    self.decoder = decoder_lib.MLPDecoder(tuple(self.grid), self.target_dim,
                                          tuple(self.decoder_hidden), self.decoder_pos_init,
                                          self.decoder_remat,
                                          dtype=self.dtype)

  def __call__(self, inputs: jax.Array, active_mask: jax.Array, rollout: str = 'forward',
               num_frames: jax.Array | None = None,
               initial_state: jax.Array | None = None) -> dict[str, jax.Array]:
    """inputs: the batch entry of the encoder's `input_key`: video [B, T, H, W, 3]
    float32, ImageNet-normalised, or (no encoder) tokens [B, T, N, D_in]. See `process`
    for the rest."""
    features_in, targets = self.encode(inputs)
    return self.process(features_in, targets, active_mask, rollout, num_frames, initial_state)

  def encode(self, video: jax.Array) -> tuple[jax.Array, jax.Array]:
    """video: [B, T, H, W, 3] -> (features_in [B, T, N, D_in], targets [B, T, N, D_f]).

    Without an encoder, `video` is already the tokens [B, T, N, D_in]: they are the
    features and the target. The targets are stop-gradient; so are the features when
    the encoder is frozen, so no backward pass runs through DINOv2.
    """
    if self.encoder is None:
      if video.ndim != 4 or video.shape[2:] != (self.num_patches, self.input_dim):
        raise ValueError(f'token input must be [B, T, N={self.num_patches}, '
                         f'D={self.input_dim}], got {video.shape}')
      tokens = jax.lax.stop_gradient(video.astype(jnp.float32))
      return tokens, tokens
    if video.ndim != 5 or video.shape[-1] != 3:
      raise ValueError(f'video must be [B, T, H, W, 3], got {video.shape}')
    encoders.check_grid(video.shape[2:], self.patch_size)
    encode_frames = _over_time(lambda module, frames: module.encoder(frames))
    _, features_in = encode_frames(self, None, video)
    if self.freeze_encoder:
      features_in = jax.lax.stop_gradient(features_in)
    if self.target == 'features':
      targets = features_in
    elif self.target == 'patches':
      b, t = video.shape[:2]
      targets = encoders.patchify(video.reshape((b * t,) + video.shape[2:]), self.patch_size)
      targets = targets.reshape((b, t) + targets.shape[1:])
    else:
      raise ValueError(f"target={self.target!r}; use 'features' or 'patches'")
    return features_in, jax.lax.stop_gradient(targets)

  def process(self, features_in: jax.Array, targets: jax.Array, active_mask: jax.Array,
              rollout: str = 'forward', num_frames: jax.Array | None = None,
              initial_state: jax.Array | None = None) -> dict[str, jax.Array]:
    """The slot stack on encoder outputs.

    Args:
      features_in: [B, T, N, D_in] encoder features.
      targets: [B, T, N, D_f] reconstruction targets (stop-gradient is applied here).
      active_mask: [max_slots] bool.
      rollout: 'forward' or 'cyclic' (SlotCurri evaluation, docs/method.md §8: frames
        0..T-2 from a backward pass with 2 iterations each, frame T-1 from the forward pass).
      num_frames: optional int [B], real lengths of time-padded videos. The forward
        rollout is causal; the cyclic backward pass starts from Pred(S^f_{len-1}) per
        example and frames >= len-1 keep their forward result.
      initial_state: optional [B, max_slots, D_s] predicted slots entering frame 0
        (carrying slots across chunks of a long video); frame 0 then runs `iters`
        iterations from it instead of `iters_first` from the placeholders.

    Returns a dict: features [B,T,N,D_s], targets [B,T,N,D_f], slots and
    slots_predicted [B,T,K,D_s], sa_masks / sa_logits / dec_masks / dec_alpha
    [B,T,K,N], recon [B,T,N,D_f], with K = max_slots. (A curriculum stage that computes
    only its K active slots uses a clone of this model with max_slots = K and the first
    K placeholder rows; train.make_train_step does that.)
    """
    self._check_inputs(features_in, targets, active_mask, rollout, initial_state)
    b, t = features_in.shape[:2]
    features = self.feature_mlp(features_in).astype(jnp.float32)

    # Frame 0, peeled off the scan: it starts from the placeholders with more iterations.
    if initial_state is None:
      start, iters0 = self.initializer(b), self.iters_first
    else:
      start, iters0 = initial_state.astype(jnp.float32), self.iters
    slots0, masks0, logits0 = self.corrector(features[:, 0], start, active_mask, iters0)
    frame0 = (slots0, self.predictor(slots0, active_mask), masks0, logits0)
    forward = tuple(a[:, None] for a in frame0)
    if t > 1:
      _, rest = self._processor(features[:, 1:], frame0[1], active_mask)
      forward = tuple(jnp.concatenate([a, r], axis=1) for a, r in zip(forward, rest))

    per_frame = forward
    if rollout == 'cyclic' and t > 1:
      per_frame = self._backward(features, forward, active_mask, num_frames)
    slots, predicted, sa_masks, sa_logits = per_frame

    decode = _over_time(lambda module, s: module.decoder(s, active_mask))
    _, dec = decode(self, None, slots)
    return {
        'features': features,
        'targets': jax.lax.stop_gradient(targets),
        'slots': slots,
        'slots_predicted': predicted,
        'sa_masks': sa_masks,
        'sa_logits': sa_logits,
        'dec_masks': dec['masks'],
        'dec_alpha': dec['alpha'],
        'recon': dec['recon'],
    }

  def _processor(self, features: jax.Array, carry: jax.Array, active_mask: jax.Array, *,
                 reverse: bool = False, restart: tuple[jax.Array, jax.Array] | None = None):
    """The processor (corrector, then predictor) over the frames of `features`.

    Args:
      features: [B, T', N, D_s] the frames to process, in time order.
      carry: [B, K, D_s] predicted slots entering the first processed frame (the last
        one when `reverse`).
      active_mask: [K] bool.
      reverse: scan from the last frame to the first.
      restart: optional (where [B, T'] bool, slots [B, T', K, D_s]): at frame t, the
        examples with where[:, t] start from slots[:, t] instead of the carry.

    Returns (last carry [B, K, D_s], (slots, predicted [B, T', K, D_s], masks, logits
    [B, T', K, N])), each frame with `iters` iterations.
    """
    def step(module, carry, frame):
      if restart is not None:
        frame, begin, start = frame
        carry = jnp.where(begin[:, None, None], start, carry)
      slots, masks, logits = module.corrector(frame, carry, active_mask, self.iters)
      predicted = module.predictor(slots, active_mask)
      return predicted, (slots, predicted, masks, logits)

    scan = nn.scan(step, variable_broadcast='params', split_rngs={'params': False},
                   in_axes=1, out_axes=1, reverse=reverse)
    return scan(self, carry, features if restart is None else (features,) + tuple(restart))

  def _backward(self, features, forward, active_mask, num_frames):
    """The backward half of the cyclic rollout (docs/method.md §8, §17.6), frames T-2 .. 0.

    The carry h is Pred(S^b_{t+1}); at t = len-2 it is replaced by Pred(S^f_{len-1}), so
    each example starts from its own last real frame. Quirk 8: 2 iterations on every
    frame, frame 0 included.
    """
    b, t = features.shape[:2]
    lengths = (jnp.full((b,), t, jnp.int32) if num_frames is None
               else jnp.asarray(num_frames, jnp.int32).reshape(b))
    fwd_predicted = forward[1]
    begin = jnp.arange(t - 1)[None, :] >= (lengths - 2)[:, None]  # [B, T-1]
    _, backward = self._processor(features[:, :-1], fwd_predicted[:, -1], active_mask,
                                  reverse=True, restart=(begin, fwd_predicted[:, 1:]))
    keep_backward = (jnp.arange(t)[None, :] < (lengths - 1)[:, None])  # [B, T]
    mixed = []
    for bwd, fwd in zip(backward, forward):
      bwd = jnp.concatenate([bwd, fwd[:, -1:]], axis=1)
      mask = keep_backward.reshape(keep_backward.shape + (1,) * (fwd.ndim - 2))
      mixed.append(jnp.where(mask, bwd, fwd))
    return tuple(mixed)

  def _check_inputs(self, features_in, targets, active_mask, rollout, initial_state):
    if rollout not in ROLLOUTS:
      raise ValueError(f'rollout={rollout!r}; use one of {ROLLOUTS}')
    if features_in.ndim != 4 or features_in.shape[2:] != (self.num_patches, self.input_dim):
      raise ValueError(f'features_in must be [B, T, N={self.num_patches}, D_in={self.input_dim}], '
                       f'got {features_in.shape}')
    if targets.shape[:3] != features_in.shape[:3] or targets.shape[-1] != self.target_dim:
      raise ValueError(f'targets must be [B, T, N, D_f={self.target_dim}] matching features '
                       f'{features_in.shape[:3]}, got {targets.shape}')
    if active_mask.shape != (self.max_slots,):
      raise ValueError(f'active_mask has shape {active_mask.shape} but max_slots='
                       f'{self.max_slots}: pass a bool mask of exactly max_slots entries '
                       '(more active slots than max_slots is not possible)')
    if active_mask.dtype != jnp.bool_:
      raise ValueError(f'active_mask must be bool, got {active_mask.dtype}')
    want = (features_in.shape[0], self.max_slots, self.slot_dim)
    if initial_state is not None and initial_state.shape != want:
      raise ValueError(f'initial_state must be [B, max_slots, D_s] = {want}, '
                       f'got {initial_state.shape}')


def _slot_stack_kwargs(config) -> dict:
  mc = config.model
  sa, pc = mc.slot_attention, mc.predictor
  return dict(
      slot_dim=mc.slot_dim, max_slots=mc.max_slots,
      iters_first=sa.iters_first, iters=sa.iters, eps=sa.eps, gru_hidden=sa.gru_hidden,
      predictor_blocks=pc.num_blocks, predictor_heads=pc.num_heads,
      predictor_mlp_ratio=pc.mlp_ratio, logit_scale=pc.logit_scale,
      decoder_hidden=tuple(mc.decoder.hidden), decoder_pos_init=mc.decoder.pos_init,
      decoder_remat=mc.decoder.remat,
      dtype=layers.dtype_from_name(mc.compute_dtype))


def build_model(config, spec: encoders.EncoderSpec | None = None) -> VideoSlotModel:
  """The model of `config.model` with the encoder of `encoders.encoder_spec(config)`."""
  spec = spec or encoders.encoder_spec(config)
  hidden = config.model.feature_mlp_hidden or 2 * spec.input_dim
  return VideoSlotModel(
      encoder=spec.module, input_dim=spec.input_dim, target_dim=spec.target_dim,
      grid=spec.grid, target=spec.target, patch_size=spec.patch_size,
      freeze_encoder=spec.frozen, feature_mlp_hidden=hidden, **_slot_stack_kwargs(config))


def build_slot_stack(config, input_dim: int, target_dim: int,
                     grid: tuple[int, int]) -> VideoSlotModel:
  """A model without encoder, fed backbone tokens through `process` (golden fixtures,
  precomputed features). Sizes other than the encoder's come from `config.model`."""
  hidden = config.model.feature_mlp_hidden or 2 * input_dim
  return VideoSlotModel(encoder=None, input_dim=input_dim, target_dim=target_dim,
                        grid=tuple(grid), feature_mlp_hidden=hidden,
                        **_slot_stack_kwargs(config))


# --------------------------------------------------------------------------- placeholders

PLACEHOLDERS = ('initializer', 'placeholders')  # where the model keeps P [max_slots, D_s]


def get_placeholders(params) -> jax.Array:
  """The slot placeholders P [max_slots, D_s] of a params tree."""
  return params[PLACEHOLDERS[0]][PLACEHOLDERS[1]]


def set_placeholders(params, placeholders: jax.Array):
  """A copy of `params` (a dict tree) with P [max_slots, D_s] replaced."""
  params = dict(params)
  params[PLACEHOLDERS[0]] = dict(params[PLACEHOLDERS[0]], **{PLACEHOLDERS[1]: placeholders})
  return params
