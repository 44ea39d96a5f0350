"""Frame preprocessing inside the jitted step: uint8 stored frames -> the model's input.

With `config.data.preprocess_on_device` (the default) the host pipeline decodes the
stored frames and ships them as uint8 at the stored resolution, with each clip's
random choices; the resize to the model resolution, the clamp, the ImageNet
normalisation and the flip run here, inside the jitted train / eval step, on the
batch-sharded arrays (every op is per clip, so the result stays sharded like the
batch). The host path (`preprocess_on_device=False`, data/movi.py `train_example`
and friends) computes the same numbers in TensorFlow on the host; the two agree to
float32 rounding (tests/test_device_preprocess.py).

A raw batch (data/movi.py `train_example_raw` / `eval_example_raw`, data/ytvis.py
likewise):

  frames   uint8 [B, T, P, Q, 3]  stored pixels: the whole stored frame (MOVi), or the
                                  window of it the clip's crop reads (YT-VIS training),
                                  or the centre square (YT-VIS evaluation); zero-padded
                                  to P x Q, padding never read
  size     int32 [B, 4]  (in_h, in_w, out_h, out_w): the resize maps the stored frame of
                         in_h x in_w to out_h x out_w (PyTorch bicubic, a = -0.75)
  crop     int32 [B, 4]  (top, left, row0, col0): the output is the R x R window at
                         (top, left) of that resize; frames[:, :, 0, 0] is stored pixel
                         (row0, col0)
  flip     bool  [B]     flip the clip horizontally (after the crop)
  ...                    other keys (segmentations, num_frames, padding_mask) pass through

`preprocess(batch, config)` returns the batch with 'video' float32 [B, T, R, R, 3]
(R = config.data.resolution) in place of those four keys. A batch that already holds
'video' (the host path), or has no 'frames' (precomputed 'features'), is returned as it is.

Exactness. The resize is two matrix products per clip, rows [R, P] @ x @ cols[R, Q]^T,
with weights built like data/movi.py `cubic_weights` (PyTorch's): source position
src = float32(float64(in / out) * (i + 0.5) - 0.5). JAX computes in float32 here (no
x64), so the product is formed exactly from a 12-bit split of the scale (each half
times i + 0.5 is exact in float32) and rounded once, which gives the same float32 src
for output sizes below 2048. The matmuls run at Precision.HIGHEST (full float32 on
GPU/TPU too, where the default would be TF32 / bfloat16 passes); they cost about
0.5 GFLOP per 4-frame MOVi clip at 336 px, about 0.1 % of the train step.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# The ImageNet statistics every path normalises with (host transforms, inference too).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RAW_KEYS = ('frames', 'size', 'crop', 'flip')
_CUBIC_A = -0.75  # PyTorch's bicubic coefficient
_HIGHEST = jax.lax.Precision.HIGHEST


# --------------------------------------------------------------------------- exact float32 scalars

def _split_hi(x: jax.Array) -> jax.Array:
  """x with the low 12 of its 23 mantissa bits cleared (12 significant bits left)."""
  bits = jax.lax.bitcast_convert_type(x, jnp.int32)
  return jax.lax.bitcast_convert_type(bits & jnp.int32(~0xFFF), jnp.float32)


def _exact_product(s: jax.Array, k: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(hi, lo), both exact float32 products, hi + lo = s * k exactly; k: multiples
  of 0.5 below 2048 (12 significant bits)."""
  s_hi = _split_hi(s)
  return s_hi * k, (s - s_hi) * k


def _divide(a: jax.Array, b: jax.Array) -> jax.Array:
  """float32 a / b correctly rounded, for integer-valued a, b in [1, 2048).

  IEEE division already is on CPU and GPU; TPUs divide through a reciprocal, which
  can be an ulp off, so the nearest of q and its two neighbours is taken.
  """
  q = a / b
  candidates = jnp.stack([jnp.nextafter(q, -jnp.inf), q, jnp.nextafter(q, jnp.inf)])
  hi, lo = _exact_product(candidates, b)
  residual = jnp.abs((a - hi) - lo)  # a - hi is exact (Sterbenz)
  return jnp.take_along_axis(candidates, jnp.argmin(residual, axis=0)[None], axis=0)[0]


def source_positions(in_size, out_size, start, count: int) -> jax.Array:
  """float32 [count] source positions of outputs start .. start + count - 1 of a
  PyTorch (align_corners=False) resize from in_size to out_size (int32 scalars)."""
  scale = _divide(jnp.asarray(in_size, jnp.float32), jnp.asarray(out_size, jnp.float32))
  k = (jnp.arange(count, dtype=jnp.int32) + start).astype(jnp.float32) + 0.5
  hi, lo = _exact_product(scale, k)
  return (hi - 0.5) + lo  # hi - 0.5 is exact; one rounding of the exact sum


