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
from typing import Iterator

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
  """A video that decoded: its frame count, frame size, whether it has masks and how many
  object ids they hold."""
  video: Video
  num_frames: int
  height: int
  width: int
  num_objects: int = 0

  def row(self) -> dict:
    return {'name': self.video.name, 'num_frames': self.num_frames, 'height': self.height,
            'width': self.width, 'has_masks': self.video.masks is not None,
            'num_objects': self.num_objects}


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

def iter_frames(video: Video) -> Iterator[np.ndarray]:
  """The frames uint8 [H, W, 3], one at a time; a user error naming the video when one
  cannot be decoded."""
  try:
    yield from video_files.iter_video(video.source)
  except (ValueError, OSError) as e:
    raise errors.UserError(f'video {video.name!r} ({video.source}) cannot be read: '
                           f'{errors.message(e)}') from e


def iter_masks(video: Video, num_frames: int, height: int, width: int) -> Iterator[np.ndarray]:
  """Mask ids uint8 [H, W] per frame (0 background, 255 ignore), checked against the frames."""
  files = [f for f in video_files.frame_files(pathlib.Path(video.masks))
           if f.suffix.lower() == '.png']
  if len(files) != num_frames:
    raise errors.UserError(f'video {video.name!r} has {num_frames} frames but {len(files)} '
                           f'mask PNGs in {video.masks}; give one mask per frame')
  for f in files:
    try:
      with PIL.Image.open(f) as image:
        mode, ids = image.mode, np.asarray(image)
    except (OSError, ValueError) as e:  # PIL.UnidentifiedImageError is an OSError
      raise errors.UserError(f'mask {f} cannot be read ({video_files.first_line(e)}); '
                             'replace it with a PNG of integer ids') from e
    if mode not in ('P', 'L', 'I', 'I;16', '1'):
      raise errors.UserError(f'mask {f} is a {mode} image; masks must be palette or '
                             'single-channel PNGs of integer ids')
    if ids.shape != (height, width):
      raise errors.UserError(f'mask {f} is {ids.shape[1]}x{ids.shape[0]} but the frames of '
                             f'video {video.name!r} are {width}x{height}')
    if ids.max(initial=0) > IGNORE:
      raise errors.UserError(f'mask {f} has id {int(ids.max())} > {IGNORE}; ids are 0 '
                             f'(background), 1..254 (objects) and {IGNORE} (ignore)')
    yield ids.astype(np.uint8)  # a 1-bit PNG ('1') reads as bool: ids 0 and 1


def object_ids(ids: np.ndarray) -> list[int]:
  """The object ids of mask ids [..., H, W] (other than 0 and 255), ascending."""
  return [int(i) for i in np.unique(ids) if i not in (0, IGNORE)]


def instance_channels(ids: np.ndarray) -> np.ndarray:
  """ids uint8 [T, H, W] -> masks uint8 [T, H, W, K] in {0, 1}, one channel per object id
  (ids other than 0 and 255, ascending); K = 1 all-zero channel when there is none."""
  objects = object_ids(ids)
  if not objects:
    return np.zeros(ids.shape + (1,), np.uint8)
  return np.stack([ids == i for i in objects], axis=-1).astype(np.uint8)


def _probe(video: Video, min_frames: int) -> tuple[int, int, int]:
  """(frames, height, width) of a video decoded frame by frame (none kept)."""
  num_frames, height, width = 0, 0, 0
  for frame in iter_frames(video):
    num_frames, (height, width) = num_frames + 1, frame.shape[:2]
  if num_frames < min_frames:
    raise errors.UserError(f'video {video.name!r} ({video.source}) has {num_frames} frames, '
                           f'fewer than one training clip (config.data.train_clip_len={min_frames})')
  return num_frames, height, width


def _check_masks(video: Video, num_frames: int, height: int, width: int) -> int:
  """Every mask of a video read and checked; returns how many object ids they hold."""
  ids, void = set(), False
  for frame in iter_masks(video, num_frames, height, width):
    ids.update(object_ids(frame))
    void = void or bool(np.any(frame == IGNORE))
  if not ids and void:
    logging.warning('video_folder: the masks of video %r hold only 0 and %d; %d means '
                    '"ignore", so the video has no object to score (save object pixels as 1..254)',
                    video.name, IGNORE, IGNORE)
  return len(ids)


def check_objects(validation: list[Checked], max_objects: int):
  """Refuses an evaluated video whose masks hold more object ids than the evaluation takes."""
  for c in validation:
    if c.num_objects > max_objects:
      raise errors.UserError(
          f'the masks of video {c.video.name!r} ({c.video.masks}) hold {c.num_objects} object '
          f'ids, more than config.data.max_instances={max_objects}; pass '
          f'--config.data.max_instances={c.num_objects} (or merge ids)')


