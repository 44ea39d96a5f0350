r"""Segment your own video with a trained model: overlay video, per-slot masks, slots.

  python -m slotcurri_jax.infer --config=configs/demo.py --checkpoint=/tmp/slotcurri_demo \
      --video=clip.mp4 --output_dir=/tmp/clip_slots [--chunk_len=24] [--rollout=forward] \
      [--overlay_format=gif]

Input: an .mp4 / .webm / .mov / .mkv / .avi video (imageio-ffmpeg), a .gif, one
.png / .jpg image, or a folder of .png / .jpg frames (natural name order:
frame_2 before frame_10). Frames must be RGB (an opaque alpha channel is dropped).

Preprocessing, per frame: centre crop to a square of the short side (the same as
a short-side resize followed by a centre crop), resize to config.data.resolution,
clamp to [0, 1], ImageNet normalisation. Upsampling uses PyTorch's bicubic
kernel without antialiasing (jax.image 'cubic-pytorch'), which is what training
applied to MOVi frames (docs/method.md §11.2); downsampling a larger video uses Keys'
cubic with antialiasing, since a plain bicubic would alias.

Long videos run in chunks of --chunk_len frames; the slots are carried across
chunks (the next chunk starts from Pred(S) of the previous chunk's last frame),
so a forward rollout in chunks equals one pass over the whole video. With
--rollout=cyclic the backward pass of docs/method.md §8 runs within each chunk. All
config.model.max_slots slots take part (quirk 7, as in evaluation).

Outputs in --output_dir:
  overlay.mp4               the frames with one colour per slot (overlay.gif with
                            --overlay_format=gif, or when ffmpeg is missing)
  summary.png               up to 8 frames: frames, segmentation, each slot's mask, error
  slot_masks/frame_NNNNN.png  one tiled PNG per frame: a tile per slot showing the frame
                            through that slot's soft mask, under a bar of the slot's colour
  masks_and_slots.npz       masks uint8 [T, H, W] slot ids at the input video's resolution
                            (OUTSIDE = 255 left and right of / above and below the centre
                            square the model saw); masks_model uint8 [T, R, R] at the model's
                            resolution with --model_resolution_masks; soft_masks float16
                            [T, K, h, w] decoder masks; slots float32 [T, K, D]; active_mask
                            bool [K]; crop int32 [top, left, side] of the centre square; fps

GIF and mp4 of the same frames give the model different pixels: a GIF holds at most 256
colours per frame (palette quantisation, often dithered) and frame durations in 10 ms
steps, while mp4 (H.264, yuv420p) subsamples colour 2x2 and compresses lossily. The
masks of the two can therefore differ; feed the original frames (a folder of PNGs) when
the comparison matters.
"""
from __future__ import annotations

import functools
import json
import os
import pathlib
from typing import Any

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np
from tqdm import tqdm

from slotcurri_jax import checkpoint as checkpoint_lib
from slotcurri_jax import cli
from slotcurri_jax import compat
from slotcurri_jax import errors
from slotcurri_jax import metrics as metrics_lib
from slotcurri_jax import params as params_lib
from slotcurri_jax import predict as predict_lib
from slotcurri_jax import visualize
from slotcurri_jax.data import device_preprocess
from slotcurri_jax.data import video_files
from slotcurri_jax.models import encoders
from slotcurri_jax.models import video_model

IMAGENET_MEAN, IMAGENET_STD = device_preprocess.IMAGENET_MEAN, device_preprocess.IMAGENET_STD
DEFAULT_FPS = 10.0  # for frame folders, which carry no rate
SUMMARY_FRAMES = 8
OUTSIDE = 255  # input-resolution mask value of pixels outside the centre square
read_video = video_files.read_video  # the reader that datasets/video_folder.py shares


def check_frame_size(frames: np.ndarray, config, source: str = 'input') -> None:
  """Raise unless frames [T, H, W, 3] can be resized to the model: each side >= one patch."""
  patch = encoders.encoder_spec(config).patch_size
  h, w = frames.shape[1:3]
  if min(h, w) < patch:
    raise ValueError(f'{source}: frames are {w}x{h} pixels, smaller than the model patch size '
                     f'{patch}; the model needs frames of at least {patch}x{patch} (ideally '
                     f'{config.data.resolution}x{config.data.resolution}).')


