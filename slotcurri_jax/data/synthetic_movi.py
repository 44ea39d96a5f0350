"""`synthetic_movi`: procedurally rendered MOVi-like videos, a TFDS builder.

The demo, the tests and CI train and evaluate on this dataset instead of the
Kubric bucket. It has MOVi's feature names, dtypes and layout (docs/method.md §11.1), so
the MOVi reader in `movi.py` reads it unchanged:

  video               [T, H, W, 3] uint8, PNG-encoded frames
  segmentations       [T, H, W, 1] uint8, 0 = background, id = instance index + 1
  forward_flow, backward_flow  [T, H, W, 2] uint16 (Δrow, Δcol), `metadata.*_flow_range`
  depth               [T, H, W, 1] uint16, `metadata.depth_range`
  metadata            video_name, width, height, num_frames, num_instances, ranges
  instances           sorted by total visibility, descending: visibility, bboxes,
                      bbox_frames, positions, ... (MOVi-C's instance features)
  camera, background, events.collisions

Differences from MOVi that a reader does not see: the flows are stored
zlib-compressed (MOVi stores them raw, the decoded tensors are identical in
dtype and shape), instance `category` is always "None", and the 3-D quantities
(positions, bboxes_3d, ...) are in normalised image units plus a depth.

Features of MOVi that are not generated (nothing in slotcurri_jax reads them; a
reader asking for them gets a KeyError): `normal` and `object_coordinates`
(MOVi: [T, H, W, 3] uint16 PNGs; the flat 2-D shapes here have neither surface
normals nor 3-D object coordinates) and MOVi-E's `instances/is_dynamic` (every
object here moves; MOVi-E also has static ones).

Scenes: a static textured background (gradients, stripes, checkers, smooth
noise) and 3-10 objects (configurable up to 23) of seven shapes (ellipse,
rectangle, triangle, hexagon, star, ring, cross), each with its own colour,
texture, size, aspect, velocity and spin. Objects bounce off the borders or fly
through the frame (entering or leaving it), and occlude each other by a fixed
depth order. `difficulty` in [0, 1] scales speed, spin, how small objects are,
how often they are textured and leave the frame, and the background contrast.

Every video is a pure function of (config, split, index): the per-video random
generator is seeded with (seed, split, index), so builds are reproducible. The
builder config's name encodes every setting, so different settings never share
a directory under data_dir.
"""
from __future__ import annotations

import dataclasses
import io
import math
import multiprocessing
import os
from typing import Any

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds

SHAPES = ('ellipse', 'rectangle', 'triangle', 'hexagon', 'star', 'ring', 'cross')
TEXTURES = ('flat', 'stripes', 'checker', 'dots', 'gradient', 'blotches')
BACKGROUNDS = ('stripes', 'checker', 'noise', 'rings', 'floor')
# MOVi-C's instance categories; every synthetic object is 'None'.
MOVI_C_CATEGORIES = (
    'Action Figures', 'Bag', 'Board Games', 'Bottles and Cans and Cups', 'Camera', 'Car Seat',
    'Consumer Goods', 'Hat', 'Headphones', 'Keyboard', 'Legos', 'Media Cases', 'Mouse', 'None',
    'Shoe', 'Stuffed Toys', 'Toys')
MAX_OBJECTS = 23  # MOVi-E's maximum
_SPLIT_IDS = {'train': 0, 'validation': 1}
_VIDEOS_PER_WORKER = 100  # below this a worker's start-up (importing TF) costs more than it saves
_PNG_LEVEL = 3  # zlib level of the PNG frames: 6 (PIL's default) is ~40% slower for ~10% less
_UINT16_MAX = 65535
# The keys of config.data.synthetic, all encoded in the builder config's name.
_SETTINGS = ('resolution', 'num_frames', 'min_objects', 'max_objects', 'difficulty', 'num_train',
             'num_validation', 'seed')


# --------------------------------------------------------------------------- builder

@dataclasses.dataclass
class SyntheticMoviConfig(tfds.core.BuilderConfig):
  """Rendering settings; `config_from_settings` derives the name from them."""
  resolution: int = 128
  num_frames: int = 24
  min_objects: int = 3
  max_objects: int = 10
  difficulty: float = 0.5
  num_train: int = 1000
  num_validation: int = 64
  seed: int = 0


