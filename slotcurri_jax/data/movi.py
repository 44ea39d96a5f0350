"""MOVi-C / MOVi-E (and `synthetic_movi`) over TFDS, and the frame resizes shared with YT-VIS.

Storage (docs/method.md §11.1): `movi_c/128x128:1.0.0` and `movi_e/128x128:1.0.0` under
`config.data.data_dir` (default gs://kubric-public/tfds). These builders are
not in the TFDS catalogue, so the reader rebuilds them from the
`dataset_info.json` in `<data_dir>/<name>/128x128/1.0.0`
(`tfds.builder_from_directory`). `synthetic_movi` has the same features and is
generated into data_dir on first use.

Transforms (docs/method.md §11.2), as the reference computes them with
`torch.nn.functional.interpolate`:

* training: one 4-frame chunk per visit at a random offset in {0, 4, ..., 20}
  (only those frames' PNGs are decoded), uint8 -> [0, 1], bicubic resize of the
  whole frame to `config.data.resolution`, clamp to [0, 1], ImageNet
  normalisation, horizontal flip of the whole clip with p = `data.flip_prob`;
* evaluation: all frames, the same resize, no flip; the instance ids
  (0 = background) resized by nearest-exact sampling.

Resizes reproduce PyTorch, not `tf.image.resize`: PyTorch's (non-antialiased)
bicubic uses the cubic-convolution coefficient a = -0.75, while TF's 'bicubic'
uses Keys' a = -0.5, a visibly different kernel (docs/method.md §3.5, §16). A
resize is separable and linear, so it is two small matrix products with
weights built exactly like PyTorch's; nearest-exact is a gather with source
index floor((i + 0.5) * in / out).
"""
from __future__ import annotations

import socket

import tensorflow as tf
import tensorflow_datasets as tfds

from slotcurri_jax import errors
from slotcurri_jax.data import spec as spec_lib
from slotcurri_jax.data import synthetic_movi
from slotcurri_jax.data import transforms

DEFAULT_DATA_DIR = 'gs://kubric-public/tfds'
MOVI_CONFIG = '128x128'
MOVI_SIDE = 128  # stored frame side of MOVI_CONFIG
MOVI_FRAMES = 24  # frames per MOVi video
MOVI_VERSION = '1.0.0'
# --------------------------------------------------------------------------- builders

def data_dir(config) -> str:
  """config.data.data_dir, else the public bucket."""
  return spec_lib.data_dir(config, DEFAULT_DATA_DIR)


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
  if root.startswith('gs://'):
    try:
      socket.getaddrinfo('storage.googleapis.com', 443)
    except OSError as e:
      raise errors.mark(FileNotFoundError(
          f'config.data.data_dir={root} cannot be reached from this machine (no route to '
          f'Google Cloud Storage: {e}).\n{how_to_get(config)}')) from e
  try:
    return tf.io.gfile.exists(root)
  except tf.errors.OpError as e:
    raise errors.mark(FileNotFoundError(
        f'config.data.data_dir={root} cannot be read ({type(e).__name__}: '
        f'{e.message.splitlines()[0]}).\n{how_to_get(config)}')) from e


def builder(config) -> tfds.core.DatasetBuilder:
  """The read-only TFDS builder of MOVi-C / MOVi-E (config.data.name) from its files; a
  missing or unreachable directory raises FileNotFoundError naming the path and the copy
  command."""
  name = config.data.name
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
  offset = transforms.clip_offset(tf.shape(encoded)[0], clip_len, offset_seed)
  frames = transforms.decode_frames(encoded, offset + tf.range(clip_len))
  frames = tf.ensure_shape(frames, [clip_len, None, None, 3])
  height, width = tf.shape(frames)[1], tf.shape(frames)[2]
  clip = transforms.resize_bicubic(tf.cast(frames, tf.float32) / 255.0,
                                   transforms.cubic_weights(height, size),
                                   transforms.cubic_weights(width, size))
  clip = transforms.maybe_flip(clip, config.data.flip_prob, flip_seed)
  return {'video': tf.ensure_shape(transforms.normalize(clip), [clip_len, size, size, 3])}