def crop_square(frames: np.ndarray) -> np.ndarray:
  """Centre crop [T, H, W, C] to [T, S, S, C] with S = min(H, W)."""
  h, w = frames.shape[1:3]
  side = min(h, w)
  top, left = (h - side) // 2, (w - side) // 2
  return frames[:, top:top + side, left:left + side]


def preprocess(frames: jax.Array, resolution: int) -> tuple[jax.Array, jax.Array]:
  """Square uint8 frames [T, S, S, 3] -> (model input float32 [T, R, R, 3] ImageNet-normalised,
  display frames uint8 [T, R, R, 3]) with R = resolution (see the module docstring)."""
  t, side = frames.shape[:2]
  x = frames.astype(jnp.float32) / 255.0
  if side != resolution:
    # cubic-pytorch is only exact without antialiasing; jax switches to Keys' cubic with it.
    method = 'cubic-pytorch' if resolution > side else 'cubic'
    x = jax.image.resize(x, (t, resolution, resolution, 3), method=method,
                         antialias=resolution < side)
  x = jnp.clip(x, 0.0, 1.0)  # bicubic overshoots; training clamps too
  display = jnp.round(x * 255.0).astype(jnp.uint8)
  video = (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)
  return video, display


# --------------------------------------------------------------------------- model

@functools.partial(jax.jit, static_argnames=('predictor',))
def _run_chunk(params, raw, active_mask, length, initial_state, *, predictor):
  """One chunk: raw uint8 [L, S, S, 3], active_mask [K], length int32 (real frames, the
  rest is padding), initial_state [1, K, D] or None -> (per-frame outputs, carry [1, K, D]).

  The frames are resized and normalised on device, then `predictor.predict` (the
  prediction evaluation uses) runs; the carry is Pred(S) of the last real frame.
  """
  video, display = preprocess(raw, predictor.resolution)
  out = predictor.predict(params, video[None], active_mask, length[None], initial_state)
  return {'frames': display, 'ids': out['ids'][0], 'masks': out['masks'][0],
          'slots': out['slots'][0], 'error': out['error'][0]}, out['carry']


