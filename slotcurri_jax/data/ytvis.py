"""YouTube-VIS 2021 as a TFDS builder, and its training/evaluation transforms.

Raw data (docs/method.md §11.3): the official 2021 `train` split, downloaded by hand from
https://youtube-vos.org/dataset/vis/ into `config.data.ytvis.manual_dir`:

  <manual_dir>/train/instances.json
  <manual_dir>/train/JPEGImages/<video>/<frame>.jpg

The official validation labels are not public, so evaluation uses held-out
training videos. The convention, shared by SlotContrast, SlotCurri and SSync:

* The **last `num_heldout` (300) videos of the official train split**, in the
  order of the annotation file's `videos` list (its video-id order), are held
  out; the other ~2,685 are the training set. The builder's `train` split holds
  the training videos and its `validation` split the held-out ones, in that
  order, and `manifest.json` next to the TFDS files lists both (video ids,
  folder names, frame counts), so the split is auditable.
* Of the 300 held-out videos, the reference code scores only **the first 210**
  (quirk 11, docs/method.md §12.6): with `val_size: 200`, 30 shards of 10 videos and one loader
  worker, its epoch logic takes ceil(200 / 30) = 7 videos per shard x 30 shards
  = 210 videos, which matches the 210 samples reported in
  martius-lab/slotcontrast issue #6. We reproduce it as the first 210 videos in
  manifest order (`data.num_eval_videos = 210` in configs/ytvis.py; -1 or 300 scores all). The
  reference's subset depends on its number of GPUs (each of 2 ranks takes 105
  videos from its own half of the shards), so papers trained on 2 GPUs may have
  scored a slightly different 210.

Pre-pass (the reference's sharding script): frames and masks are resized so
the short side is 320 px with nearest-exact sampling; even the RGB frames are
nearest-resized (quirk 9; `data.ytvis.prepass_resize = 'bicubic'` is the textbook
alternative). Masks are one channel per annotated instance, decoded from the
COCO-style RLE (compressed or not) or polygon segmentations (our own decoders;
pycocotools is not needed), all-zero in frames where the instance is absent; a
video without annotations gets one all-zero channel. The pre-passed frames are stored as
uncompressed PNG (`stored_png`): decoding a compressed one was most of the host's work per
training clip, on either input path.

Transforms: training takes one random 4-frame chunk, resizes its short side to
`data.resolution` (518) bicubically and takes one random square crop shared by
the clip's frames, ImageNet-normalised, no flip (flip_prob 0 in
configs/ytvis.py). Evaluation takes the whole video, the central square crop of
the short side resized bicubically to 518; masks are binarised, turned into ids
(0 = no instance, i + 1 = instance channel i; overlapping masks are an error),
centre-cropped and nearest-exact resized to 518.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import struct
from typing import Any
import zlib

from absl import logging
import numpy as np
import PIL.Image
import tensorflow as tf
import tensorflow_datasets as tfds

from slotcurri_jax.data import spec as spec_lib
from slotcurri_jax.data import transforms

DOWNLOAD_PAGE = 'https://youtube-vos.org/dataset/vis/'
LAYOUT = ('<manual_dir>/train/instances.json and '
          '<manual_dir>/train/JPEGImages/<video>/<frame>.jpg '
          '(the official YouTube-VIS 2021 train split, unpacked)')
MANIFEST = 'manifest.json'
PREPASS_MODES = ('nearest_exact', 'bicubic')
# Frames of the longest video of the 2021 train split: evaluation batches are padded to at
# most ceil(76 / 8) * 8 = 80 frames (data/pipeline.py), the longest shape the eval step sees.
LONGEST_VIDEO = 76


# --------------------------------------------------------------------------- COCO-style masks

def _rle_counts_from_string(s: str) -> list[int]:
  """COCO's compressed RLE: 5-bit groups (6th bit: more follows, sign in the last
  group), each count after the second stored as a delta to the count two before."""
  counts: list[int] = []
  pos = 0
  while pos < len(s):
    value, shift, more = 0, 0, True
    while more:
      c = ord(s[pos]) - 48
      value |= (c & 0x1F) << shift
      more = bool(c & 0x20)
      pos += 1
      shift += 5
      if not more and c & 0x10:
        value |= -1 << shift
    if len(counts) > 2:
      value += counts[-2]
    counts.append(value)
  return counts


def decode_rle(rle: dict) -> np.ndarray:
  """{'size': [h, w], 'counts': list or compressed str} -> uint8 [h, w] in {0, 1}.

  Runs alternate 0s and 1s (0s first) over the column-major (Fortran) pixel order.
  """
  height, width = rle['size']
  counts = rle['counts']
  if isinstance(counts, bytes):
    counts = counts.decode('ascii')
  if isinstance(counts, str):
    counts = _rle_counts_from_string(counts)
  counts = np.asarray(counts, np.int64)
  if counts.sum() != height * width or (counts < 0).any():
    raise ValueError(f'RLE counts sum to {counts.sum()}, not {height}x{width}={height * width}')
  flat = np.repeat((np.arange(len(counts)) % 2).astype(np.uint8), counts)
  return flat.reshape(width, height).T


def decode_polygons(polygons: list, height: int, width: int) -> np.ndarray:
  """COCO polygons (lists of x0, y0, x1, y1, ...) -> uint8 [h, w], their union.

  A pixel is inside when its centre (x + 0.5, y + 0.5) is, by the even-odd rule;
  pycocotools' rasteriser differs from this on some boundary pixels.
  """
  mask = np.zeros((height, width), bool)
  centres = np.arange(height) + 0.5
  for poly in polygons:
    pts = np.asarray(poly, np.float64).reshape(-1, 2)
    x1, y1 = pts[:, 0], pts[:, 1]
    x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
    yc = centres[:, None]  # [H, 1] vs edges [E]
    crosses = ((y1 <= yc) & (yc < y2)) | ((y2 <= yc) & (yc < y1))
    with np.errstate(divide='ignore', invalid='ignore'):
      x_at = x1 + (yc - y1) * (x2 - x1) / (y2 - y1)
    row, edge = np.nonzero(crosses)
    # Pixels with centre left of an edge crossing: columns [0, ceil(x - 0.5)).
    stop = np.clip(np.ceil(x_at[row, edge] - 0.5), 0, width).astype(np.int64)
    toggles = np.zeros((height, width + 1), np.int64)
    np.add.at(toggles, (row, np.zeros_like(stop)), 1)
    np.add.at(toggles, (row, stop), 1)
    mask ^= (np.cumsum(toggles, axis=1)[:, :width] % 2).astype(bool)
  return mask.astype(np.uint8)


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
  """One frame's annotation (RLE dict, polygon list or None) -> uint8 [h, w]."""
  if segmentation is None:
    return np.zeros((height, width), np.uint8)
  if isinstance(segmentation, dict):
    mask = decode_rle(segmentation)
  else:
    mask = decode_polygons(segmentation, height, width)
  if mask.shape != (height, width):
    raise ValueError(f'mask of shape {mask.shape} in a {height}x{width} video')
  return mask