def check(videos: list[Video], min_frames: int, on_bad_video: str) -> list[Checked]:
  """Decode every video (and its masks) once, frame by frame; bad videos are refused or
  skipped; masks are checked (never skipped)."""
  if on_bad_video not in BAD_VIDEO_CHOICES:
    raise errors.UserError(f'config.data.video_folder.on_bad_video={on_bad_video!r}; choose '
                           f'one of {BAD_VIDEO_CHOICES}')
  checked = []
  for video in videos:
    try:
      num_frames, height, width = _probe(video, min_frames)
    except errors.UserError as e:
      if on_bad_video == 'refuse':
        raise errors.UserError(f'{e}; remove it, or pass '
                               '--config.data.video_folder.on_bad_video=skip') from e
      logging.warning('video_folder: skipping %s', e)
      continue
    objects = 0 if video.masks is None else _check_masks(video, num_frames, height, width)
    checked.append(Checked(video, num_frames, height, width, objects))
  if not checked:
    raise errors.UserError('every video of the folder was skipped; nothing to train on')
  return checked


# --------------------------------------------------------------------------- splits

def _manifest_bytes(manifest: str) -> bytes:
  try:
    with open(os.path.expanduser(manifest), 'rb') as f:
      return f.read()
  except OSError as e:
    raise errors.UserError(f'config.data.video_folder.manifest={manifest!r} cannot be read: '
                           f'{video_files.first_line(e)}') from e


def _manifest_names(manifest: str) -> tuple[list[str], list[str]]:
  """(train, validation) video names of a manifest JSON: {"train": [...], "validation": [...]}
  of names, or of rows with a "name" (the manifest.json a build writes)."""
  try:
    given = json.loads(_manifest_bytes(manifest))
  except ValueError:
    given = None
  parts = ((given.get('train'), given.get('validation')) if isinstance(given, dict)
           else (None, None))
  names = tuple([row.get('name') if isinstance(row, dict) else row for row in part]
                if isinstance(part, list) else None for part in parts)
  if any(part is None or not all(isinstance(n, str) for n in part) for part in names):
    raise errors.UserError(f'config.data.video_folder.manifest={manifest!r} is not a split: '
                           'expected JSON {"train": [video names], "validation": [video names]}')
  return names


def split(checked: list[Checked], root: str, manifest: str, fraction: float,
          skipped: frozenset[str] = frozenset()) -> tuple[list[Checked], list[Checked], str]:
  """(train, validation, convention): by the given manifest, DAVIS's ImageSets/2017 split
  files, or the last ceil(fraction * n) videos in name order (fraction 0: validation is
  every video, which is also trained on). Names of `skipped` videos are left out, warned."""
  by_name = {c.video.name: c for c in checked}
  sets = pathlib.Path(os.path.expanduser(root)) / 'ImageSets' / '2017'
  if manifest:
    names = _manifest_names(manifest)
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
    missing = [n for n in part if n not in by_name and n not in skipped]
    if missing:
      raise errors.UserError(f'{convention} names video {missing[0]!r}, which is not in {root}')
    left_out = [n for n in part if n in skipped]
    if left_out:
      logging.warning('video_folder: %s names skipped video(s) %s; left out', convention,
                      ', '.join(left_out))
    parts.append([by_name[n] for n in part if n in by_name])
  if not parts[0] or not parts[1]:
    raise errors.UserError(f'{convention} leaves the train or validation split empty')
  return parts[0], parts[1], convention


# --------------------------------------------------------------------------- changes

def fingerprint(videos: list[Video], root: str, manifest: str = '') -> str:
  """A hash of the path, size and modification time of every file the scan reads (video
  files, frames, masks, DAVIS's split files; links followed) and of the given manifest's
  contents: other files under `root` (say, a run's workdir) do not count."""
  path = pathlib.Path(os.path.expanduser(root))
  files = sorted((path / 'ImageSets' / '2017').glob('*.txt'))
  for video in videos:
    source = pathlib.Path(video.source)
    files += video_files.frame_files(source) if source.is_dir() else [source]
    if video.masks is not None:
      files += video_files.frame_files(pathlib.Path(video.masks))
  rows = [f'{os.path.relpath(f, path)}\t{st.st_size}\t{st.st_mtime_ns}'
          for f, st in ((f, f.stat()) for f in files)]
  if manifest:
    rows.append(f'manifest\t{hashlib.sha256(_manifest_bytes(manifest)).hexdigest()}')
  return hashlib.sha256('\n'.join(rows).encode()).hexdigest()
