"""Small folders of videos written from the synthetic generator, for the video_folder tests."""
import pathlib

import imageio.v3 as iio
import numpy as np
import PIL.Image

from slotcurri_jax.data import synthetic_movi


def synthetic_video(index: int, frames: int, height: int, width: int):
  """(frames uint8 [T, h, w, 3], ids uint8 [T, h, w]) of a synthetic scene, cut to h x w."""
  c = synthetic_movi.config_from_settings(resolution=max(height, width), num_frames=frames,
                                          min_objects=2, max_objects=3, num_train=1,
                                          num_validation=1)
  example = synthetic_movi.render_example(c, 'train', index)
  return (example['video'][:, :height, :width],
          example['segmentations'][:, :height, :width, 0].astype(np.uint8))


def write_masks(folder: pathlib.Path, ids: np.ndarray, palette: bool = True, suffix='.png'):
  """One PNG per frame: palette (DAVIS) or single-channel integer ids."""
  folder.mkdir(parents=True, exist_ok=True)
  for t, frame in enumerate(ids):
    image = PIL.Image.fromarray(frame, mode='L')
    if palette:
      image = image.convert('P')
      image.putpalette([v for i in range(256) for v in (i * 40 % 256, i * 90 % 256, i * 20 % 256)])
    image.save(folder / f'{t:05d}{suffix}')


def write_frames(folder: pathlib.Path, frames: np.ndarray, suffix: str = '.png'):
  folder.mkdir(parents=True, exist_ok=True)
  for t, frame in enumerate(frames):
    iio.imwrite(folder / f'{t:05d}{suffix}', frame)


def write_generic(root: pathlib.Path) -> pathlib.Path:
  """An mp4 and a gif without masks, two frame folders with masks (one palette, one integer
  ids, the last in name order: held out with validation_fraction 0.25), lengths 9 to 24 and
  four sizes."""
  root.mkdir(parents=True, exist_ok=True)
  frames, _ = synthetic_video(0, 24, 48, 64)
  iio.imwrite(root / 'a_clip.mp4', frames, plugin='FFMPEG', fps=10, macro_block_size=1)
  frames, _ = synthetic_video(1, 12, 40, 40)
  iio.imwrite(root / 'b_clip.gif', frames, duration=100, loop=0)
  frames, ids = synthetic_video(2, 16, 64, 48)
  write_frames(root / 'c_frames', frames, '.jpg')
  write_masks(root / 'masks' / 'c_frames', ids, palette=True)
  frames, ids = synthetic_video(3, 9, 36, 52)
  write_frames(root / 'd_frames', frames)
  write_masks(root / 'masks' / 'd_frames', ids, palette=False)
  return root


def write_davis(root: pathlib.Path, videos=(('bear', 20, 48, 64), ('car', 14, 48, 64),
                                             ('dog', 11, 40, 72))) -> pathlib.Path:
  """DAVIS 2017's layout: JPEG frames, palette masks, ImageSets/2017 with 'dog' in val."""
  for i, (name, t, h, w) in enumerate(videos):
    frames, ids = synthetic_video(10 + i, t, h, w)
    write_frames(root / 'JPEGImages' / '480p' / name, frames, '.jpg')
    write_masks(root / 'Annotations' / '480p' / name, ids, palette=True)
  sets = root / 'ImageSets' / '2017'
  sets.mkdir(parents=True)
  (sets / 'train.txt').write_text(''.join(f'{v[0]}\n' for v in videos[:-1]))
  (sets / 'val.txt').write_text(f'{videos[-1][0]}\n')
  return root