# --------------------------------------------------------------------------- pre-pass

def short_side_size(height: int, width: int, short: int) -> tuple[int, int]:
  """The reference's short-side resize: the long side is floor(long / short * size)."""
  if width < height:
    return int(math.floor(height / width * short)), short
  return short, int(math.floor(width / height * short))


def prepass(image: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
  """[H, W, C] uint8 -> [h, w, C] uint8 by nearest-exact sampling or PyTorch bicubic."""
  height, width = image.shape[:2]
  if mode == 'nearest_exact':
    rows = transforms.nearest_exact_indices(height, size[0]).numpy()
    cols = transforms.nearest_exact_indices(width, size[1]).numpy()
    return image[rows][:, cols]
  if mode == 'bicubic':
    out = transforms.resize_bicubic(tf.constant(image, tf.float32) / 255.0,
                              transforms.cubic_weights(height, size[0]),
                              transforms.cubic_weights(width, size[1]))
    return np.round(out.numpy() * 255.0).astype(np.uint8)
  raise ValueError(f'config.data.ytvis.prepass_resize={mode!r}; choose one of {PREPASS_MODES}')


def stored_png(image: np.ndarray) -> bytes:
  """uint8 [H, W, 3] -> PNG bytes with unfiltered rows in stored (uncompressed) deflate blocks.

  Any PNG decoder reads it, and to the same pixels as a compressed PNG; decoding is a
  copy instead of inflate + unfilter: 0.4 ms against 2.8 ms for a 568x320 frame with
  TensorFlow's libpng, most of the host's work per training clip. The price is
  H x (3 W + 1) bytes on disk: 1.6x a compressed PNG of the benchmark's noisy frames,
  1.8-2.2x for photographs.
  """
  height, width, channels = image.shape
  if channels != 3 or image.dtype != np.uint8:
    raise ValueError(f'expected uint8 [H, W, 3], got {image.dtype} {image.shape}')
  rows = np.concatenate([np.zeros((height, 1), np.uint8), image.reshape(height, 3 * width)], 1)

  def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))

  header = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, not interlaced
  return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header)
          + chunk(b'IDAT', zlib.compress(rows.tobytes(), 0)) + chunk(b'IEND', b''))


