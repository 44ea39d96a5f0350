"""Pictures of slot segmentations: palettes, overlays, clip figures, GIF/MP4/PNG, curves.

numpy + imageio + matplotlib only (no jax), so the same code draws TensorBoard
image summaries (uint8 arrays), evaluation figures and the outputs of
`slotcurri_jax.infer`. Slot (or instance) id i is always drawn in `palette(..)[i]`,
so a slot keeps its colour across frames, figures and videos.
"""
from __future__ import annotations

import colorsys
import os
import pathlib
import warnings
from typing import Mapping, Sequence

import imageio.v3 as iio
import imageio_ffmpeg
from matplotlib import colormaps
from matplotlib import figure  # no pyplot: no GUI backend, no global state
import numpy as np

# 20 colours of high mutual contrast (Trubetskoy's list, most distinct first);
# ids beyond them get golden-ratio hues.
_BASE_COLOURS = (
    0xE6194B, 0x3CB44B, 0xFFE119, 0x4363D8, 0xF58231, 0x911EB4, 0x42D4F4, 0xF032E6,
    0xBFEF45, 0xFABED4, 0x469990, 0xDCBEFF, 0x9A6324, 0xFFFAC8, 0x800000, 0xAAFFC3,
    0x808000, 0xFFD8B1, 0x000075, 0xA9A9A9,
)
_GAP = 2  # pixels between tiles of a figure
_GAP_VALUE = 255  # white gaps
_SWATCH = 6  # width of the colour swatch that starts each per-slot row