def config_from_settings(resolution: int = 128, num_frames: int = 24, min_objects: int = 3,
                         max_objects: int = 10, difficulty: float = 0.5, num_train: int = 1000,
                         num_validation: int = 64, seed: int = 0) -> SyntheticMoviConfig:
  """A builder config whose name encodes every setting (its directory under data_dir)."""
  if not 1 <= min_objects <= max_objects <= MAX_OBJECTS:
    raise ValueError(f'need 1 <= min_objects={min_objects} <= max_objects={max_objects} <= '
                     f'{MAX_OBJECTS} in config.data.synthetic')
  if not 0.0 <= difficulty <= 1.0:
    raise ValueError(f'config.data.synthetic.difficulty={difficulty} must be in [0, 1]')
  if resolution < 8 or num_frames < 1 or num_train < 0 or num_validation < 0:
    raise ValueError(f'bad config.data.synthetic sizes: resolution={resolution}, '
                     f'num_frames={num_frames}, num_train={num_train}, '
                     f'num_validation={num_validation}')
  name = (f'r{resolution}_t{num_frames}_o{min_objects}-{max_objects}_d{difficulty:.3f}'
          f'_n{num_train}-{num_validation}_s{seed}')
  return SyntheticMoviConfig(
      name=name, description='synthetic MOVi-like videos: ' + name,
      resolution=resolution, num_frames=num_frames, min_objects=min_objects,
      max_objects=max_objects, difficulty=float(difficulty), num_train=num_train,
      num_validation=num_validation, seed=seed)


def config_from_data_config(synthetic) -> SyntheticMoviConfig:
  """From `config.data.synthetic` (an ml_collections ConfigDict or a dict)."""
  return config_from_settings(**{k: synthetic[k] for k in _SETTINGS})


def instance_features(num_frames: int) -> dict:
  """MOVi-C's per-instance features (kubric challenges/movi)."""
  s = num_frames
  return {
      'mass': np.float32, 'friction': np.float32, 'restitution': np.float32,
      'positions': tfds.features.Tensor(shape=(s, 3), dtype=np.float32),
      'quaternions': tfds.features.Tensor(shape=(s, 4), dtype=np.float32),
      'velocities': tfds.features.Tensor(shape=(s, 3), dtype=np.float32),
      'angular_velocities': tfds.features.Tensor(shape=(s, 3), dtype=np.float32),
      'bboxes_3d': tfds.features.Tensor(shape=(s, 8, 3), dtype=np.float32),
      'image_positions': tfds.features.Tensor(shape=(s, 2), dtype=np.float32),
      'bboxes': tfds.features.Sequence(tfds.features.BBoxFeature()),
      'bbox_frames': tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.int32)),
      'visibility': tfds.features.Tensor(shape=(s,), dtype=np.uint16),
      'asset_id': tfds.features.Text(),
      'category': tfds.features.ClassLabel(names=MOVI_C_CATEGORIES),
      'scale': np.float32,
  }


def movi_features(height: int, width: int, num_frames: int) -> tfds.features.FeaturesDict:
  """The MOVi-C feature dict at the given size (flows zlib-compressed, see module doc)."""
  h, w, s = height, width, num_frames
  zlib = tfds.features.Encoding.ZLIB
  return tfds.features.FeaturesDict({
      'metadata': {
          'video_name': tfds.features.Text(),
          'width': np.int32, 'height': np.int32, 'num_frames': np.int32,
          'num_instances': np.uint16,
          'depth_range': tfds.features.Tensor(shape=(2,), dtype=np.float32),
          'forward_flow_range': tfds.features.Tensor(shape=(2,), dtype=np.float32),
          'backward_flow_range': tfds.features.Tensor(shape=(2,), dtype=np.float32),
      },
      'background': tfds.features.Text(),
      'instances': tfds.features.Sequence(feature=instance_features(s)),
      'camera': {
          'focal_length': np.float32, 'sensor_width': np.float32, 'field_of_view': np.float32,
          'positions': tfds.features.Tensor(shape=(s, 3), dtype=np.float32),
          'quaternions': tfds.features.Tensor(shape=(s, 4), dtype=np.float32),
      },
      'events': {
          'collisions': tfds.features.Sequence({
              'instances': tfds.features.Tensor(shape=(2,), dtype=np.uint16),
              'frame': np.int32, 'force': np.float32,
              'position': tfds.features.Tensor(shape=(3,), dtype=np.float32),
              'image_position': tfds.features.Tensor(shape=(2,), dtype=np.float32),
              'contact_normal': tfds.features.Tensor(shape=(3,), dtype=np.float32),
          }),
      },
      'video': tfds.features.Video(shape=(s, h, w, 3)),
      'segmentations': tfds.features.Sequence(
          tfds.features.Image(shape=(h, w, 1), dtype=np.uint8), length=s),
      'forward_flow': tfds.features.Sequence(
          tfds.features.Tensor(shape=(h, w, 2), dtype=np.uint16, encoding=zlib), length=s),
      'backward_flow': tfds.features.Sequence(
          tfds.features.Tensor(shape=(h, w, 2), dtype=np.uint16, encoding=zlib), length=s),
      'depth': tfds.features.Sequence(
          tfds.features.Image(shape=(h, w, 1), dtype=np.uint16), length=s),
  })


