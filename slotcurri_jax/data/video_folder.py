"""Your own videos as a dataset (config.data.name = 'video_folder'): a TFDS builder over a
folder of videos, built on first use, then read like YouTube-VIS.

The folder (`config.data.video_folder.root`) holds video files, GIFs or folders of frames,
with optional per-frame mask PNGs, or DAVIS 2017 as unpacked; data/video_folder_scan.py
lists the layouts and checks every video before anything is written.

The build, into `<data_dir>/video_folder/<folder>_<hash>/1.0.0` (data_dir default
~/tensorflow_datasets; the hash covers the folder's path and the settings below):

* frames are resized so that their short side is `short_side` (YouTube-VIS's pre-pass,
  `prepass_resize`) and stored as uint8 PNG; the on-device resize to data.resolution
  and the crops are YouTube-VIS's (data/ytvis.py), which these examples share;
* `train` holds the training videos cut into pieces of `segment_frames` (the last piece
  ends at the video's last frame, so it may overlap the one before): each visit takes one
  random clip of data.train_clip_len frames from a piece;
* `validation` holds the evaluated videos whole, or cut into consecutive pieces of at
  most `max_eval_frames` (named `<video>@<first frame>`); masks become one channel per
  object id, and ids are scored under YouTube-VIS's convention (metric_convention
  'ytvis': frames without an object do not count in the per-frame metrics);
* `manifest.json` beside the TFDS files lists the split (and how it was made), every
  video's frames and size, the skipped videos and the fingerprint of the files it read (and
  of a given manifest). A later run whose folder changed (a video, frame, mask or split file
  added, removed or modified) is refused with the command that rebuilds it; the old build
  is removed only once the new folder has passed its checks.

Evaluation writes each evaluated piece's predicted slot ids to
eval/masks_step_<step>/<piece>.npz; pieces without masks are not scored, and when no
piece has masks, the metrics file holds the video count only (evaluate.py says so).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import shutil

from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from slotcurri_jax import errors
from slotcurri_jax.data import spec as spec_lib
from slotcurri_jax.data import video_folder_scan as scan
from slotcurri_jax.data import ytvis

MANIFEST = 'manifest.json'
FEATURES = tfds.features.FeaturesDict({
    'video': tfds.features.Video(shape=(None, None, None, 3)),
    # [T, H, W, objects] in {0, 1}, YouTube-VIS's layout; one zero channel without masks.
    'masks': tfds.features.Tensor(shape=(None, None, None, None), dtype=np.uint8,
                                  encoding=tfds.features.Encoding.ZLIB),
    'metadata': {'video_name': tfds.features.Text(), 'first_frame': np.int32,
                 'num_frames': np.int32, 'height': np.int32, 'width': np.int32},
})


@dataclasses.dataclass
class VideoFolderConfig(tfds.core.BuilderConfig):
  short_side: int = 320
  segment_frames: int = 24
  max_eval_frames: int = 112
  prepass_resize: str = 'nearest_exact'


class VideoFolder(tfds.core.GeneratorBasedBuilder):
  """A folder of videos; `videos` (the checked split) is set by `prepare` before a build."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'first release'}

  def __init__(self, *, plan: dict | None = None, **kwargs):
    self.plan = plan
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    # disable_shuffling: the validation order is the manifest's.
    return tfds.core.DatasetInfo(builder=self, features=FEATURES, disable_shuffling=True,
                                 description='A folder of videos (data/video_folder.py).')

  def _split_generators(self, dl_manager):
    del dl_manager
    if self.plan is None:
      raise errors.UserError('video_folder: the build needs the checked videos (call prepare)')
    with tf.io.gfile.GFile(os.path.join(self.data_dir, MANIFEST), 'w') as f:
      json.dump(self.plan['manifest'], f, indent=1)
    return {'train': self._generate_examples(self.plan['train'], with_masks=False),
            'validation': self._generate_examples(self.plan['validation'], with_masks=True)}

  def _generate_examples(self, pieces: list, with_masks: bool):
    position, loaded = 0, None
    for checked, start, stop, name in pieces:
      if loaded is None or loaded[0] is not checked:  # the pieces of a video come in a row
        loaded = (checked, *_load(checked, with_masks, self.builder_config))
      _, frames, masks, (height, width) = loaded
      yield position, {
          'video': frames[start:stop],
          'masks': (np.zeros((stop - start, height, width, 1), np.uint8) if masks is None
                    else masks[start:stop]),
          'metadata': {'video_name': name, 'first_frame': start, 'num_frames': stop - start,
                       'height': height, 'width': width}}
      position += 1