# --------------------------------------------------------------------------- builder

@dataclasses.dataclass
class Ytvis2021Config(tfds.core.BuilderConfig):
  num_heldout: int = 300
  prepass_short_side: int = 320
  prepass_resize: str = 'nearest_exact'


def config_from_settings(num_heldout: int = 300, prepass_short_side: int = 320,
                         prepass_resize: str = 'nearest_exact') -> Ytvis2021Config:
  if prepass_resize not in PREPASS_MODES:
    raise ValueError(f'config.data.ytvis.prepass_resize={prepass_resize!r}; choose one of '
                     f'{PREPASS_MODES}')
  name = f'heldout{num_heldout}_short{prepass_short_side}_{prepass_resize}'
  return Ytvis2021Config(name=name, description=name, num_heldout=num_heldout,
                         prepass_short_side=prepass_short_side, prepass_resize=prepass_resize)


class Ytvis2021(tfds.core.GeneratorBasedBuilder):
  """YouTube-VIS 2021 train split with the held-out convention (see module docstring)."""

  VERSION = tfds.core.Version('1.0.1')
  # Read, not written: a 1.0.0 build holds the same pixels (compressed PNG frames).
  SUPPORTED_VERSIONS = [tfds.core.Version('1.0.0')]
  RELEASE_NOTES = {'1.0.0': 'first release',
                   '1.0.1': 'frames stored as uncompressed PNG (`stored_png`): same pixels, '
                            'decoded about 7x faster, 1.6-2.2x the bytes'}
  BUILDER_CONFIGS = [config_from_settings()]
  MANUAL_DOWNLOAD_INSTRUCTIONS = f'Download the 2021 train split from {DOWNLOAD_PAGE}; {LAYOUT}.'

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description='YouTube-VIS 2021 train split; the last videos held out for evaluation.',
        features=tfds.features.FeaturesDict({
            'video': tfds.features.Video(shape=(None, None, None, 3)),
            # [T, H, W, instances] in {0, 1}; may overlap, so not stored as ids.
            'masks': tfds.features.Tensor(shape=(None, None, None, None), dtype=np.uint8,
                                          encoding=tfds.features.Encoding.ZLIB),
            'metadata': {
                'video_id': np.int64, 'video_name': tfds.features.Text(),
                'num_frames': np.int32, 'height': np.int32, 'width': np.int32,
                'num_instances': np.int32, 'orig_height': np.int32, 'orig_width': np.int32,
            },
            'instances': tfds.features.Sequence({
                'annotation_id': np.int64, 'category_id': np.int32}),
        }),
        disable_shuffling=True,  # the held-out order matters (first 210)
        homepage=DOWNLOAD_PAGE,
    )

  def _split_generators(self, dl_manager):
    root = os.path.join(os.fspath(dl_manager.manual_dir), 'train')
    annotations = load_annotations(root)
    videos = list(annotations['videos'])
    num_heldout = self.builder_config.num_heldout
    if len(videos) <= num_heldout:
      raise ValueError(f'{root}/instances.json has {len(videos)} videos; config.data.ytvis.'
                       f'num_heldout={num_heldout} must be smaller')
    train, heldout = videos[:-num_heldout], videos[len(videos) - num_heldout:]
    by_video: dict[Any, list] = {}
    for ann in annotations.get('annotations', []):
      by_video.setdefault(ann['video_id'], []).append(ann)
    write_manifest(os.path.join(self.data_dir, MANIFEST), train, heldout)
    return {'train': self._generate_examples(root, train, by_video),
            'validation': self._generate_examples(root, heldout, by_video)}

  def _generate_examples(self, root: str, videos: list, by_video: dict):
    c = self.builder_config
    # Keys are positions: with disable_shuffling, TFDS stores examples in key order.
    for position, video in enumerate(videos):
      yield position, video_example(root, video, by_video.get(video['id'], []),
                                    c.prepass_short_side, c.prepass_resize)