def _decode_video(example: dict, config):
  """A whole evaluation video: frames uint8 [T, h, w, 3], its ids int32 [T, R, R] resized
  by nearest-exact sampling, T, h and w."""
  size = config.data.resolution
  encoded = example['video']
  num_frames = tf.shape(encoded)[0]
  frames = transforms.decode_frames(encoded, tf.range(num_frames))
  ids = transforms.decode_frames(example['segmentations'], tf.range(num_frames), channels=1)[..., 0]
  height, width = tf.shape(frames)[1], tf.shape(frames)[2]
  ids = transforms.resize_nearest(tf.cast(ids, tf.int32),
                                 transforms.nearest_exact_indices(height, size),
                                 transforms.nearest_exact_indices(width, size), axis=1)
  return frames, ids, num_frames, height, width


def eval_example(example: dict, config) -> dict:
  """A whole video: video float32 [T, R, R, 3], segmentations int32 [T, R, R] ids,
  num_frames, and max_id (the largest raw id, checked against max_instances by the caller)."""
  size = config.data.resolution
  frames, ids, num_frames, height, width = _decode_video(example, config)
  video = transforms.resize_bicubic(tf.cast(frames, tf.float32) / 255.0,
                                    transforms.cubic_weights(height, size),
                                    transforms.cubic_weights(width, size))
  return {'video': transforms.normalize(video), 'segmentations': ids, 'num_frames': num_frames,
          'max_id': tf.reduce_max(ids)}


# Raw examples for config.data.preprocess_on_device: the same random choices as the
# functions above (same seeds, same draws), frames left uint8 at the stored size; the
# resize, clamp, normalisation and flip run in the jitted step (data/device_preprocess.py).

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
  offset = transforms.clip_offset(tf.shape(encoded)[0], clip_len, offset_seed)
  frames = tf.ensure_shape(transforms.decode_frames(encoded, offset + tf.range(clip_len)),
                           [clip_len, None, None, 3])
  geometry, crop = raw_geometry(tf.shape(frames)[1], tf.shape(frames)[2], size)
  return {'frames': frames, 'size': geometry, 'crop': crop,
          'flip': transforms.flip_decision(config.data.flip_prob, flip_seed)}


def eval_example_raw(example: dict, config) -> dict:
  """`eval_example` with frames uint8 [T, h, w, 3] (+ size, crop, flip False) in place
  of its video; the ids are resized to R on the host as there."""
  frames, ids, num_frames, height, width = _decode_video(example, config)
  geometry, crop = raw_geometry(height, width, config.data.resolution)
  return {'frames': frames, 'size': geometry, 'crop': crop, 'flip': tf.constant(False),
          'segmentations': ids, 'num_frames': num_frames, 'max_id': tf.reduce_max(ids)}


def synthetic_builder(config) -> tfds.core.DatasetBuilder:
  """synthetic_movi, generated into data_dir (default ~/tensorflow_datasets) unless there."""
  return synthetic_movi.prepare(config.data.synthetic,
                                spec_lib.data_dir(config, spec_lib.LOCAL_TFDS))


def check_video(video: dict, video_name: str, config) -> None:
  """An evaluation video's ids must fit config.data.max_instances."""
  max_id = int(video['max_id'])
  if max_id >= config.data.max_instances:
    raise ValueError(
        f'video {video_name!r} has instance id {max_id} >= config.data.max_instances='
        f'{config.data.max_instances} (ids 0..max_instances-1, 0 = background); set '
        f'data.max_instances to the label channels of the dataset (11 MOVi-C, 24 MOVi-E)')



def stored_side(config) -> int:
  """The stored frame side: MOVI_CONFIG's, or synthetic_movi's generated one."""
  return (config.data.synthetic.resolution if config.data.name == 'synthetic_movi'
          else MOVI_SIDE)


def spec(name: str, build=builder) -> spec_lib.DatasetSpec:
  """The DatasetSpec of a dataset in MOVi's layout: 'movi_c', 'movi_e', or
  'synthetic_movi' with build=synthetic_builder."""
  return spec_lib.DatasetSpec(
      name=name, builder=build,
      train_decoders=TRAIN_DECODERS, eval_decoders=EVAL_DECODERS,
      train_example=train_example, train_example_raw=train_example_raw,
      eval_example=eval_example, eval_example_raw=eval_example_raw,
      check_video=check_video, eval_lengths=lambda builder: None,
      eval_frame_side=stored_side, train_frame_side=stored_side,
      max_eval_frames=lambda config: (config.data.synthetic.num_frames
                                      if name == 'synthetic_movi' else MOVI_FRAMES),
      metric_convention='movi')
