"""What a folder of videos holds, checked before anything is built (data/video_folder.py).

Two layouts are read as they are:

  generic   <root>/<video>.mp4 | .webm | .mov | .mkv | .avi | .m4v | .gif   a video file
            <root>/<video>/<frame>.jpg | .png                            a folder of frames
            <root>/masks/<video>/<frame>.png                              optional masks
  DAVIS     <root>/JPEGImages/480p/<video>/<frame>.jpg
            <root>/Annotations/480p/<video>/<frame>.png                   optional masks
            <root>/ImageSets/2017/train.txt, val.txt                      optional split

Masks are one PNG per frame, in the frames' natural name order, of the frame's size:
palette PNGs (DAVIS, YouTube-VOS; the palette index is the id) or single-channel integer
PNGs. Id 0 is background and 255 is "ignore" (scored as background); every other id is
one object of that video.

The scan decodes every video once, so that a bad one is named before a build starts: an
unreadable or zero-frame video, or one shorter than a training clip, is refused
(on_bad_video='refuse', the default) or skipped with a warning ('skip'); masks whose
count or size does not match their frames are always refused.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import pathlib

from absl import logging
import numpy as np
import PIL.Image

from slotcurri_jax import errors
from slotcurri_jax.data import video_files

MASKS = 'masks'  # generic layout: <root>/masks/<video>/<frame>.png
IGNORE = 255  # mask id of pixels scored as background (DAVIS / YouTube-VOS "void")
BAD_VIDEO_CHOICES = ('refuse', 'skip')
LAYOUT = ('<root>/<video>.mp4 (.webm, .gif, ...) or <root>/<video>/<frame>.jpg|.png, masks '
          'optional in <root>/masks/<video>/<frame>.png; or DAVIS 2017 as unpacked '
          '(<root>/JPEGImages/480p/<video>/, <root>/Annotations/480p/<video>/)')


@dataclasses.dataclass(frozen=True)
class Video:
  """One video of the folder: `source` is a video file or a folder of frames; `masks` a
  folder of per-frame mask PNGs or None."""
  name: str
  source: str
  masks: str | None = None


@dataclasses.dataclass(frozen=True)
class Checked:
  """A video that decoded: its frame count, frame size and whether it has masks."""
  video: Video
  num_frames: int
  height: int
  width: int

  def row(self) -> dict:
    return {'name': self.video.name, 'num_frames': self.num_frames, 'height': self.height,
            'width': self.width, 'has_masks': self.video.masks is not None}


# --------------------------------------------------------------------------- layouts

def _is_davis(root: pathlib.Path) -> bool:
  return (root / 'JPEGImages').is_dir()


def _davis_folder(root: pathlib.Path, kind: str, resolution: str) -> pathlib.Path:
  return root / kind / resolution


def check_root(root: str) -> pathlib.Path:
  """The folder `root`; a user error when it is missing (not mounted) or not a folder."""
  path = pathlib.Path(os.path.expanduser(root))
  if not root or not path.is_dir():
    raise errors.mark(FileNotFoundError(
        f'config.data.video_folder.root={root!r} is not a folder; expected {LAYOUT}'))
  return path


def find_videos(root: str, davis_resolution: str = '480p') -> list[Video]:
  """The videos under `root` in natural name order; raises a user error when there are none."""
  path = check_root(root)
  if _is_davis(path):
    frames = _davis_folder(path, 'JPEGImages', davis_resolution)
    masks = _davis_folder(path, 'Annotations', davis_resolution)
    if not frames.is_dir():
      raise errors.UserError(f'{path} looks like DAVIS (it has JPEGImages/) but has no '
                             f'JPEGImages/{davis_resolution}/; set '
                             'config.data.video_folder.davis_resolution to its subfolder')
    videos = [Video(d.name, str(d), str(masks / d.name) if (masks / d.name).is_dir() else None)
              for d in frames.iterdir() if d.is_dir() and not d.name.startswith('.')]
  else:
    videos = []
    for entry in path.iterdir():
      if entry.name.startswith('.') or entry.name == MASKS:
        continue
      suffix = entry.suffix.lower()
      if entry.is_dir() and video_files.frame_files(entry):
        name = entry.name
      elif entry.is_file() and suffix in video_files.VIDEO_SUFFIXES + ('.gif',):
        name = entry.stem
      else:
        continue
      mask_dir = path / MASKS / name
      videos.append(Video(name, str(entry), str(mask_dir) if mask_dir.is_dir() else None))
  if not videos:
    raise errors.UserError(f'video folder {path} holds no videos; expected {LAYOUT}')
  names = [v.name for v in videos]
  twice = sorted({n for n in names if names.count(n) > 1})
  if twice:
    raise errors.UserError(f'video folder {path}: two videos are named {twice[0]!r} (say, '
                           f'{twice[0]}.mp4 and {twice[0]}/); rename one')
  return sorted(videos, key=lambda v: video_files.natural_key(v.name))


# --------------------------------------------------------------------------- reading

def read_frames(video: Video) -> np.ndarray:
  """uint8 [T, H, W, 3]; a user error naming the video when it cannot be decoded."""
  try:
    frames, _ = video_files.read_video(video.source)
  except (ValueError, OSError) as e:
    raise errors.UserError(f'video {video.name!r} ({video.source}) cannot be read: '
                           f'{errors.message(e)}') from e
  return frames


def read_masks(video: Video, num_frames: int, height: int, width: int) -> np.ndarray:
  """Mask ids uint8 [T, H, W] (0 background, 255 ignore), checked against the frames."""
  files = [f for f in video_files.frame_files(pathlib.Path(video.masks))
           if f.suffix.lower() == '.png']
  if len(files) != num_frames:
    raise errors.UserError(f'video {video.name!r} has {num_frames} frames but {len(files)} '
                           f'mask PNGs in {video.masks}; give one mask per frame')
  masks = np.zeros((num_frames, height, width), np.uint8)
  for t, f in enumerate(files):
    with PIL.Image.open(f) as image:
      if image.mode not in ('P', 'L', 'I', 'I;16'):
        raise errors.UserError(f'mask {f} is a {image.mode} image; masks must be palette or '
                               'single-channel PNGs of integer ids')
      ids = np.asarray(image)
    if ids.shape != (height, width):
      raise errors.UserError(f'mask {f} is {ids.shape[1]}x{ids.shape[0]} but the frames of '
                             f'video {video.name!r} are {width}x{height}')
    if ids.max(initial=0) > IGNORE:
      raise errors.UserError(f'mask {f} has id {int(ids.max())} > {IGNORE}; ids are 0 '
                             f'(background), 1..254 (objects) and {IGNORE} (ignore)')
    masks[t] = ids
  return masks


def instance_channels(ids: np.ndarray) -> np.ndarray:
  """ids uint8 [T, H, W] -> masks uint8 [T, H, W, K] in {0, 1}, one channel per object id
  (ids other than 0 and 255, ascending); K = 1 all-zero channel when there is none."""
  objects = [i for i in np.unique(ids) if i not in (0, IGNORE)]
  if not objects:
    return np.zeros(ids.shape + (1,), np.uint8)
  return np.stack([ids == i for i in objects], axis=-1).astype(np.uint8)


def check(videos: list[Video], min_frames: int, on_bad_video: str) -> list[Checked]:
  """Decode every video (and its masks) once; bad videos are refused or skipped."""
  if on_bad_video not in BAD_VIDEO_CHOICES:
    raise errors.UserError(f'config.data.video_folder.on_bad_video={on_bad_video!r}; choose '
                           f'one of {BAD_VIDEO_CHOICES}')
  checked = []
  for video in videos:
    try:
      frames = read_frames(video)
      if len(frames) < min_frames:
        raise errors.UserError(f'video {video.name!r} ({video.source}) has {len(frames)} '
                               f'frames, fewer than one training clip '
                               f'(config.data.train_clip_len={min_frames})')
    except errors.UserError as e:
      if on_bad_video == 'refuse':
        raise errors.UserError(f'{e}; remove it, or pass '
                               '--config.data.video_folder.on_bad_video=skip') from e
      logging.warning('video_folder: skipping %s', e)
      continue
    num_frames, height, width = frames.shape[:3]
    if video.masks is not None:
      read_masks(video, num_frames, height, width)  # masks are never skipped: they are refused
    checked.append(Checked(video, num_frames, height, width))
  if not checked:
    raise errors.UserError('every video of the folder was skipped; nothing to train on')
  return checked


# --------------------------------------------------------------------------- splits

def split(checked: list[Checked], root: str, manifest: str, fraction: float,
          davis_resolution: str) -> tuple[list[Checked], list[Checked], str]:
  """(train, validation, convention): by the given manifest, DAVIS's ImageSets/2017 split
  files, or the last ceil(fraction * n) videos in name order (fraction 0: validation is
  every video, which is also trained on)."""
  by_name = {c.video.name: c for c in checked}
  sets = pathlib.Path(os.path.expanduser(root)) / 'ImageSets' / '2017'
  if manifest:
    with open(os.path.expanduser(manifest)) as f:
      given = json.load(f)
    names = (given.get('train', []), given.get('validation', []))
    convention = f'the manifest {manifest}'
  elif _is_davis(pathlib.Path(os.path.expanduser(root))) and (sets / 'train.txt').is_file():
    names = tuple([line.strip() for line in (sets / f'{s}.txt').read_text().splitlines()
                   if line.strip()] for s in ('train', 'val'))
    convention = f'DAVIS {sets}/train.txt and val.txt'
  else:
    ordered = [c.video.name for c in checked]
    if fraction <= 0:
      return checked, checked, 'validation = every video (validation_fraction 0)'
    count = math.ceil(fraction * len(ordered))
    if count >= len(ordered):
      raise errors.UserError(
          f'{len(ordered)} video(s) cannot be split with config.data.video_folder.'
          f'validation_fraction={fraction}; set it to 0 to evaluate on the training videos')
    names = (ordered[:-count], ordered[-count:])
    convention = f'the last {count} videos in name order held out (validation_fraction)'
  parts = []
  for part in names:
    missing = [n for n in part if n not in by_name]
    if missing:
      raise errors.UserError(f'{convention} names video {missing[0]!r}, which is not in {root} '
                             '(or was skipped)')
    parts.append([by_name[n] for n in part])
  if not parts[0] or not parts[1]:
    raise errors.UserError(f'{convention} leaves the train or validation split empty')
  return parts[0], parts[1], convention


# --------------------------------------------------------------------------- changes

def fingerprint(root: str) -> str:
  """A hash of every file's relative path, size and modification time under `root`."""
  path = pathlib.Path(os.path.expanduser(root))
  rows = []
  for folder, dirs, files in os.walk(path):
    dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
    for name in sorted(files):
      if not name.startswith('.'):
        stat = os.stat(os.path.join(folder, name))
        rows.append(f'{os.path.relpath(os.path.join(folder, name), path)}\t{stat.st_size}\t'
                    f'{stat.st_mtime_ns}')
  return hashlib.sha256('\n'.join(rows).encode()).hexdigest()