def load_annotations(root: str) -> dict:
  path = os.path.join(root, 'instances.json')
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f'no {path}. Download YouTube-VIS 2021 from {DOWNLOAD_PAGE}; '
                            f'expected layout: {LAYOUT}')
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def _video_name(video: dict) -> str:
  return video['file_names'][0].split('/')[0] if video['file_names'] else str(video['id'])


def write_manifest(path: str, train: list, heldout: list) -> None:
  def rows(videos):
    return [{'id': v['id'], 'name': _video_name(v), 'num_frames': len(v['file_names'])}
            for v in videos]
  with tf.io.gfile.GFile(path, 'w') as f:
    json.dump({'train': rows(train), 'heldout': rows(heldout),
               'convention': 'held out = the last videos of instances.json["videos"]'}, f)


def read_manifest(builder: tfds.core.DatasetBuilder) -> dict:
  with tf.io.gfile.GFile(os.path.join(builder.data_dir, MANIFEST)) as f:
    return json.load(f)


def video_example(root: str, video: dict, annotations: list, short: int, mode: str) -> dict:
  """The TFDS example of one video: pre-passed frames (`stored_png`) and instance masks."""
  height, width = int(video['height']), int(video['width'])
  size = short_side_size(height, width, short)
  frames = []
  for name in video['file_names']:
    path = os.path.join(root, 'JPEGImages', name)
    if not tf.io.gfile.exists(path):
      raise FileNotFoundError(f'missing frame {path} of video {video["id"]}; expected {LAYOUT}')
    with tf.io.gfile.GFile(path, 'rb') as f:
      image = np.asarray(PIL.Image.open(f).convert('RGB'))
    if image.shape[:2] != (height, width):
      raise ValueError(f'{path} is {image.shape[:2]}, instances.json says {(height, width)}')
    frames.append(stored_png(prepass(image, size, mode)))
  num_frames = len(frames)
  masks = np.zeros((num_frames, size[0], size[1], max(len(annotations), 1)), np.uint8)
  for k, ann in enumerate(annotations):
    segs = ann['segmentations']
    if len(segs) != num_frames:
      raise ValueError(f'annotation {ann["id"]} of video {video["id"]} has {len(segs)} '
                       f'segmentations for {num_frames} frames')
    for t, seg in enumerate(segs):
      if seg is not None:
        mask = decode_segmentation(seg, height, width)
        masks[t, :, :, k] = prepass(mask[..., None], size, 'nearest_exact')[..., 0]
  return {
      'video': frames,
      'masks': masks,
      'metadata': {'video_id': video['id'], 'video_name': _video_name(video),
                   'num_frames': num_frames, 'height': size[0], 'width': size[1],
                   'num_instances': len(annotations), 'orig_height': height,
                   'orig_width': width},
      'instances': [{'annotation_id': a['id'], 'category_id': a['category_id']}
                    for a in annotations],
  }