def cubic_taps(t):
  """The 4 weights of PyTorch's cubic convolution (a = -0.75) for the taps floor(src) - 1
  .. floor(src) + 2, given t = src - floor(src) in [0, 1): a tuple of 4 arrays shaped like
  t. Plain arithmetic, so the host pipeline (TensorFlow, data/transforms.py) and the
  on-device resize share it."""
  a = _CUBIC_A

  def near(x):  # |x| <= 1
    return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0

  def far(x):  # 1 < |x| < 2
    return ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a

  return far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)


def cubic_weights(in_size, out_size, start, offset, count: int, width: int) -> jax.Array:
  """[count, width] float32: PyTorch's bicubic weights of outputs start .. start + count - 1
  of a resize in_size -> out_size, over stored pixels offset .. offset + width - 1
  (taps clamped to [0, in_size - 1] as PyTorch does; data/movi.py `cubic_weights`)."""
  src = source_positions(in_size, out_size, start, count)
  base = jnp.floor(src)
  taps = cubic_taps(src - base)
  base = base.astype(jnp.int32)
  weights = jnp.zeros((count, width), jnp.float32)
  for k, w in enumerate(taps):
    index = jnp.clip(base - 1 + k, 0, in_size - 1) - offset
    weights = weights + jax.nn.one_hot(index, width, dtype=jnp.float32) * w[:, None]
  return weights


# --------------------------------------------------------------------------- the step's entry point

def is_raw(batch: Any) -> bool:
  return isinstance(batch, dict) and 'frames' in batch and 'video' not in batch


def preprocess(batch: dict, config) -> dict:
  """Raw batch (module doc) -> the batch with 'video' float32 [B, T, R, R, 3]; any
  other batch unchanged. Call it inside jit: its shapes are static."""
  if not is_raw(batch):
    return batch
  out = {k: v for k, v in batch.items() if k not in RAW_KEYS}
  with jax.named_scope('device_preprocess'):
    out['video'] = video_from_raw(batch['frames'], batch['size'], batch['crop'],
                                  batch['flip'], config.data.resolution)
  return out


def model_video(video_or_raw: Any, config) -> jax.Array:
  """The eval step's input: a video array as it is, or a raw dict preprocessed."""
  if isinstance(video_or_raw, dict):
    return preprocess(video_or_raw, config)['video']
  return video_or_raw


def model_input(batch: dict) -> Any:
  """What evaluation hands its step: batch['video'] (host path) or the raw keys."""
  if 'video' in batch:
    return batch['video']
  return {k: batch[k] for k in RAW_KEYS}


def video_from_raw(frames: jax.Array, size: jax.Array, crop: jax.Array, flip: jax.Array,
                   resolution: int) -> jax.Array:
  """frames uint8 [B, T, P, Q, 3], size/crop int32 [B, 4], flip bool [B] -> float32
  [B, T, R, R, 3]: bicubic resize + crop, clamp to [0, 1], ImageNet normalisation, flip."""
  _, _, p, q, _ = frames.shape
  r = resolution

  def weights(s, c, f):
    rows = cubic_weights(s[0], s[2], c[0], c[2], r, p)
    cols = cubic_weights(s[1], s[3], c[1], c[3], r, q)
    return rows, jnp.where(f, cols[::-1], cols)  # a flip reverses the output columns

  rows, cols = jax.vmap(weights)(size.astype(jnp.int32), crop.astype(jnp.int32), flip)
  x = frames.astype(jnp.float32) / 255.0
  # Contract the longer stored axis first only matters for cost; rows first, like the host.
  x = jnp.einsum('brp,btpqc->btrqc', rows, x, precision=_HIGHEST)
  x = jnp.einsum('bsq,btrqc->btrsc', cols, x, precision=_HIGHEST)
  x = jnp.clip(x, 0.0, 1.0)  # bicubic overshoots; the reference clamps
  return (x - jnp.asarray(IMAGENET_MEAN, jnp.float32)) / jnp.asarray(IMAGENET_STD, jnp.float32)


def host_video(batch: dict, index: int, config) -> np.ndarray:
  """Clip `index` of a host batch as float32 [T, R, R, 3] (for figures): batch['video']
  on the host path, else the raw clip preprocessed (eagerly, on the default device)."""
  if 'video' in batch:
    return np.asarray(batch['video'][index])
  one = {k: np.asarray(batch[k][index:index + 1]) for k in RAW_KEYS}
  return np.asarray(preprocess(one, config)['video'][0])


def raw_nbytes(batch: dict) -> int:
  """Bytes of the arrays a batch sends to the device."""
  return int(sum(np.asarray(v).nbytes for v in jax.tree.leaves(batch)))