class SyntheticMovi(tfds.core.GeneratorBasedBuilder):
  """Procedural MOVi-like videos with MOVi's features (see the module docstring)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'first release'}
  BUILDER_CONFIGS = [config_from_settings()]

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__.split('\n\n')[0],
        features=movi_features(c.resolution, c.resolution, c.num_frames),
        # Keep index order (TFDS then stores examples sorted by key = index).
        disable_shuffling=True,
        homepage='https://github.com/google-research/kubric',
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    c = self.builder_config
    counts = {'train': c.num_train, 'validation': c.num_validation}
    # TFDS cannot write an empty split; a missing split is reported by the reader.
    return {split: self._generate_examples(split, n) for split, n in counts.items() if n > 0}

  def _generate_examples(self, split: str, count: int):
    settings = {k: getattr(self.builder_config, k) for k in _SETTINGS}
    jobs = [(settings, split, index) for index in range(count)]
    workers = min(len(os.sched_getaffinity(0)), count // _VIDEOS_PER_WORKER)
    if workers <= 1:
      yield from enumerate(map(_render_encoded, jobs))
      return
    # Rendering and PNG encoding dominate: spread them over the cores. 'spawn'
    # because the parent may hold JAX/TF threads, which fork does not copy.
    with multiprocessing.get_context('spawn').Pool(workers) as pool:
      yield from enumerate(pool.imap(_render_encoded, jobs, chunksize=4))


def _png(image: np.ndarray) -> bytes:
  """PNG bytes of an [H, W, C] uint8 or [H, W, 1] uint16 image (PIL: faster than TF's runner)."""
  if image.shape[-1] == 1:
    image = image[..., 0]
  out = io.BytesIO()
  PIL.Image.fromarray(image).save(out, format='png', compress_level=_PNG_LEVEL)
  return out.getvalue()


def _render_encoded(job) -> dict[str, Any]:
  """render_example with the PNG features already encoded (runs in worker processes)."""
  settings, split, index = job
  example = render_example(config_from_settings(**settings), split, index)
  for key in ('video', 'segmentations', 'depth'):
    example[key] = [_png(frame) for frame in example[key]]
  return example


def make_builder(synthetic, data_dir: str | None) -> SyntheticMovi:
  """The builder for `config.data.synthetic`'s settings (not prepared yet)."""
  config = config_from_data_config(synthetic)
  if config.name in SyntheticMovi.builder_configs:  # TFDS wants registered configs by name
    config = config.name
  return SyntheticMovi(config=config, data_dir=data_dir)


def prepare(synthetic, data_dir: str | None) -> SyntheticMovi:
  """Generate the dataset into data_dir unless it is there already; return the builder."""
  builder = make_builder(synthetic, data_dir)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return builder


# --------------------------------------------------------------------------- scene sampling

@dataclasses.dataclass
class _Object:
  """One object over the whole video; pixel units, (row, col) = (y, x)."""
  shape: str
  texture: str
  radius: float  # half-extent along the object's u axis, pixels
  aspect: float  # v half-extent / u half-extent
  shape_param: float  # ring inner radius, cross arm width, star inner radius
  center: np.ndarray  # [T, 2] (y, x)
  velocity: np.ndarray  # [T, 2] (vy, vx) per frame
  angle: np.ndarray  # [T] radians
  spin: float  # radians per frame
  depth: float
  colors: np.ndarray  # [2, 3] in [0, 1]
  tex_freq: float
  tex_angle: float
  tex_phase: float
  shading: float
  bounces: list  # (frame, normal (ny, nx))


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
  i = int(h * 6.0) % 6
  f = h * 6.0 - math.floor(h * 6.0)
  p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
  return np.asarray([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i])


def _random_color(rng: np.random.Generator) -> np.ndarray:
  return _hsv_to_rgb(rng.uniform(), rng.uniform(0.45, 1.0), rng.uniform(0.45, 1.0))


def _fold(x: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
  """Reflect a linear trajectory into [lo, hi]: (positions, velocity signs)."""
  span = hi - lo
  if span <= 0:
    return np.full_like(x, lo), np.ones_like(x)
  z = np.mod(x - lo, 2 * span)
  forward = z <= span
  return lo + np.where(forward, z, 2 * span - z), np.where(forward, 1.0, -1.0)


def _sample_object(rng: np.random.Generator, size: int, num_frames: int, d: float) -> _Object:
  t = np.arange(num_frames, dtype=np.float64)
  radius = size * rng.uniform(0.13 - 0.06 * d, 0.24 - 0.09 * d)
  aspect = rng.uniform(0.6, 1.0) if rng.uniform() < 0.5 else 1.0 / rng.uniform(0.6, 1.0)
  shape = SHAPES[rng.integers(len(SHAPES))]
  if shape in ('triangle', 'hexagon', 'star'):
    aspect = min(aspect, 1.0 / aspect) * 0.3 + 0.7  # mostly regular
  bound = radius * math.hypot(1.0, aspect)  # encloses every shape (rectangle corners)
  speed = size * rng.uniform(0.004, 0.012 + 0.03 * d)
  heading = rng.uniform(0, 2 * np.pi)
  vel = speed * np.asarray([np.sin(heading), np.cos(heading)])
  bounces = []
  if rng.uniform() < 0.15 + 0.35 * d:  # flies through: in the frame at t_mid, maybe not at the ends
    t_mid = rng.uniform(0, num_frames - 1)
    mid = rng.uniform(0.2 * size, 0.8 * size, size=2)
    center = mid[None] + (t - t_mid)[:, None] * vel[None]
    velocity = np.repeat(vel[None], num_frames, axis=0)
  else:  # bounces off the borders, staying inside
    lo, hi = bound, size - bound
    start = rng.uniform(min(lo, size / 2), max(hi, size / 2), size=2)
    center = np.zeros((num_frames, 2))
    velocity = np.zeros((num_frames, 2))
    for axis in range(2):
      center[:, axis], sign = _fold(start[axis] + t * vel[axis], lo, hi)
      velocity[:, axis] = sign * vel[axis]
      for f in np.nonzero(np.diff(sign))[0] + 1:
        normal = np.zeros(2)
        normal[axis] = -sign[f]
        bounces.append((int(f), normal))
  spin = rng.uniform(-1, 1) * (0.02 + 0.14 * d)
  textured = rng.uniform() < 0.25 + 0.75 * d
  colors = np.stack([_random_color(rng), _random_color(rng)])
  if rng.uniform() < 0.5:  # a darker or lighter tone of the same hue
    colors[1] = np.clip(colors[0] * rng.uniform(0.35, 0.7) + rng.uniform(0, 0.3), 0, 1)
  return _Object(
      shape=shape, texture=TEXTURES[rng.integers(1, len(TEXTURES))] if textured else 'flat',
      radius=radius, aspect=aspect,
      shape_param={'ring': rng.uniform(0.4, 0.6), 'cross': rng.uniform(0.3, 0.45),
                   'star': rng.uniform(0.4, 0.55)}.get(shape, 0.0),
      center=center, velocity=velocity, angle=rng.uniform(0, 2 * np.pi) + spin * t, spin=spin,
      depth=rng.uniform(2.0, 10.0), colors=colors, tex_freq=rng.uniform(1.5, 4.0),
      tex_angle=rng.uniform(0, np.pi), tex_phase=rng.uniform(0, 2 * np.pi),
      shading=rng.uniform(0.0, 0.5), bounces=bounces)


def _background(rng: np.random.Generator, size: int, d: float) -> tuple[np.ndarray, str]:
  """[size, size, 3] in [0, 1]: a two-colour gradient plus a low-contrast pattern."""
  yy, xx = np.meshgrid((np.arange(size) + 0.5) / size, (np.arange(size) + 0.5) / size,
                       indexing='ij')
  a = rng.uniform(0, 2 * np.pi)
  ramp = np.clip(0.5 + (np.cos(a) * (xx - 0.5) + np.sin(a) * (yy - 0.5)), 0, 1)
  c0, c1 = _random_color(rng) * 0.8, _random_color(rng) * 0.8
  image = c0 + (c1 - c0) * ramp[..., None]
  kind = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
  f = rng.uniform(2, 4 + 8 * d)
  if kind == 'stripes':
    b = rng.uniform(0, np.pi)
    pattern = np.sin(2 * np.pi * f * (np.cos(b) * xx + np.sin(b) * yy))
  elif kind == 'checker':
    pattern = np.sign(np.sin(2 * np.pi * f * xx) * np.sin(2 * np.pi * f * yy))
  elif kind == 'rings':
    cy, cx = rng.uniform(0, 1, size=2)
    pattern = np.sin(2 * np.pi * f * np.hypot(yy - cy, xx - cx))
  elif kind == 'floor':  # a horizon: plain upper half, tiled floor below
    horizon = rng.uniform(0.3, 0.6)
    below = yy > horizon
    depth = np.where(below, 1.0 / np.maximum(yy - horizon, 1e-3), 0.0)
    pattern = np.where(below, np.sign(np.sin(np.pi * f * 0.1 * depth)
                                      * np.sin(2 * np.pi * f * (xx - 0.5) * (yy - horizon))), 0.0)
  else:  # smooth noise: a few random plane waves
    pattern = np.zeros_like(xx)
    for _ in range(6):
      k = rng.normal(size=2) * f
      pattern += np.sin(2 * np.pi * (k[0] * yy + k[1] * xx) + rng.uniform(0, 2 * np.pi))
    pattern /= 2.5
  contrast = rng.uniform(0.08, 0.15 + 0.3 * d)
  tint = _random_color(rng) - 0.5
  image = image + contrast * np.clip(pattern, -1, 1)[..., None] * (0.5 + tint)
  return np.clip(image, 0, 1), kind


# --------------------------------------------------------------------------- rendering

def _local_coords(obj: _Object, t, dy, dx) -> tuple[np.ndarray, np.ndarray]:
  """Object-local coordinates (u, v), in radii, of offsets (dy, dx) from its centre at frame t."""
  ca, sa = np.cos(obj.angle[t]), np.sin(obj.angle[t])
  return (dx * ca + dy * sa) / obj.radius, (-dx * sa + dy * ca) / (obj.radius * obj.aspect)


def _signed_distance(obj: _Object, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Approximate signed distance to the outline in units of the object's radius
  (negative inside); u, v are object-local coordinates in radii."""
  rho = np.sqrt(u * u + v * v)
  if obj.shape == 'ellipse':
    return rho - 1.0
  if obj.shape == 'rectangle':
    return np.maximum(np.abs(u), np.abs(v)) - 1.0
  if obj.shape in ('triangle', 'hexagon'):
    n = 3 if obj.shape == 'triangle' else 6
    angles = 2 * np.pi * np.arange(n) / n + np.pi / 2
    dots = [np.cos(a) * u + np.sin(a) * v for a in angles]
    return np.max(dots, axis=0) - math.cos(math.pi / n)
  if obj.shape == 'star':
    phase = np.mod(np.arctan2(v, u) * 5 / (2 * np.pi), 1.0)
    tooth = 1.0 - 2.0 * np.abs(phase - 0.5)  # 1 at the tips, 0 between them
    return rho - (obj.shape_param + (1.0 - obj.shape_param) * tooth)
  if obj.shape == 'ring':
    return np.maximum(rho - 1.0, obj.shape_param - rho)
  if obj.shape == 'cross':
    au, av = np.abs(u), np.abs(v)
    w = obj.shape_param
    return np.minimum(np.maximum(au - 1.0, av - w), np.maximum(au - w, av - 1.0))
  raise ValueError(f'unknown shape {obj.shape!r}')


def _texture(obj: _Object, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Colour [h, w, 3] in the object's frame, so the texture moves and turns with it."""
  c0, c1 = obj.colors
  f, a, p = obj.tex_freq, obj.tex_angle, obj.tex_phase
  along = np.cos(a) * u + np.sin(a) * v
  if obj.texture == 'flat':
    mix = np.zeros_like(u)
  elif obj.texture == 'stripes':
    mix = (np.sin(np.pi * f * along + p) > 0).astype(np.float64)
  elif obj.texture == 'checker':
    mix = (np.sin(np.pi * f * u + p) * np.sin(np.pi * f * v + p) > 0).astype(np.float64)
  elif obj.texture == 'dots':
    fu, fv = np.mod(u * f + p, 1.0) - 0.5, np.mod(v * f + p, 1.0) - 0.5
    mix = (fu * fu + fv * fv < 0.09).astype(np.float64)
  elif obj.texture == 'gradient':
    mix = np.clip(0.5 + 0.5 * along, 0, 1)
  else:  # blotches
    mix = 0.5 + 0.5 * np.sin(2.1 * f * u + p) * np.sin(1.7 * f * v - p)
  color = c0 + (c1 - c0) * mix[..., None]
  rho2 = np.minimum(u * u + v * v, 1.0)
  return color * (1.0 - obj.shading * rho2)[..., None]


def sample_scene(c: SyntheticMoviConfig, split: str, index: int):
  """(objects, background [H, W, 3], background kind) of video `index` of `split`;
  the random generator is seeded with (seed, split, index)."""
  rng = np.random.default_rng([c.seed, _SPLIT_IDS[split], index])
  num_objects = int(rng.integers(c.min_objects, c.max_objects + 1))
  objects = [_sample_object(rng, c.resolution, c.num_frames, c.difficulty)
             for _ in range(num_objects)]
  background, bg_kind = _background(rng, c.resolution, c.difficulty)
  return objects, background, bg_kind


def silhouette(obj: _Object, size: int) -> np.ndarray:
  """[T, size, size] bool: the pixels whose centre the object covers, ignoring occlusion."""
  frames = np.arange(len(obj.angle))[:, None, None]
  centres = np.arange(size) + 0.5
  dy = centres[None, :, None] - obj.center[:, 0, None, None]
  dx = centres[None, None, :] - obj.center[:, 1, None, None]
  u, v = _local_coords(obj, frames, dy, dx)
  return _signed_distance(obj, u, v) <= 0.0


def render_example(c: SyntheticMoviConfig, split: str, index: int) -> dict[str, Any]:
  """The TFDS example dict of video `index` of `split` (see the module docstring)."""
  size, frames = c.resolution, c.num_frames
  objects, background, bg_kind = sample_scene(c, split, index)

  # Render into a canvas padded by the largest object, so that every object's
  # window lies inside it in every frame and one gather/scatter per object
  # covers the whole video.
  pad = int(math.ceil(max(o.radius * math.hypot(1.0, o.aspect) for o in objects))) + 2
  full = size + 2 * pad
  canvas = np.zeros((frames, full, full, 3))
  canvas[:, pad:pad + size, pad:pad + size] = background
  seg = np.zeros((frames, full, full), np.int32)  # 1 + index into `objects`
  t_idx = np.arange(frames)[:, None, None]
  # Painter's algorithm, far to near: nearer objects occlude farther ones.
  for k in np.argsort([-o.depth for o in objects], kind='stable'):
    obj = objects[k]
    half = int(math.ceil(obj.radius * math.hypot(1.0, obj.aspect))) + 1
    window = np.arange(2 * half)
    corner = np.clip(np.floor(obj.center).astype(int) + pad - half, 0, full - 2 * half)  # [T, 2]
    ys = corner[:, 0, None] + window  # [T, W] canvas rows; the frame's row is ys - pad
    xs = corner[:, 1, None] + window
    dy = (ys - pad + 0.5 - obj.center[:, 0, None])[:, :, None]  # [T, W, 1]
    dx = (xs - pad + 0.5 - obj.center[:, 1, None])[:, None, :]  # [T, 1, W]
    u, v = _local_coords(obj, t_idx, dy, dx)
    dist = _signed_distance(obj, u, v) * obj.radius * min(1.0, obj.aspect)  # pixels
    alpha = np.clip(0.5 - dist, 0.0, 1.0)[..., None]  # one-pixel anti-aliased edge
    window_rows, window_cols = ys[:, :, None], xs[:, None, :]
    crop = canvas[t_idx, window_rows, window_cols]
    canvas[t_idx, window_rows, window_cols] = crop + (_texture(obj, u, v) - crop) * alpha
    # The segmentation is hard: the object owns pixels whose centre it covers.
    seg_crop = seg[t_idx, window_rows, window_cols]
    seg[t_idx, window_rows, window_cols] = np.where(dist <= 0.0, k + 1, seg_crop)
  video = canvas[:, pad:pad + size, pad:pad + size]
  seg = seg[:, pad:pad + size, pad:pad + size]
  rows = (np.arange(size) + 0.5)[:, None]  # pixel centres
  cols = (np.arange(size) + 0.5)[None, :]

  # Geometry of each pixel's visible surface point. Per (object, frame), the
  # local coordinates (u, v) and the forward/backward displacements are affine
  # in the pixel position (y, x): tabulate [coef_y, coef_x, const] once, then
  # gather one table row per pixel.
  num = len(objects)
  table = np.zeros((num * frames + 1, 6, 3), np.float32)  # last row: background
  for k, obj in enumerate(objects):
    cy, cx = obj.center[:, 0], obj.center[:, 1]
    ca, sa = np.cos(obj.angle), np.sin(obj.angle)
    ru, rv = 1.0 / obj.radius, 1.0 / (obj.radius * obj.aspect)
    rows_k = slice(k * frames, (k + 1) * frames)
    # u = ((x - cx) ca + (y - cy) sa) / r;  v = (-(x - cx) sa + (y - cy) ca) / (r a)
    table[rows_k, 0] = np.stack([sa * ru, ca * ru, -(cx * ca + cy * sa) * ru], -1)
    table[rows_k, 1] = np.stack([ca * rv, -sa * rv, (cx * sa - cy * ca) * rv], -1)
    for j, step in ((2, 1), (4, -1)):  # MOVi: zero flow past the first/last frame
      other = np.clip(np.arange(frames) + step, 0, frames - 1)
      valid = (np.arange(frames) + step >= 0) & (np.arange(frames) + step < frames)
      delta = obj.angle[other] - obj.angle
      cd, sd = np.cos(delta), np.sin(delta)
      # p' = c' + R(delta) (p - c);  flow = p' - p
      oy, ox = obj.center[other, 0], obj.center[other, 1]
      fy = np.stack([cd - 1, sd, oy - cx * sd - cy * cd], -1)
      fx = np.stack([-sd, cd - 1, ox - cx * cd + cy * sd], -1)
      table[rows_k, j] = fy * valid[:, None]
      table[rows_k, j + 1] = fx * valid[:, None]
  row = np.where(seg > 0, (seg - 1) * frames + np.arange(frames)[:, None, None], num * frames)
  coef = table[row]  # [T, H, W, 6, 3]
  geo = coef[..., 0] * rows[..., None] + coef[..., 1] * cols[..., None] + coef[..., 2]
  u, v = geo[..., 0], geo[..., 1]
  bulge = np.sqrt(np.clip(1.0 - u * u - v * v, 0.0, 1.0))
  obj_depth = np.asarray([o.depth for o in objects] + [0.0], np.float32)[
      np.where(seg > 0, seg - 1, num)] - 0.3 * bulge
  floor = 12.0 + 4.0 * (1.0 - rows / size)  # background depth: a receding floor
  depth = np.where(seg > 0, obj_depth, floor)
  flows = (geo[..., 2:4], geo[..., 4:6])

  return _assemble(c, split, index, objects, bg_kind, video, seg, depth, *flows)


def _quantize(x: np.ndarray) -> tuple[np.ndarray, list[float]]:
  lo, hi = float(x.min()), float(x.max())
  scale = (hi - lo) if hi > lo else 1.0
  return np.round((x - lo) / scale * _UINT16_MAX).astype(np.uint16), [lo, hi]


def _assemble(c, split, index, objects, bg_kind, video, seg, depth, fwd, bwd):
  """Sort instances by visibility (MOVi's order), relabel, and build the example dict."""
  size, frames = c.resolution, c.num_frames
  num = len(objects)
  per_frame = np.arange(frames)[:, None, None] * (num + 1) + seg
  visibility = np.bincount(per_frame.ravel(), minlength=frames * (num + 1))
  visibility = visibility.reshape(frames, num + 1)[:, 1:].T  # [K, T] pixels
  order = np.argsort(-visibility.sum(axis=1), kind='stable')  # MOVi: most visible first
  relabel = np.zeros(len(objects) + 1, np.uint8)
  relabel[order + 1] = np.arange(1, len(objects) + 1)
  seg = relabel[seg]
  depth_q, depth_range = _quantize(depth)
  fwd_q, fwd_range = _quantize(fwd)
  bwd_q, bwd_range = _quantize(bwd)

  instances, collisions = [], []
  for new_index, k in enumerate(order):
    obj = objects[k]
    vis = visibility[k]
    mask = seg == new_index + 1
    rows_any, cols_any = mask.any(axis=2), mask.any(axis=1)
    boxes, box_frames = [], []
    for t in np.nonzero(vis)[0]:
      ys, xs = np.nonzero(rows_any[t])[0], np.nonzero(cols_any[t])[0]
      boxes.append(tfds.features.BBox(ymin=ys[0] / size, xmin=xs[0] / size,
                                      ymax=(ys[-1] + 1) / size, xmax=(xs[-1] + 1) / size))
      box_frames.append(int(t))
    pos = np.stack([obj.center[:, 1] / size, obj.center[:, 0] / size,
                    np.full(frames, obj.depth)], -1)
    half = np.asarray([obj.radius / size, obj.radius * obj.aspect / size, obj.radius / size])
    corners = np.asarray([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
    instances.append({
        'mass': obj.radius ** 2 * obj.aspect / size ** 2 * 100.0,
        'friction': 0.5, 'restitution': 0.5,
        'positions': pos.astype(np.float32),
        'quaternions': np.stack([np.cos(obj.angle / 2), 0 * obj.angle, 0 * obj.angle,
                                 np.sin(obj.angle / 2)], -1).astype(np.float32),
        'velocities': np.stack([obj.velocity[:, 1] / size, obj.velocity[:, 0] / size,
                                np.zeros(frames)], -1).astype(np.float32),
        'angular_velocities': np.tile([0.0, 0.0, obj.spin], (frames, 1)).astype(np.float32),
        'bboxes_3d': (pos[:, None, :] + corners[None] * half).astype(np.float32),
        'image_positions': pos[:, :2].astype(np.float32),
        'bboxes': boxes,
        'bbox_frames': np.asarray(box_frames, np.int32),
        'visibility': vis.astype(np.uint16),
        'asset_id': f'{obj.shape}/{obj.texture}',
        'category': 'None',
        'scale': obj.radius / size,
    })
    for frame, normal_yx in obj.bounces:
      collisions.append({
          'instances': np.asarray([new_index, _UINT16_MAX], np.uint16),  # 65535: the border
          'frame': frame,
          'force': float(np.hypot(*obj.velocity[frame])),
          'position': pos[frame].astype(np.float32),
          'image_position': pos[frame, :2].astype(np.float32),
          'contact_normal': np.asarray([normal_yx[1], normal_yx[0], 0.0], np.float32),
      })
  collisions.sort(key=lambda e: e['frame'])
  fov = 2 * math.atan(16.0 / 35.0)
  return {
      'metadata': {
          'video_name': f'{split}_{index:06d}', 'width': size, 'height': size,
          'num_frames': frames, 'num_instances': len(objects),
          'depth_range': np.asarray(depth_range, np.float32),
          'forward_flow_range': np.asarray(fwd_range, np.float32),
          'backward_flow_range': np.asarray(bwd_range, np.float32),
      },
      'background': bg_kind,
      'instances': instances,
      'camera': {
          'focal_length': 35.0, 'sensor_width': 32.0, 'field_of_view': fov,
          'positions': np.zeros((frames, 3), np.float32),
          'quaternions': np.tile([1.0, 0.0, 0.0, 0.0], (frames, 1)).astype(np.float32),
      },
      'events': {'collisions': collisions},
      'video': np.round(np.clip(video, 0, 1) * 255).astype(np.uint8),
      'segmentations': seg[..., None],
      'forward_flow': fwd_q,
      'backward_flow': bwd_q,
      'depth': depth_q[..., None],
  }