def segment_video(model, params: Any, frames: np.ndarray, config, chunk_len: int = 24,
                  rollout: str = 'forward', active_mask: np.ndarray | None = None,
                  progress: bool = False) -> dict[str, np.ndarray]:
  """Run the model over a whole video in chunks that carry the slots.

  Args:
    model: a VideoSlotModel (`video_model.build_model(config)`).
    params: its params.
    frames: uint8 [T, H, W, 3] RGB frames of any size (centre-cropped and resized here).
    config: the config the model was built from (data.resolution is read).
    chunk_len: frames per model call; the last chunk is padded by repeating its last
      frame (one compiled shape), and the padding never reaches the real frames.
    rollout: 'forward' or 'cyclic' (cyclic within each chunk).
    active_mask: bool [max_slots]; default all slots.
    progress: show a tqdm bar over chunks.

  Returns (host numpy; R = data.resolution, K = max_slots, h*w = the patch grid):
    frames uint8 [T, R, R, 3] the preprocessed frames as seen by the model;
    ids int32 [T, R, R] slot per pixel (bilinear upsampling, then argmax over active slots);
    masks float32 [T, K, h, w] decoder alpha masks; slots float32 [T, K, D];
    error float32 [T, h, w] per-patch reconstruction error; active_mask bool [K].
  """
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
    raise ValueError(f'frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}')
  if len(frames) == 0:
    raise ValueError('frames hold no frame (T = 0)')
  if chunk_len < 1:
    raise ValueError(f'chunk_len={chunk_len} must be >= 1')
  if rollout not in ('forward', 'cyclic'):
    raise ValueError(f"rollout={rollout!r}; use 'forward' or 'cyclic'")
  check_frame_size(frames, config)
  if active_mask is None:
    active_mask = np.ones((config.model.max_slots,), bool)
  active = jnp.asarray(active_mask, bool)
  predictor = _predictor(model, rollout, config.data.resolution)
  input_hw = frames.shape[1:3]
  frames = crop_square(frames)
  side = frames.shape[1]
  total = len(frames)
  state = None
  pieces: list[dict] = []
  starts = range(0, total, chunk_len)
  for start in tqdm(starts, total=len(starts), disable=not progress, desc='chunks', unit='chunk'):
    chunk = frames[start:start + chunk_len]
    length = len(chunk)
    if length < chunk_len and start > 0:  # keep the compiled shape of the earlier chunks
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], chunk_len - length, axis=0)])
    out, state = _run_chunk(params, chunk, active, jnp.asarray(length, jnp.int32), state,
                            predictor=predictor)
    pieces.append({k: v[:length] for k, v in jax.device_get(out).items()})
  result = {k: np.concatenate([p[k] for p in pieces]) for k in pieces[0]}
  result['active_mask'] = np.asarray(active_mask, bool)
  result['crop'] = np.asarray([(input_hw[0] - side) // 2, (input_hw[1] - side) // 2, side],
                              np.int32)
  result['input_hw'] = np.asarray(input_hw, np.int32)
  return result


@functools.lru_cache(maxsize=8)
def _predictor(model, rollout: str, resolution: int) -> predict_lib.Predictor:
  """One Predictor per (model, rollout, resolution): equal models share its compilations."""
  return predict_lib.Predictor(model, rollout=rollout, resolution=resolution)


def masks_at_input(result: dict[str, np.ndarray]) -> np.ndarray:
  """Slot ids uint8 [T, H, W] at the input video's resolution: the decoder masks upsampled
  (bilinear, as for `ids`) to the centre square's side, argmax over the active slots, and
  OUTSIDE where the model saw nothing."""
  masks, active = result['masks'], jnp.asarray(result['active_mask'])
  top, left, side = (int(v) for v in result['crop'])
  t = masks.shape[0]
  ids_at = jax.jit(lambda m: metrics_lib.masks_to_ids(m[None, None], active,
                                                      (side, side))[0, 0])
  out = np.full((t, *result['input_hw']), OUTSIDE, np.uint8)
  for i in range(t):  # one frame at a time: [K, side, side] floats per frame only
    out[i, top:top + side, left:left + side] = np.asarray(ids_at(masks[i]))
  return out


# --------------------------------------------------------------------------- outputs

def write_outputs(output_dir: str | os.PathLike, result: dict[str, np.ndarray],
                  fps: float = DEFAULT_FPS, overlay_format: str = 'mp4',
                  model_resolution_masks: bool = False) -> dict[str, str]:
  """Write the files listed in the module docstring; returns name -> path."""
  if overlay_format not in ('mp4', 'gif'):
    raise ValueError(f'overlay_format must be "mp4" or "gif", got {overlay_format!r}')
  out = pathlib.Path(output_dir)
  out.mkdir(parents=True, exist_ok=True)
  frames, ids, masks = result['frames'], result['ids'], result['masks']
  t, k = masks.shape[:2]
  r = frames.shape[1]
  paths = {}
  overlay = visualize.overlay(frames, ids, num_colours=k)
  if overlay_format == 'gif':
    visualize.save_gif(out / 'overlay.gif', overlay, fps)
    paths['overlay'] = str(out / 'overlay.gif')
  else:
    paths['overlay'] = visualize.save_video(out / 'overlay.mp4', overlay, fps)

  @jax.jit
  def upsample(m):  # [T', K, h, w] -> [T', K, R, R], the upsampling behind `ids`
    return metrics_lib.upsample_masks(m[None], (r, r))[0]

  mask_dir = out / 'slot_masks'
  mask_dir.mkdir(exist_ok=True)
  for stale in mask_dir.glob('frame_*.png'):  # a longer earlier run must not leave extra frames
    stale.unlink()
  for i in range(t):
    tiles = visualize.slot_tiles(frames[i], np.asarray(upsample(masks[i:i + 1]))[0])
    visualize.save_png(mask_dir / f'frame_{i:05d}.png', tiles)
  paths['slot_masks'] = str(mask_dir)

  shown = np.unique(np.round(np.linspace(0, t - 1, min(t, SUMMARY_FRAMES))).astype(int))
  figure = visualize.clip_figure(
      frames[shown], ids[shown], None, np.asarray(upsample(masks[shown])),
      np.asarray(jax.image.resize(result['error'][shown], (len(shown), r, r), 'nearest')),
      max_frames=None, num_colours=k)
  visualize.save_png(out / 'summary.png', figure)
  paths['summary'] = str(out / 'summary.png')

  if k >= OUTSIDE:
    raise ValueError(f'{k} slots do not fit uint8 slot ids with {OUTSIDE} for "outside"')
  extra = {'masks_model': ids.astype(np.uint8)} if model_resolution_masks else {}
  np.savez_compressed(out / 'masks_and_slots.npz', masks=masks_at_input(result), **extra,
                      soft_masks=masks.astype(np.float16), slots=result['slots'].astype(np.float32),
                      active_mask=result['active_mask'], crop=result['crop'], fps=np.float32(fps))
  paths['npz'] = str(out / 'masks_and_slots.npz')
  return paths


def run(config, checkpoint: str, video: str, output_dir: str, chunk_len: int = 24,
        rollout: str | None = None, fps: float | None = None, params: Any = None,
        overlay_format: str = 'mp4', model_resolution_masks: bool = False,
        use_checkpoint_config: bool = False) -> dict[str, str]:
  """Read `video`, segment it with the checkpoint's params, write the outputs.

  The checkpoint's saved config must agree with `config` on what the params mean
  (else a user error lists the differences); with `use_checkpoint_config` the saved
  config is used instead (compat.config_for_checkpoint).
  params: use these instead of loading `checkpoint` (tests).
  """
  with errors.user_errors():  # the video, the config or the checkpoint
    frames, source_fps = read_video(video)
    if params is None:
      loaded = checkpoint_lib.load(checkpoint)
      config = compat.config_for_checkpoint(config, loaded.source, loaded.step, loaded.config,
                                            loaded.schedule, use_saved=use_checkpoint_config)
    check_frame_size(frames, config, source=str(video))
    spec = encoders.encoder_spec(config)
    model = video_model.build_model(config, spec)
    if params is None:
      params = loaded.params
      params_lib.check_fits(params, params_lib.template(model, spec, config),
                            source=f'checkpoint {checkpoint}',
                            fix='pass the --config (and overrides) it was trained with')
  rollout = rollout or config.eval.rollout
  logging.info('%s: %d frames of %dx%d, %s rollout in chunks of %d', video, len(frames),
               frames.shape[2], frames.shape[1], rollout, chunk_len)
  result = segment_video(model, params, frames, config, chunk_len, rollout, progress=True)
  paths = write_outputs(output_dir, result, fps or source_fps or DEFAULT_FPS, overlay_format,
                        model_resolution_masks)
  return paths


_CONFIG = None  # set in _define_flags (flags are defined only when run as a program)


def _define_flags():
  global _CONFIG
  _CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py).',
                                            lock_config=True)
  flags.DEFINE_string('checkpoint', None, 'Training workdir, checkpoints dir, step dir, or an '
                      'exported .msgpack/.npz params file.')
  flags.DEFINE_string('video', None, 'Video file (mp4, webm, gif, ...) or folder of PNG/JPEG.')
  flags.DEFINE_string('output_dir', None, 'Where the outputs are written.')
  flags.DEFINE_integer('chunk_len', 24, 'Frames per model call; slots carry across chunks.')
  flags.DEFINE_enum('rollout', None, ['forward', 'cyclic'], 'Default: config.eval.rollout.')
  flags.DEFINE_float('fps', None, 'Frame rate of the overlay video; default: the input\'s.')
  flags.DEFINE_enum('overlay_format', 'mp4', ['mp4', 'gif'], 'overlay.mp4 or overlay.gif.')
  flags.DEFINE_bool('use_checkpoint_config', False, "Segment with the checkpoint's saved config "
                    'where --config differs in what the params mean (instead of refusing).')
  flags.DEFINE_bool('model_resolution_masks', False, 'Also write masks_model [T, R, R] (the '
                    "model's resolution) next to masks [T, H, W] (the input's).")


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  config = cli.config_value(_CONFIG)
  for name in ('checkpoint', 'video', 'output_dir'):
    if not f[name].value:
      raise app.UsageError(f'--{name} is required')
  cli.check_writable(f.output_dir, '--output_dir')
  paths = run(config, f.checkpoint, f.video, f.output_dir, f.chunk_len, f.rollout, f.fps,
              overlay_format=f.overlay_format, model_resolution_masks=f.model_resolution_masks,
              use_checkpoint_config=f.use_checkpoint_config)
  print(json.dumps(paths, indent=2))


if __name__ == '__main__':
  _define_flags()
  cli.run(main)
