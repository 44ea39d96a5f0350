"""MOVi-C / MOVi-E (and `synthetic_movi`) over TFDS, and the frame resizes shared with YT-VIS.

Storage (SPEC §11.1): `movi_c/128x128:1.0.0` and `movi_e/128x128:1.0.0` under
`config.data.data_dir` (default gs://kubric-public/tfds). These builders are
not in the TFDS catalogue, so the reader rebuilds them from the
`dataset_info.json` in `<data_dir>/<name>/128x128/1.0.0`
(`tfds.builder_from_directory`). `synthetic_movi` has the same features and is
generated into data_dir on first use.

Transforms (SPEC §11.2), as the reference computes them with
`torch.nn.functional.interpolate`:

* training: one 4-frame chunk per visit at a random offset in {0, 4, ..., 20}
  (only those frames' PNGs are decoded), uint8 -> [0, 1], bicubic resize of the
  whole frame to `config.data.resolution`, clamp to [0, 1], ImageNet
  normalisation, horizontal flip of the whole clip with p = `data.flip_prob`;
* evaluation: all frames, the same resize, no flip; the instance ids
  (0 = background) resized by nearest-exact sampling.

Resizes reproduce PyTorch, not `tf.image.resize`: PyTorch's (non-antialiased)
bicubic uses the cubic-convolution coefficient a = -0.75, while TF's 'bicubic'
uses Keys' a = -0.5, a visibly different kernel (SPEC §3.5 [verify], §16). A
resize is separable and linear, so it is two small matrix products with
weights built exactly like PyTorch's; nearest-exact is a gather with source
index floor((i + 0.5) * in / out).
"""
from __future__ import annotations

import os
import socket

import tensorflow as tf
import tensorflow_datasets as tfds

from slotcurri_jax.data import synthetic_movi

DEFAULT_DATA_DIR = 'gs://kubric-public/tfds'
MOVI_CONFIG = '128x128'
MOVI_VERSION = '1.0.0'
MOVI_NAMES = ('movi_c', 'movi_e')
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_CUBIC_A = -0.75  # PyTorch's bicubic coefficient


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
  t = src - base
  a = _CUBIC_A

  def near(x):  # |x| <= 1
    return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0

  def far(x):  # 1 < |x| < 2
    return ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a

  taps = (far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t))
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


# --------------------------------------------------------------------------- builders

def data_dir(config) -> str:
  if config.data.data_dir:
    return config.data.data_dir
  if config.data.name in MOVI_NAMES:
    return DEFAULT_DATA_DIR
  return os.path.expanduser('~/tensorflow_datasets')


def dataset_path(config) -> str:
  """Where a MOVi builder's files are: <data_dir>/<name>/128x128/1.0.0."""
  return f'{data_dir(config).rstrip("/")}/{config.data.name}/{MOVI_CONFIG}/{MOVI_VERSION}'


LOCAL_COPY = '/data/tfds'  # suggested local data_dir when data_dir is a bucket


def how_to_get(config) -> str:
  """The copy command (to a local disk) and the flag that points at the copy."""
  root = data_dir(config).rstrip('/')
  local = LOCAL_COPY if root.startswith('gs://') else root
  name = config.data.name
  return (f'Copy {name} once to a local disk (it is ~50-80 GB; reading the bucket mid-training '
          f'is fragile):\n  mkdir -p {local}/{name} && gsutil -m cp -r '
          f'gs://kubric-public/tfds/{name}/{MOVI_CONFIG} {local}/{name}/\n'
          f'then pass --config.data.data_dir={local} (or read the bucket directly with '
          f'--config.data.data_dir={DEFAULT_DATA_DIR}).')


def _check_reachable(root: str, config) -> bool:
  """Whether data_dir exists; a bucket this machine cannot reach is a user error."""
  from slotcurri_jax import cli
  if root.startswith('gs://'):
    try:
      socket.getaddrinfo('storage.googleapis.com', 443)
    except OSError as e:
      raise cli.mark(FileNotFoundError(
          f'config.data.data_dir={root} cannot be reached from this machine (no route to '
          f'Google Cloud Storage: {e}).\n{how_to_get(config)}')) from e
  try:
    return tf.io.gfile.exists(root)
  except tf.errors.OpError as e:
    raise cli.mark(FileNotFoundError(
        f'config.data.data_dir={root} cannot be read ({type(e).__name__}: '
        f'{e.message.splitlines()[0]}).\n{how_to_get(config)}')) from e


def builder(config, *, prepare: bool = True) -> tfds.core.DatasetBuilder:
  """The TFDS builder of config.data.name (movi_c | movi_e | synthetic_movi).

  MOVi: a read-only builder from the files; a missing or unreachable directory raises
  FileNotFoundError naming the path and the copy command. synthetic_movi:
  generated into data_dir first unless it exists (prepare=True).
  """
  name = config.data.name
  if name == 'synthetic_movi':
    make = synthetic_movi.prepare if prepare else synthetic_movi.make_builder
    return make(config.data.synthetic, data_dir(config))
  if name not in MOVI_NAMES:
    raise ValueError(f'config.data.name={name!r} is not a MOVi dataset ({MOVI_NAMES})')
  root, path = data_dir(config), dataset_path(config)
  if not _check_reachable(root, config):
    raise FileNotFoundError(f'config.data.data_dir={root} does not exist.\n{how_to_get(config)}')
  if not tf.io.gfile.exists(f'{path}/dataset_info.json'):
    raise FileNotFoundError(
        f'{name} is not in {root}: no {path}/dataset_info.json.\n{how_to_get(config)}')
  return tfds.builder_from_directory(path)


# --------------------------------------------------------------------------- per-example transforms

