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
                                             ('dog', 11, 40, 72)), num_val: int = 1) -> pathlib.Path:
  """DAVIS 2017's layout: JPEG frames, palette masks, ImageSets/2017 with the last `num_val`
  videos ('dog' by default) in val."""
  for i, (name, t, h, w) in enumerate(videos):
    frames, ids = synthetic_video(10 + i, t, h, w)
    write_frames(root / 'JPEGImages' / '480p' / name, frames, '.jpg')
    write_masks(root / 'Annotations' / '480p' / name, ids, palette=True)
  sets = root / 'ImageSets' / '2017'
  sets.mkdir(parents=True)
  (sets / 'train.txt').write_text(''.join(f'{v[0]}\n' for v in videos[:-num_val]))
  (sets / 'val.txt').write_text(''.join(f'{v[0]}\n' for v in videos[-num_val:]))
  return root


def write_readme_examples(mp4_root: pathlib.Path, davis_root: pathlib.Path):
  """The two folders of README "Your own videos": five mp4s without masks (24 to 60 frames,
  90x120 to 160x96), and DAVIS 2017's layout with 8 videos (6 in train.txt, 2 in val.txt)."""
  mp4_root.mkdir(parents=True)
  for i, (name, t, h, w) in enumerate((('beach', 24, 90, 120), ('city', 36, 120, 160),
                                       ('dance', 48, 96, 128), ('field', 60, 160, 96),
                                       ('garden', 30, 112, 112))):
    frames, _ = synthetic_video(20 + i, t, h, w)
    iio.imwrite(mp4_root / f'{name}.mp4', frames, plugin='FFMPEG', fps=10, macro_block_size=1)
  write_davis(davis_root, (('bear', 40, 54, 96), ('car', 36, 48, 64), ('cow', 48, 72, 128),
                           ('dog', 52, 60, 80), ('elephant', 44, 54, 96), ('fox', 30, 48, 64),
                           ('goat', 78, 54, 96), ('horse', 86, 60, 80)), num_val=2)


if __name__ == '__main__':
  # python tests/video_folder_helpers.py /tmp/my_videos /tmp/DAVIS
  import sys
  write_readme_examples(pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]))