def _load(checked: scan.Checked, with_masks: bool, c: VideoFolderConfig):
  """A video's frames as PNG bytes at the stored size (h, w) (`ytvis.stored_png`), its
  object masks uint8 [T, h, w, K] at that size (None when not wanted or not there), (h, w).
  Frames and masks are resized as they are decoded: the full-size video is never held."""
  size = ytvis.short_side_size(checked.height, checked.width, c.short_side)
  frames = [ytvis.stored_png(ytvis.prepass(image, size, c.prepass_resize))
            for image in scan.iter_frames(checked.video)]
  masks = None
  if with_masks and checked.video.masks is not None:
    ids = np.stack([ytvis.prepass(m[..., None], size, 'nearest_exact')[..., 0] for m in
                    scan.iter_masks(checked.video, checked.num_frames, checked.height,
                                    checked.width)])
    masks = scan.instance_channels(ids)
  return frames, masks, size


# --------------------------------------------------------------------------- pieces

def train_pieces(num_frames: int, length: int) -> list[tuple[int, int]]:
  """[start, stop) pieces of `length` frames covering a video; the last ends at its end."""
  if num_frames <= length:
    return [(0, num_frames)]
  starts = list(range(0, num_frames - length + 1, length))
  if starts[-1] + length < num_frames:
    starts.append(num_frames - length)
  return [(s, s + length) for s in starts]


def eval_pieces(num_frames: int, length: int) -> list[tuple[int, int]]:
  """Consecutive [start, stop) pieces of at most `length` frames."""
  return [(s, min(s + length, num_frames)) for s in range(0, num_frames, length)]


def plan(train: list, validation: list, settings: VideoFolderConfig) -> tuple[list, list]:
  """The examples of each split: (checked video, start, stop, name)."""
  train_rows = [(c, a, b, c.video.name) for c in train
                for a, b in train_pieces(c.num_frames, settings.segment_frames)]
  eval_rows = []
  for c in validation:
    pieces = eval_pieces(c.num_frames, settings.max_eval_frames)
    eval_rows += [(c, a, b, c.video.name if len(pieces) == 1 else f'{c.video.name}@{a}')
                  for a, b in pieces]
  return train_rows, eval_rows


# --------------------------------------------------------------------------- prepare

def _settings(config) -> VideoFolderConfig:
  v = config.data.video_folder
  if v.prepass_resize not in ytvis.PREPASS_MODES:
    raise errors.UserError(f'config.data.video_folder.prepass_resize={v.prepass_resize!r}; '
                           f'choose one of {ytvis.PREPASS_MODES}')
  if v.segment_frames < config.data.train_clip_len:
    raise errors.UserError(f'config.data.video_folder.segment_frames={v.segment_frames} is '
                           f'shorter than a clip (data.train_clip_len={config.data.train_clip_len})')
  root = os.path.abspath(os.path.expanduser(v.root)) if v.root else ''
  key = json.dumps([root, v.short_side, v.segment_frames, v.max_eval_frames, v.prepass_resize,
                    v.validation_fraction, v.manifest and os.path.abspath(v.manifest),
                    v.davis_resolution, v.on_bad_video, config.data.train_clip_len])
  slug = re.sub(r'[^A-Za-z0-9]+', '_', os.path.basename(root.rstrip('/')) or 'root').strip('_')
  name = f'{slug.lower()}_{hashlib.sha256(key.encode()).hexdigest()[:10]}'
  return VideoFolderConfig(name=name, description=f'{root} ({key})', short_side=v.short_side,
                           segment_frames=v.segment_frames, max_eval_frames=v.max_eval_frames,
                           prepass_resize=v.prepass_resize)


def _builder(config, plan_: dict | None = None) -> VideoFolder:
  return VideoFolder(config=_settings(config), plan=plan_,
                     data_dir=spec_lib.data_dir(config, spec_lib.LOCAL_TFDS))