# Parsed, not decoded: frames stay PNG bytes until the transform picks them.
TRAIN_DECODERS = tfds.decode.PartialDecoding(
    {'video': True, 'metadata': {'video_name': True}},
    decoders={'video': tfds.decode.SkipDecoding()})
EVAL_DECODERS = tfds.decode.PartialDecoding(
    {'video': True, 'segmentations': True, 'metadata': {'video_name': True}},
    decoders={'video': tfds.decode.SkipDecoding(), 'segmentations': tfds.decode.SkipDecoding()})


def train_example(example: dict, seed: tf.Tensor, config) -> dict:
  """One training clip: {'video': float32 [clip_len, R, R, 3]}.

  example: {'video': [T] PNG bytes, ...}; seed: [2] int stateless seed of this
  visit (the chunk offset and the flip are functions of it).
  """
  clip_len, size = config.data.train_clip_len, config.data.resolution
  offset_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  encoded = example['video']
  offset = clip_offset(tf.shape(encoded)[0], clip_len, offset_seed)
  frames = decode_frames(encoded, offset + tf.range(clip_len))
  frames = tf.ensure_shape(frames, [clip_len, None, None, 3])
  height, width = tf.shape(frames)[1], tf.shape(frames)[2]
  clip = resize_bicubic(tf.cast(frames, tf.float32) / 255.0,
                        cubic_weights(height, size), cubic_weights(width, size))
  clip = maybe_flip(clip, config.data.flip_prob, flip_seed)
  return {'video': tf.ensure_shape(normalize(clip), [clip_len, size, size, 3])}


def eval_example(example: dict, config) -> dict:
  """A whole video: video float32 [T, R, R, 3], segmentations int32 [T, R, R] ids,
  num_frames, and max_id (the largest raw id, checked against max_instances by the caller)."""
  size = config.data.resolution
  encoded = example['video']
  num_frames = tf.shape(encoded)[0]
  frames = decode_frames(encoded, tf.range(num_frames))
  ids = decode_frames(example['segmentations'], tf.range(num_frames), channels=1)[..., 0]
  height, width = tf.shape(frames)[1], tf.shape(frames)[2]
  video = resize_bicubic(tf.cast(frames, tf.float32) / 255.0,
                         cubic_weights(height, size), cubic_weights(width, size))
  ids = resize_nearest(tf.cast(ids, tf.int32), nearest_exact_indices(height, size),
                       nearest_exact_indices(width, size), axis=1)
  return {'video': normalize(video), 'segmentations': ids, 'num_frames': num_frames,
          'max_id': tf.reduce_max(ids)}


# Raw examples for config.data.preprocess_on_device: the same random choices as the
# functions above (same seeds, same draws), frames left uint8 at the stored size; the
# resize, clamp, normalisation and flip run in the jitted step (data/device_preprocess.py).

def flip_decision(prob: float, seed: tf.Tensor) -> tf.Tensor:
  """The bool `maybe_flip` draws from `seed`."""
  if prob <= 0:
    return tf.constant(False)
  return tf.random.stateless_uniform([], seed) < prob


def raw_geometry(height, width, size: int) -> tuple[tf.Tensor, tf.Tensor]:
  """size (in_h, in_w, R, R) and crop (0, 0, 0, 0): the whole stored frame resized to R."""
  geometry = tf.stack([tf.cast(height, tf.int32), tf.cast(width, tf.int32), size, size])
  return geometry, tf.zeros([4], tf.int32)


def train_example_raw(example: dict, seed: tf.Tensor, config) -> dict:
  """`train_example`'s clip before its resize: frames uint8 [clip_len, h, w, 3], size
  int32 [4], crop int32 [4], flip bool (data/device_preprocess.py)."""
  clip_len, size = config.data.train_clip_len, config.data.resolution
  offset_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  encoded = example['video']
  offset = clip_offset(tf.shape(encoded)[0], clip_len, offset_seed)
  frames = tf.ensure_shape(decode_frames(encoded, offset + tf.range(clip_len)),
                           [clip_len, None, None, 3])
  geometry, crop = raw_geometry(tf.shape(frames)[1], tf.shape(frames)[2], size)
  return {'frames': frames, 'size': geometry, 'crop': crop,
          'flip': flip_decision(config.data.flip_prob, flip_seed)}


def eval_example_raw(example: dict, config) -> dict:
  """`eval_example` with frames uint8 [T, h, w, 3] (+ size, crop, flip False) in place
  of its video; the ids are resized to R on the host as there."""
  size = config.data.resolution
  encoded = example['video']
  num_frames = tf.shape(encoded)[0]
  frames = decode_frames(encoded, tf.range(num_frames))
  ids = decode_frames(example['segmentations'], tf.range(num_frames), channels=1)[..., 0]
  height, width = tf.shape(frames)[1], tf.shape(frames)[2]
  ids = resize_nearest(tf.cast(ids, tf.int32), nearest_exact_indices(height, size),
                       nearest_exact_indices(width, size), axis=1)
  geometry, crop = raw_geometry(height, width, size)
  return {'frames': frames, 'size': geometry, 'crop': crop, 'flip': tf.constant(False),
          'segmentations': ids, 'num_frames': num_frames, 'max_id': tf.reduce_max(ids)}


def check_ids(max_id: int, video_name: str, config) -> None:
  if max_id >= config.data.max_instances:
    raise ValueError(
        f'video {video_name!r} has instance id {max_id} >= config.data.max_instances='
        f'{config.data.max_instances} (ids 0..max_instances-1, 0 = background); set '
        f'data.max_instances to the label channels of the dataset (11 MOVi-C, 24 MOVi-E)')