def make_builder(config, version: str | None = None) -> Ytvis2021:
  """The builder of config.data.ytvis's settings; version None = the current one."""
  y = config.data.ytvis
  builder_config = config_from_settings(y.num_heldout, y.prepass_short_side, y.prepass_resize)
  if builder_config.name in Ytvis2021.builder_configs:  # TFDS wants registered configs by name
    builder_config = builder_config.name
  return Ytvis2021(config=builder_config, version=version,
                   data_dir=spec_lib.data_dir(config, spec_lib.LOCAL_TFDS))


def prepare(config) -> Ytvis2021:
  """The prepared builder; built from manual_dir on first use (one pass over the JPEGs)."""
  builder = make_builder(config)
  if builder.is_prepared():
    return builder
  older = make_builder(config, version='1.0.0')
  if older.is_prepared():
    logging.warning('YouTube-VIS: using the 1.0.0 build in %s (the same pixels, stored as '
                    'compressed PNG: about 7x the host CPU per decoded frame). Delete it and '
                    'prepare 1.0.1 from config.data.ytvis.manual_dir for the faster one.',
                    older.data_path)
    return older
  manual_dir = config.data.ytvis.manual_dir
  if not manual_dir or not tf.io.gfile.exists(os.path.join(manual_dir, 'train', 'instances.json')):
    raise FileNotFoundError(
        f'YouTube-VIS is not prepared in {builder.data_dir} and config.data.ytvis.manual_dir='
        f'{manual_dir!r} has no train/instances.json. Download the 2021 train split from '
        f'{DOWNLOAD_PAGE}, unpack it so that the folder holds {LAYOUT}, and pass '
        f'--config.data.ytvis.manual_dir=<that folder>.')
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir, try_download_gcs=False))
  return builder


# --------------------------------------------------------------------------- transforms

TRAIN_DECODERS = tfds.decode.PartialDecoding(
    {'video': True, 'metadata': {'video_name': True}},
    decoders={'video': tfds.decode.SkipDecoding()})
EVAL_DECODERS = tfds.decode.PartialDecoding(
    {'video': True, 'masks': True, 'metadata': {'video_name': True}},
    decoders={'video': tfds.decode.SkipDecoding()})


def _short_side(height, width, size: int):
  """Tensor version of `short_side_size`."""
  h, w = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
  long_h = tf.cast(tf.floor(h / w * size), tf.int32)
  long_w = tf.cast(tf.floor(w / h * size), tf.int32)
  portrait = width < height
  return tf.where(portrait, long_h, size), tf.where(portrait, size, long_w)


def _sample_clip(example: dict, seed: tf.Tensor, config):
  """The random choices of a training clip and its decoded frames: (frames uint8
  [clip_len, h, w, 3], h, w, the resized short-side size (new_h, new_w), the crop's top and
  left in it, and the flip's seed). A video shorter than the clip repeats its last frame."""
  clip_len, size = config.data.train_clip_len, config.data.resolution
  offset_seed, crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
  encoded = example['video']
  num_frames = tf.shape(encoded)[0]
  offset = transforms.clip_offset(num_frames, clip_len, offset_seed)
  frames = transforms.decode_frames(encoded,
                                    tf.minimum(offset + tf.range(clip_len), num_frames - 1))
  height, width = tf.shape(frames)[1], tf.shape(frames)[2]
  new_h, new_w = _short_side(height, width, size)
  top_seed, left_seed = tf.unstack(tf.random.experimental.stateless_split(crop_seed, 2))
  top = tf.random.stateless_uniform([], top_seed, 0, new_h - size + 1, dtype=tf.int32)
  left = tf.random.stateless_uniform([], left_seed, 0, new_w - size + 1, dtype=tf.int32)
  return frames, height, width, new_h, new_w, top, left, flip_seed


