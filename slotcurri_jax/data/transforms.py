"""Frame transforms shared by every dataset (host side, TensorFlow), as the original
computes them with `torch.nn.functional.interpolate` (docs/method.md §11.2).

Resizes reproduce PyTorch, not `tf.image.resize`: PyTorch's (non-antialiased)
bicubic uses the cubic-convolution coefficient a = -0.75, while TF's 'bicubic'
uses Keys' a = -0.5, a visibly different kernel (docs/method.md §3.5, §16). A
resize is separable and linear, so it is two small matrix products with
weights built exactly like PyTorch's; nearest-exact is a gather with source
index floor((i + 0.5) * in / out). The same matrices run on device in
data/device_preprocess.py.
"""
from __future__ import annotations

import tensorflow as tf

from slotcurri_jax.data import device_preprocess

IMAGENET_MEAN, IMAGENET_STD = device_preprocess.IMAGENET_MEAN, device_preprocess.IMAGENET_STD


# --------------------------------------------------------------------------- resizes

def _torch_scale(in_size, out_size) -> tf.Tensor:
  """PyTorch's float32 `in / out` scale, as float64 (it is promoted before use)."""
  return tf.cast(tf.cast(in_size, tf.float32) / tf.cast(out_size, tf.float32), tf.float64)


def cubic_weights(in_size, out_size) -> tf.Tensor:
  """[out, in] float32 matrix of PyTorch's bicubic resize along one axis.

  align_corners=False: source position (i + 0.5) * in / out - 0.5, taps at
  floor(src) - 1 .. floor(src) + 2 clamped to the border, weights of cubic
  convolution with a = -0.75. Sizes may be tensors (YT-VIS frames vary).
  """
  src = tf.cast(_torch_scale(in_size, out_size) * (tf.range(out_size, dtype=tf.float64) + 0.5)
                - 0.5, tf.float32)
  base = tf.floor(src)
  taps = device_preprocess.cubic_taps(src - base)
  base = tf.cast(base, tf.int32)
  weights = 0.0
  for k, w in enumerate(taps):
    index = tf.clip_by_value(base - 1 + k, 0, tf.cast(in_size, tf.int32) - 1)
    weights += tf.one_hot(index, in_size, dtype=tf.float32) * w[:, None]
  return weights


def nearest_exact_indices(in_size, out_size) -> tf.Tensor:
  """[out] int32 source indices of PyTorch's 'nearest-exact': floor((i + 0.5) * in / out)."""
  src = tf.cast(_torch_scale(in_size, out_size) * (tf.range(out_size, dtype=tf.float64) + 0.5),
                tf.float32)
  return tf.minimum(tf.cast(tf.floor(src), tf.int32), tf.cast(in_size, tf.int32) - 1)


def resize_bicubic(images: tf.Tensor, rows: tf.Tensor, cols: tf.Tensor) -> tf.Tensor:
  """images: [..., H, W, C] float32; rows: [H', H], cols: [W', W] weight matrices
  (from `cubic_weights`, possibly row-sliced for a crop) -> [..., H', W', C], clamped to [0, 1]."""
  # Channels before rows: two broadcast matmuls, rows @ x @ cols^T, ~1.5x faster
  # on CPU than the equivalent einsums.
  x = tf.experimental.numpy.moveaxis(images, -1, -3)  # [..., C, H, W]
  x = tf.matmul(tf.matmul(rows, x), cols, transpose_b=True)
  out = tf.experimental.numpy.moveaxis(x, -3, -1)
  return tf.clip_by_value(out, 0.0, 1.0)  # bicubic overshoots; the reference clamps


def resize_nearest(x: tf.Tensor, rows: tf.Tensor, cols: tf.Tensor, axis: int) -> tf.Tensor:
  """Gather source rows/cols (from `nearest_exact_indices`) along axes (axis, axis + 1)."""
  return tf.gather(tf.gather(x, rows, axis=axis), cols, axis=axis + 1)


def normalize(video: tf.Tensor) -> tf.Tensor:
  """[..., 3] in [0, 1] -> ImageNet-normalised."""
  return (video - tf.constant(IMAGENET_MEAN)) / tf.constant(IMAGENET_STD)


def clip_offset(num_frames, clip_len: int, seed: tf.Tensor) -> tf.Tensor:
  """A random non-overlapping chunk start in {0, clip_len, ...} (at least one chunk)."""
  chunks = tf.maximum(num_frames // clip_len, 1)
  return tf.random.stateless_uniform([], seed, 0, chunks, dtype=tf.int32) * clip_len


def decode_frames(encoded: tf.Tensor, indices: tf.Tensor, channels: int = 3) -> tf.Tensor:
  """Decode only frames `indices` ([n]) of [T] PNG/JPEG bytes -> uint8 [n, H, W, C]."""
  picked = tf.gather(encoded, indices)
  return tf.map_fn(lambda b: tf.io.decode_image(b, channels=channels, expand_animations=False),
                   picked, fn_output_signature=tf.uint8)


def maybe_flip(clip: tf.Tensor, prob: float, seed: tf.Tensor) -> tf.Tensor:
  """Flip a whole clip [T, H, W, C] horizontally with probability `prob`."""
  if prob <= 0:
    return clip
  flip = tf.random.stateless_uniform([], seed) < prob
  return tf.cond(flip, lambda: tf.reverse(clip, axis=[2]), lambda: clip)


def flip_decision(prob: float, seed: tf.Tensor) -> tf.Tensor:
  """The bool `maybe_flip` draws from `seed`."""
  if prob <= 0:
    return tf.constant(False)
  return tf.random.stateless_uniform([], seed) < prob