def read_manifest(builder) -> dict:
  with tf.io.gfile.GFile(os.path.join(builder.data_dir, MANIFEST)) as f:
    return json.load(f)


def prepare(config) -> VideoFolder:
  """The prepared builder of config.data.video_folder.root: built on first use, refused when
  the folder changed since (rebuilt with data.video_folder.rebuild)."""
  v = config.data.video_folder
  builder = _builder(config)
  if not v.root:
    raise errors.UserError('config.data.video_folder.root is empty; pass '
                           '--config.data.video_folder.root=/path/to/your/videos')
  scan.check_root(v.root)  # a missing (unmounted) folder is not a changed one: nothing removed
  videos = scan.find_videos(v.root, v.davis_resolution)
  fingerprint = scan.fingerprint(videos, v.root, v.manifest)
  rebuilding = builder.is_prepared()
  if rebuilding:
    if fingerprint == read_manifest(builder)['fingerprint']:
      return builder
    if not v.rebuild:
      raise errors.UserError(
          f'the folder {v.root} (or its manifest) changed since it was built into '
          f'{builder.data_dir}; rebuild with the same command and '
          '--config.data.video_folder.rebuild=True')
  checked = scan.check(videos, config.data.train_clip_len, v.on_bad_video)
  kept = {c.video.name for c in checked}
  skipped = [x.name for x in videos if x.name not in kept]
  train, validation, convention = scan.split(checked, v.root, v.manifest, v.validation_fraction,
                                             frozenset(skipped))
  scan.check_objects(validation, config.data.max_instances)
  train_rows, eval_rows = plan(train, validation, builder.builder_config)
  manifest = {
      'root': os.path.abspath(os.path.expanduser(v.root)), 'fingerprint': fingerprint,
      'convention': convention, 'train': [c.row() for c in train],
      'validation': [c.row() for c in validation],
      'eval_pieces': [{'name': name, 'video': c.video.name, 'first_frame': a, 'num_frames': b - a,
                       'has_masks': c.video.masks is not None} for c, a, b, name in eval_rows],
      'skipped': skipped}
  if rebuilding:  # only now: a folder that fails its checks leaves the old build in place
    logging.warning('video_folder: %s changed; rebuilding %s', v.root, builder.data_dir)
    shutil.rmtree(builder.data_dir)
  builder = _builder(config, {'manifest': manifest, 'train': train_rows,
                              'validation': eval_rows})
  logging.info('video_folder: building %d training pieces and %d evaluation pieces of %s into '
               '%s', len(train_rows), len(eval_rows), v.root, builder.data_dir)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return builder


def eval_videos(builder: VideoFolder) -> list[dict]:
  """The evaluated pieces in split order: {'name', 'has_masks', ...}, from the manifest of
  the build the run reads (not a new scan of the folder)."""
  return read_manifest(builder)['eval_pieces']


# --------------------------------------------------------------------------- the spec

def train_example_raw(example: dict, seed: tf.Tensor, config) -> dict:
  """YouTube-VIS's raw training clip, its window sized by this dataset's short side."""
  return ytvis.train_example_raw(example, seed, config,
                                 short_side=config.data.video_folder.short_side)


DATASET_SPEC = spec_lib.DatasetSpec(
    name='video_folder', builder=prepare, train_decoders=ytvis.TRAIN_DECODERS,
    eval_decoders=ytvis.EVAL_DECODERS, train_example=ytvis.train_example,
    train_example_raw=train_example_raw, eval_example=ytvis.eval_example,
    eval_example_raw=ytvis.eval_example_raw, check_video=ytvis.check_video,
    eval_lengths=lambda builder: [p['num_frames'] for p in read_manifest(builder)['eval_pieces']],
    # Frames are stored at the short side, so a centre square is short_side wide.
    eval_frame_side=lambda config: config.data.video_folder.short_side,
    train_frame_side=lambda config: ytvis.raw_window(config, config.data.video_folder.short_side),
    max_eval_frames=lambda config: int(math.ceil(config.data.video_folder.max_eval_frames / 8) * 8),
    metric_convention='ytvis', eval_videos=eval_videos)