def train_example(example: dict, seed: tf.Tensor, config) -> dict:
  """A random clip: short side resized to R (bicubic), one random R x R crop for the clip."""
  clip_len, size = config.data.train_clip_len, config.data.resolution
  frames, height, width, new_h, new_w, top, left, flip_seed = _sample_clip(example, seed, config)
  # Only the rows/columns of the crop are computed: rows of a resize are independent.
  rows = transforms.cubic_weights(height, new_h)[top:top + size]
  cols = transforms.cubic_weights(width, new_w)[left:left + size]
  clip = transforms.resize_bicubic(tf.cast(frames, tf.float32) / 255.0, rows, cols)
  clip = transforms.maybe_flip(clip, config.data.flip_prob, flip_seed)
  return {'video': tf.ensure_shape(transforms.normalize(clip), [clip_len, size, size, 3])}


def _centre_crop(height, width):
  """Top/left of the central square of side min(h, w); round half to even like Python."""
  side = tf.minimum(height, width)
  top = tf.cast(tf.round(tf.cast(height - side, tf.float64) / 2.0), tf.int32)
  left = tf.cast(tf.round(tf.cast(width - side, tf.float64) / 2.0), tf.int32)
  return top, left, side


def eval_example(example: dict, config) -> dict:
  """The whole video: centre crop, resize to R; masks -> ids [T, R, R] (0 = none).

  Also returns num_channels (instance channels) and max_overlap (the most
  instances on one evaluated pixel), checked by the caller with the video's name.
  """
  frames, labels = _centre_video(example, config)
  weights = transforms.cubic_weights(tf.shape(frames)[1], config.data.resolution)
  video = transforms.resize_bicubic(tf.cast(frames, tf.float32) / 255.0, weights, weights)
  return dict(labels, video=transforms.normalize(video))


def _centre_video(example: dict, config):
  """The centre square of a whole video: frames uint8 [T, S, S, 3] and the labels
  {segmentations [T, R, R] ids (0 = none), num_frames, num_channels, max_overlap}."""
  size = config.data.resolution
  encoded = example['video']
  num_frames = tf.shape(encoded)[0]
  frames = transforms.decode_frames(encoded, tf.range(num_frames))
  height, width = tf.shape(frames)[1], tf.shape(frames)[2]
  top, left, side = _centre_crop(height, width)
  frames = frames[:, top:top + side, left:left + side]
  # uint8 keeps [T, H, W, instances] small; a pixel's count cannot reach 256.
  masks = tf.cast(example['masks'][:, top:top + side, left:left + side] != 0, tf.uint8)
  count = tf.reduce_sum(masks, axis=-1)
  ids = tf.where(count > 0, tf.argmax(masks, axis=-1, output_type=tf.int32) + 1, 0)
  index = transforms.nearest_exact_indices(side, size)
  overlap = transforms.resize_nearest(count, index, index, axis=1)  # the evaluated pixels only
  ids = transforms.resize_nearest(ids, index, index, axis=1)
  return frames, {'segmentations': ids, 'num_frames': num_frames,
                  'num_channels': tf.shape(masks)[-1], 'max_overlap': tf.reduce_max(overlap)}


# Raw examples for config.data.preprocess_on_device (data/device_preprocess.py): the same
# random choices as `train_example` / `eval_example`, frames left uint8. A training clip
# ships only the stored pixels its crop reads (a window of at most S + 4 pixels per side,
# S the pre-pass short side), zero-padded to (S + 4) x (S + 4) so batches have one shape.

def raw_window(config, short_side: int | None = None) -> int:
  """Side of the stored-pixel window a training clip ships: S + 4, with S the stored short
  side (prepass_short_side, or `short_side` for another dataset stored the same way).

  R consecutive outputs of a resize with scale s = in / out read taps
  floor(src_first) - 1 .. floor(src_last) + 2, at most ceil((R - 1) s) + 4 pixels; the
  short side has s = S / R, the long side L has s = L / floor(L R / S) <= S / (R - 1),
  so (R - 1) s <= S either way."""
  return (short_side or config.data.ytvis.prepass_short_side) + 4