def palette(num_slots: int) -> np.ndarray:
  """Distinct colours: uint8 [num_slots, 3]; the first ones are identical for every size."""
  if num_slots < 0:
    raise ValueError(f'num_slots={num_slots} must be >= 0')
  colours = [((c >> 16) & 255, (c >> 8) & 255, c & 255) for c in _BASE_COLOURS[:num_slots]]
  golden = 0.618033988749895
  for i in range(num_slots - len(colours)):
    # Alternate saturation/value so that neighbouring extra hues also differ in brightness.
    r, g, b = colorsys.hsv_to_rgb((0.1 + i * golden) % 1.0, 0.65 + 0.35 * (i % 2),
                                  0.95 - 0.3 * ((i // 2) % 2))
    colours.append((round(r * 255), round(g * 255), round(b * 255)))
  return np.asarray(colours, np.uint8).reshape(num_slots, 3)


def ids_to_rgb(ids: np.ndarray, num_colours: int | None = None) -> np.ndarray:
  """ids: int [...] >= 0 -> uint8 [..., 3] with id i in palette colour i.

  num_colours: palette size; default max(ids) + 1. Pass it (e.g. max_slots) to
  keep colours fixed across clips.
  """
  ids = np.asarray(ids)
  if ids.size and ids.min() < 0:
    raise ValueError(f'ids must be >= 0, got min {ids.min()}')
  needed = int(ids.max()) + 1 if ids.size else 0
  num_colours = needed if num_colours is None else num_colours
  if needed > num_colours:
    raise ValueError(f'id {needed - 1} needs a palette of {needed} colours, got {num_colours}')
  return palette(max(num_colours, 1))[ids]


def overlay(frames: np.ndarray, ids: np.ndarray, alpha: float = 0.5,
            background: int | None = None, num_colours: int | None = None) -> np.ndarray:
  """Blend id colours over frames.

  Args:
    frames: uint8 [..., H, W, 3] (e.g. [T, H, W, 3]).
    ids: int [..., H, W] of the same leading shape.
    alpha: weight of the id colour (0: the frame, 1: the colours).
    background: an id left uncoloured (e.g. 0 for ground-truth background), or None.
    num_colours: palette size, see `ids_to_rgb`.

  Returns:
    uint8 [..., H, W, 3]: round((1 - alpha) * frame + alpha * palette[id]).
  """
  frames, ids = np.asarray(frames), np.asarray(ids)
  if frames.dtype != np.uint8 or frames.shape[-1:] != (3,):
    raise ValueError(f'frames must be uint8 [..., H, W, 3], got {frames.dtype} {frames.shape}')
  if ids.shape != frames.shape[:-1]:
    raise ValueError(f'ids {ids.shape} must match frames {frames.shape[:-1]}')
  colours = ids_to_rgb(ids, num_colours).astype(np.float32)
  blended = (1.0 - alpha) * frames.astype(np.float32) + alpha * colours
  if background is not None:
    blended = np.where((ids == background)[..., None], frames.astype(np.float32), blended)
  return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def _heatmap(values: np.ndarray, vmax: float | None = None, cmap: str = 'viridis') -> np.ndarray:
  """values: float [...] >= 0 -> uint8 [..., 3], 0 .. vmax (default the max) mapped by `cmap`."""
  values = np.nan_to_num(np.asarray(values, np.float32), nan=0.0, posinf=0.0, neginf=0.0)
  vmax = float(values.max()) if vmax is None else vmax
  scaled = np.clip(values / vmax, 0.0, 1.0) if vmax > 0 else np.zeros_like(values)
  return (colormaps[cmap](scaled)[..., :3] * 255.0 + 0.5).astype(np.uint8)


def _through_mask(frames: np.ndarray, masks: np.ndarray) -> np.ndarray:
  """frames uint8 [..., H, W, 3], masks float [..., H, W] in [0, 1] -> the frames, black
  where the mask is 0."""
  masks = np.clip(np.asarray(masks, np.float32), 0.0, 1.0)
  return (frames.astype(np.float32) * masks[..., None] + 0.5).astype(np.uint8)


def slot_tiles(frame: np.ndarray, masks: np.ndarray, bar: int = 4) -> np.ndarray:
  """One frame's slots side by side: uint8 [bar + H, K * (W + gap) - gap, 3].

  Tile k is the frame seen through slot k's soft mask (black where it is 0),
  under a bar of palette colour k.

  Args:
    frame: uint8 [H, W, 3].
    masks: float [K, H, W] soft masks in [0, 1] (upsampled to the frame size).
    bar: height of the colour bar in pixels.
  """
  frame = np.asarray(frame)
  masks = np.asarray(masks)
  if masks.ndim != 3 or masks.shape[1:] != frame.shape[:2]:
    raise ValueError(f'masks {masks.shape} must be [K, H, W] with H, W = {frame.shape[:2]}')
  k, h, w = masks.shape
  colours = palette(k)
  canvas = np.full((bar + h, k * (w + _GAP) - _GAP, 3), _GAP_VALUE, np.uint8)
  seen = _through_mask(np.broadcast_to(frame, (k, h, w, 3)), masks)
  for i in range(k):
    x = i * (w + _GAP)
    canvas[:bar, x:x + w] = colours[i]
    canvas[bar:, x:x + w] = seen[i]
  return canvas


def _shrink(image: np.ndarray, factor: int) -> np.ndarray:
  """Block-average [H, W, 3] uint8 by an integer factor (crops the remainder)."""
  if factor <= 1:
    return image
  h, w = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
  blocks = image[:h, :w].astype(np.float32).reshape(h // factor, factor, w // factor, factor, 3)
  return (blocks.mean(axis=(1, 3)) + 0.5).astype(np.uint8)


def _frame_indices(t: int, max_frames: int | None) -> np.ndarray:
  if max_frames is None or t <= max_frames:
    return np.arange(t)
  return np.unique(np.round(np.linspace(0, t - 1, max_frames)).astype(int))


def clip_figure(frames: np.ndarray, pred_ids: np.ndarray, true_ids: np.ndarray | None = None,
                slot_masks: np.ndarray | None = None, error_map: np.ndarray | None = None, *,
                max_frames: int | None = 8, tile_size: int | None = 128,
                num_colours: int | None = None) -> np.ndarray:
  """One clip as a grid of tiles: columns are frames, rows (top to bottom) are

  1. the frames;
  2. the predicted segmentation over the frames (one colour per slot);
  3. the ground truth over the frames (background 0 uncoloured), if given;
  4. one row per slot: the frame seen through that slot's soft mask (black where
     the mask is 0), headed by a swatch of the slot's colour, if given;
  5. the per-patch reconstruction error (viridis, 0 .. the clip's max), if given.

  Args:
    frames: uint8 [T, H, W, 3].
    pred_ids: int [T, H, W] predicted slot ids.
    true_ids: int [T, H, W] ground-truth instance ids (0 = background) or None.
    slot_masks: float [T, K, H, W] soft masks in [0, 1] or None.
    error_map: float [T, H, W] reconstruction error or None.
    max_frames: at most this many evenly spaced frames are shown (None: all).
    tile_size: tiles larger than this are shrunk by an integer factor (None: never).
    num_colours: palette size for the ids (default: K of slot_masks, else the largest id + 1).

  Returns:
    uint8 [H', W', 3], usable as a TensorBoard image summary or saved with `save_png`.
  """
  frames = np.asarray(frames)
  t, h, w = frames.shape[:3]
  if frames.dtype != np.uint8 or frames.shape[3:] != (3,):
    raise ValueError(f'frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}')
  for name, arr in (('pred_ids', pred_ids), ('true_ids', true_ids), ('error_map', error_map)):
    if arr is not None and np.shape(arr) != (t, h, w):
      raise ValueError(f'{name} has shape {np.shape(arr)}; expected [T, H, W] = {(t, h, w)}')
  if slot_masks is not None:
    slot_masks = np.asarray(slot_masks, np.float32)
    if slot_masks.ndim != 4 or slot_masks.shape[0] != t or slot_masks.shape[2:] != (h, w):
      raise ValueError(f'slot_masks has shape {slot_masks.shape}; expected [T, K, H, W] with '
                       f'T={t}, H={h}, W={w} (upsample the masks to the frame size first)')
  keep = _frame_indices(t, max_frames)
  if num_colours is None and slot_masks is not None:
    num_colours = max(slot_masks.shape[1], int(np.max(pred_ids)) + 1)
  shown = frames[keep]

  rows: list[tuple[np.ndarray | None, np.ndarray]] = []  # (swatch colour or None, [T', H, W, 3])
  rows.append((None, shown))
  rows.append((None, overlay(shown, np.asarray(pred_ids)[keep], num_colours=num_colours)))
  if true_ids is not None:
    rows.append((None, overlay(shown, np.asarray(true_ids)[keep], background=0)))
  if slot_masks is not None:
    colours = palette(max(num_colours or 0, slot_masks.shape[1]))
    for k in range(slot_masks.shape[1]):
      rows.append((colours[k], _through_mask(shown, slot_masks[keep, k])))
  if error_map is not None:
    rows.append((None, _heatmap(np.asarray(error_map)[keep])))

  factor = 1 if tile_size is None else max(1, -(-max(h, w) // tile_size))
  th, tw = h // factor, w // factor
  has_swatch = slot_masks is not None
  left = _SWATCH + _GAP if has_swatch else 0
  width = left + len(keep) * (tw + _GAP) - _GAP
  height = len(rows) * (th + _GAP) - _GAP
  canvas = np.full((height, width, 3), _GAP_VALUE, np.uint8)
  for r, (swatch, tiles) in enumerate(rows):
    y = r * (th + _GAP)
    if swatch is not None:
      canvas[y:y + th, :_SWATCH] = swatch
    for c, tile in enumerate(tiles):
      x = left + c * (tw + _GAP)
      canvas[y:y + th, x:x + tw] = _shrink(tile, factor)[:th, :tw]
  return canvas


# --------------------------------------------------------------------------- files

def _as_uint8_video(frames: np.ndarray) -> np.ndarray:
  frames = np.asarray(frames)
  if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or not len(frames):
    raise ValueError(f'frames must be uint8 [T>0, H, W, 3], got {frames.dtype} {frames.shape}')
  return frames


def save_png(path: str | os.PathLike, image: np.ndarray) -> None:
  """Write uint8 [H, W, 3] (or [H, W]) as PNG, creating the folder."""
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise ValueError(f'image must be uint8, got {image.dtype}')
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  iio.imwrite(str(path), image, extension='.png')


def save_gif(path: str | os.PathLike, frames: np.ndarray, fps: float = 10.0) -> None:
  """Write uint8 [T, H, W, 3] as a looping GIF at `fps` frames per second."""
  frames = _as_uint8_video(frames)
  if fps <= 0:
    raise ValueError(f'fps={fps} must be > 0')
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  # GIF delays are in hundredths of a second; Pillow takes milliseconds.
  iio.imwrite(str(path), frames, extension='.gif', duration=max(20, round(1000.0 / fps)), loop=0)


def save_video(path: str | os.PathLike, frames: np.ndarray, fps: float = 10.0) -> str:
  """Write uint8 [T, H, W, 3] as an H.264 mp4 (imageio-ffmpeg).

  Odd sizes are padded with black to even ones (yuv420p needs them). Without a
  usable ffmpeg, warns and writes a GIF next to `path` instead.

  Returns:
    The path actually written (`path`, or the same name with `.gif`).
  """
  frames = _as_uint8_video(frames)
  if fps <= 0:
    raise ValueError(f'fps={fps} must be > 0')
  path = pathlib.Path(path)
  try:
    imageio_ffmpeg.get_ffmpeg_exe()
  except RuntimeError as e:  # no ffmpeg binary on this platform
    gif = path.with_suffix('.gif')
    warnings.warn(f'ffmpeg is unavailable ({e}); writing {gif} instead of {path}')
    save_gif(gif, frames, fps)
    return str(gif)
  t, h, w, _ = frames.shape
  padded = np.zeros((t, h + h % 2, w + w % 2, 3), np.uint8)
  padded[:, :h, :w] = frames
  path.parent.mkdir(parents=True, exist_ok=True)
  writer = imageio_ffmpeg.write_frames(
      str(path), (padded.shape[2], padded.shape[1]), fps=fps, codec='libx264',
      pix_fmt_out='yuv420p', macro_block_size=1, quality=8, ffmpeg_log_level='error')
  with warnings.catch_warnings():
    # jax (if imported) warns on every fork; ffmpeg's fork is followed by exec, which is safe.
    warnings.filterwarnings('ignore', 'os.fork', RuntimeWarning)
    writer.send(None)  # starts the ffmpeg process
  for frame in padded:
    writer.send(np.ascontiguousarray(frame))
  writer.close()
  return str(path)


def training_curves(history: Mapping[str, Sequence[tuple[int, float]]],
                    path: str | os.PathLike) -> None:
  """Plot every logged series over training steps into one PNG, one panel per series.

  history: name -> [(step, value), ...], e.g. loss terms and the active slot
  count (drawn as a step function when its name mentions slots).
  """
  names = sorted(k for k, v in history.items() if len(v))
  if not names:
    raise ValueError('training_curves got an empty history: nothing was logged')
  cols = min(3, len(names))
  rows = -(-len(names) // cols)
  fig = figure.Figure(figsize=(4.2 * cols, 3.0 * rows))
  axes = fig.subplots(rows, cols, squeeze=False)
  for ax in axes.ravel()[len(names):]:
    ax.axis('off')
  for ax, name in zip(axes.ravel(), names):
    steps, values = zip(*sorted(history[name]))
    values = np.asarray(values, np.float64)
    if 'slot' in name:
      ax.step(steps, values, where='post', color='C1')
    else:
      ax.plot(steps, values, color='C0', linewidth=1.2)
      positive = values[np.isfinite(values)]
      if name.startswith('loss') and positive.size and positive.min() > 0 and (
          positive.max() / positive.min() > 100):
        ax.set_yscale('log')  # early losses dwarf the rest otherwise
    ax.set_title(name, fontsize=10)
    ax.set_xlabel('step')
    ax.grid(alpha=0.3)
  fig.tight_layout()
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(str(path), dpi=100)
