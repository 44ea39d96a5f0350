"""Reading videos from disk: a video file, a GIF, one image or a folder of frames.

Shared by `slotcurri_jax.infer` (segment one video) and the `video_folder` dataset
(data/video_folder.py, train on a folder of videos). Video files are decoded by
imageio's FFMPEG plugin (the static ffmpeg binary of imageio-ffmpeg), GIFs and images by
Pillow. Frames come back as uint8 RGB [T, H, W, 3].
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import re
import warnings
from typing import Iterator

import imageio.v3 as iio
import numpy as np

VIDEO_SUFFIXES = ('.mp4', '.webm', '.mov', '.mkv', '.avi', '.m4v')
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg')


def natural_key(name: str) -> list:
  """Sort key of a file name with its digit runs as numbers: frame_2 before frame_10."""
  return [int(part) if part.isdigit() else part.lower() for part in re.split(r'(\d+)', name)]


def first_line(error: Exception) -> str:
  """'Type: first line of the message', for one-line errors that wrap another."""
  text = str(error).strip()
  return f'{type(error).__name__}: {text.splitlines()[0] if text else ""}'


def _to_rgb(frame: np.ndarray, source: str) -> np.ndarray:
  """[H, W, C] uint8 -> [H, W, 3]; opaque RGBA loses its alpha, anything else is an error."""
  channels = 1 if frame.ndim == 2 else frame.shape[-1]
  if frame.ndim == 3 and channels == 4 and np.all(frame[..., 3] == 255):
    frame = frame[..., :3]
  elif frame.ndim != 3 or channels != 3:
    raise ValueError(
        f'{source}: frames have {channels} channel(s) (shape {frame.shape}); the model takes RGB '
        'frames with 3 channels. Convert the input to RGB first (e.g. ffmpeg -i IN -pix_fmt '
        'rgb24 OUT.mp4, or save the images as RGB PNG/JPEG without transparency).')
  if frame.dtype != np.uint8:
    if np.issubdtype(frame.dtype, np.integer) and frame.max(initial=0) > 255:
      frame = (frame // 257).astype(np.uint8)  # 16-bit PNG
    else:
      frame = frame.astype(np.uint8)
  return frame


def frame_files(folder: pathlib.Path) -> list[pathlib.Path]:
  """The image files of a folder of frames, in natural name order (frame_2 before frame_10)."""
  return sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES),
                key=lambda p: natural_key(p.name))


def read_video(path: str | os.PathLike) -> tuple[np.ndarray, float | None]:
  """Decode a video file, a GIF, one image or a folder of frames.

  Returns:
    frames: uint8 [T, H, W, 3] (every frame of the input, as decoded).
    fps: the file's frame rate, or None when it has none (folders, images).

  Raises:
    FileNotFoundError, ValueError: as `iter_video`.
  """
  frames = np.stack(list(iter_video(path)))
  return frames, _fps(pathlib.Path(os.path.expanduser(str(path))))


def iter_video(path: str | os.PathLike) -> Iterator[np.ndarray]:
  """The frames of a video file, a GIF, one image or a folder of frames, one at a time
  (uint8 [H, W, 3] each), so that a long video is never held whole.

  Raises (when the bad frame or the end is reached):
    FileNotFoundError: the path does not exist.
    ValueError: an empty file or folder, an undecodable file or frame, zero frames, non-RGB
      frames, or frames of different sizes. Messages name the file.
  """
  path = pathlib.Path(os.path.expanduser(str(path)))
  if not path.exists():
    raise FileNotFoundError(f'video {path} does not exist')
  if path.is_dir():
    yield from _iter_folder(path)
    return
  if path.stat().st_size == 0:
    raise ValueError(f'video {path} is empty (0 bytes)')
  decoded, first, count = _iter_file(path), None, 0
  while True:
    try:
      frame = next(decoded, None)
    except Exception as e:  # imageio/ffmpeg/Pillow raise OSError, RuntimeError, ValueError, ...
      raise ValueError(f'cannot decode video {path}: it is corrupt, not a video, or holds no '
                       f'video frames ({first_line(e)}). Supported: {", ".join(VIDEO_SUFFIXES)}, '
                       '.gif, one image, or a folder of frames') from e
    if frame is None:
      break
    frame = _to_rgb(frame, str(path))
    first = frame.shape if first is None else first
    if frame.shape != first:
      raise ValueError(f'video {path}: frame {count} is {frame.shape[1]}x{frame.shape[0]} but '
                       f'frame 0 is {first[1]}x{first[0]}')
    count += 1
    yield frame
  if count == 0:
    raise ValueError(f'video {path} has no frames')


def _iter_folder(path: pathlib.Path) -> Iterator[np.ndarray]:
  """The frames of a folder of images, in natural name order, checked to share one size."""
  files = frame_files(path)
  if not files:
    raise ValueError(f'folder {path} holds no frames: expected {"/".join(IMAGE_SUFFIXES)} '
                     'files (sorted by name)')
  first = None
  for f in files:
    try:
      image = iio.imread(f)
    except Exception as e:  # the image plugins raise many types
      raise ValueError(f'cannot decode frame {f}: {first_line(e)}') from e
    frame = _to_rgb(np.asarray(image), str(f))
    first = frame.shape if first is None else first
    if frame.shape != first:
      raise ValueError(f'frame {f} is {frame.shape[1]}x{frame.shape[0]} but {files[0].name} is '
                       f'{first[1]}x{first[0]}; all frames of a folder must have one size')
    yield frame


def _iter_file(path: pathlib.Path) -> Iterator[np.ndarray]:
  """A file's decoded frames as they come ([H, W, C] or [H, W]), not yet checked."""
  suffix = path.suffix.lower()
  if suffix == '.gif':  # GIFs are small: decoded whole
    decoded = np.asarray(iio.imread(path, index=None))
    yield from (decoded[..., None] if decoded.ndim == 3 else decoded)  # grayscale: [T, H, W]
  elif suffix in IMAGE_SUFFIXES:
    yield np.asarray(iio.imread(path))
  else:  # mp4, webm, ... and anything else ffmpeg may know
    frames = iio.imiter(path, plugin='FFMPEG')
    with _forking_ffmpeg():
      first = next(frames, None)
    if first is not None:
      yield np.asarray(first)
      yield from (np.asarray(f) for f in frames)


@contextlib.contextmanager
def _forking_ffmpeg():
  """jax warns on every fork; ffmpeg's fork is followed by exec at once, which is safe."""
  with warnings.catch_warnings():
    warnings.filterwarnings('ignore', 'os.fork', RuntimeWarning)
    yield


def _fps(path: pathlib.Path) -> float | None:
  """A video file's or GIF's frame rate; None for folders, images and files without one."""
  suffix = path.suffix.lower()
  try:
    if path.is_dir() or suffix in IMAGE_SUFFIXES:
      return None
    if suffix == '.gif':
      duration_ms = iio.immeta(path, index=0).get('duration') or 0
      fps = 1000.0 / duration_ms if duration_ms > 0 else None
    else:
      with _forking_ffmpeg():
        fps = iio.immeta(path, plugin='FFMPEG').get('fps')
  except Exception:  # the frames decoded; a missing rate is not an error
    return None
  return float(fps) if fps and np.isfinite(fps) and fps > 0 else None