def _window_start(in_size, out_size, start, count: int, pad: int) -> tf.Tensor:
  """First stored pixel read by outputs start .. start + count - 1 (asserts the window fits)."""
  scale = transforms._torch_scale(in_size, out_size)
  ends = tf.cast(tf.stack([start, start + count - 1]), tf.float64)
  src = tf.cast(scale * (ends + 0.5) - 0.5, tf.float32)
  taps = tf.cast(tf.floor(src), tf.int32) + tf.constant([-1, 2])
  first, last = tf.unstack(tf.clip_by_value(taps, 0, tf.cast(in_size, tf.int32) - 1))
  check = tf.debugging.assert_less_equal(
      last - first + 1, pad, message='a training crop reads more stored pixels than the window')
  with tf.control_dependencies([check]):
    return tf.identity(first)


def train_example_raw(example: dict, seed: tf.Tensor, config,
                      short_side: int | None = None) -> dict:
  """`train_example`'s clip before its resize: frames uint8 [clip_len, W, W, 3] (W =
  `raw_window(config, short_side)`), size (h, w, new_h, new_w), crop (top, left, row0,
  col0), flip."""
  clip_len, size = config.data.train_clip_len, config.data.resolution
  pad = raw_window(config, short_side)
  frames, height, width, new_h, new_w, top, left, flip_seed = _sample_clip(example, seed, config)
  row0 = _window_start(height, new_h, top, size, pad)
  col0 = _window_start(width, new_w, left, size, pad)
  window = frames[:, row0:row0 + pad, col0:col0 + pad]
  shape = tf.shape(window)
  window = tf.pad(window, [[0, 0], [0, pad - shape[1]], [0, pad - shape[2]], [0, 0]])
  return {'frames': tf.ensure_shape(window, [clip_len, pad, pad, 3]),
          'size': tf.stack([height, width, new_h, new_w]),
          'crop': tf.stack([top, left, row0, col0]),
          'flip': transforms.flip_decision(config.data.flip_prob, flip_seed)}


def eval_example_raw(example: dict, config) -> dict:
  """`eval_example` with the centre square's frames uint8 [T, side, side, 3] (+ size,
  crop, flip False) in place of its video; masks -> ids on the host as there."""
  size = config.data.resolution
  frames, labels = _centre_video(example, config)
  side = tf.shape(frames)[1]
  return dict(labels, frames=frames, size=tf.stack([side, side, size, size]),
              crop=tf.zeros([4], tf.int32), flip=tf.constant(False))


def check_video(video: dict, video_name: str, config) -> None:
  """An evaluation video's instance channels must fit max_instances, without overlaps."""
  num_channels, max_overlap = int(video['num_channels']), int(video['max_overlap'])
  if num_channels > config.data.max_instances:
    raise ValueError(f'video {video_name!r} has {num_channels} instance channels > '
                     f'config.data.max_instances={config.data.max_instances} (25 for YT-VIS)')
  if max_overlap > 1:
    raise ValueError(f'video {video_name!r}: {max_overlap} instance masks overlap on one '
                     f'evaluated pixel; ids need disjoint masks')


DATASET_SPEC = spec_lib.DatasetSpec(
    name='ytvis', builder=prepare, train_decoders=TRAIN_DECODERS, eval_decoders=EVAL_DECODERS,
    train_example=train_example, train_example_raw=train_example_raw,
    eval_example=eval_example, eval_example_raw=eval_example_raw, check_video=check_video,
    # The held-out videos vary in length (the manifest has them, in order).
    eval_lengths=lambda builder: [v['num_frames'] for v in read_manifest(builder)['heldout']],
    # Evaluation ships each pre-passed video's centre square, whose side is the short side.
    eval_frame_side=lambda config: config.data.ytvis.prepass_short_side,
    train_frame_side=raw_window,
    max_eval_frames=lambda config: int(math.ceil(LONGEST_VIDEO / 8) * 8),
    metric_convention='ytvis')
