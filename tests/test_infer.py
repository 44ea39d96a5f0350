"""Inference on a user's video: readers, chunked rollout with carried slots, outputs, errors."""
import functools
import os
import subprocess
import sys

import flax.serialization
import imageio.v3 as iio
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, tiny_config
from slotcurri_jax import checkpoint
from slotcurri_jax import infer
from slotcurri_jax import metrics as metrics_lib
from slotcurri_jax import params as params_lib
from slotcurri_jax.models import encoders
from slotcurri_jax.models import video_model

T, H, W = 5, 20, 28  # a short non-square clip; cropped to 20x20, resized to 16x16


@pytest.fixture(scope='module')
def setup():
  config = tiny_config()
  model = video_model.build_model(config)
  r = config.data.resolution
  params = jax.jit(model.init)(jax.random.PRNGKey(3), jnp.zeros((1, 1, r, r, 3)),
                               jnp.ones((config.model.max_slots,), bool))['params']
  return config, model, params


def _frames(t=T, h=H, w=W, seed=0):
  """Smooth moving blobs (so lossy mp4 coding keeps them) as uint8 [t, h, w, 3]."""
  yy, xx = np.mgrid[:h, :w]
  frames = np.zeros((t, h, w, 3), np.float32)
  rng = np.random.default_rng(seed)
  for c in range(3):
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    for i in range(t):
      frames[i, ..., c] = 255 * np.exp(-((yy - cy - i) ** 2 + (xx - cx) ** 2) / 40.0)
  return frames.astype(np.uint8)


@functools.partial(jax.jit, static_argnames=('model', 'rollout', 'resolution'))
def _apply(params, frames, initial_state, *, model, rollout, resolution):
  video, _ = infer.preprocess(frames, resolution)
  active = jnp.ones((model.max_slots,), bool)
  out = model.apply({'params': params}, video[None], active, rollout=rollout,
                    initial_state=initial_state)
  b, t, k, _ = out['dec_masks'].shape
  masks = out['dec_masks'].reshape(b, t, k, *model.grid)
  return out, metrics_lib.masks_to_ids(masks, active, (resolution, resolution))[0]


def _direct(model, params, config, frames, rollout, initial_state=None):
  """The model over all `frames` in one call, without infer's chunking."""
  out, ids = _apply(params, jnp.asarray(infer.crop_square(frames)), initial_state, model=model,
                    rollout=rollout, resolution=config.data.resolution)
  return jax.device_get(out), np.asarray(ids)


def _check_outputs(out_dir, paths, config, t, hw=(H, W)):
  k, r = config.model.max_slots, config.data.resolution
  grid = r // config.model.encoder.cnn_patch_size
  video = iio.imread(paths['overlay'], **({} if paths['overlay'].endswith('.gif')
                                           else {'plugin': 'FFMPEG'}))
  assert video.shape[:3] == (t, r, r) and video.shape[3] in (3, 4)
  with np.load(out_dir / 'masks_and_slots.npz') as z:
    assert z['masks'].shape == (t, *hw) and z['masks'].dtype == np.uint8  # input resolution
    top, left, side = z['crop']
    inside = z['masks'][:, top:top + side, left:left + side]
    assert inside.max() < k and side == min(hw)
    assert np.all(np.delete(z['masks'], np.s_[left:left + side], axis=2) == infer.OUTSIDE)
    assert z['soft_masks'].shape == (t, k, grid, grid) and z['soft_masks'].dtype == np.float16
    np.testing.assert_allclose(z['soft_masks'].astype(np.float32).sum(1), 1.0, atol=1e-2)
    assert z['slots'].shape == (t, k, config.model.slot_dim)
    assert np.isfinite(z['slots']).all()
  tiles = sorted((out_dir / 'slot_masks').glob('frame_*.png'))
  assert [p.name for p in tiles] == [f'frame_{i:05d}.png' for i in range(t)]
  assert iio.imread(tiles[0]).shape == (4 + r, k * (r + 2) - 2, 3)
  assert iio.imread(out_dir / 'summary.png').ndim == 3


def test_mp4_end_to_end(setup, tmp_path):
  config, _, params = setup
  path = tmp_path / 'clip.mp4'
  iio.imwrite(path, _frames(), plugin='FFMPEG', fps=6, macro_block_size=1)
  frames, fps = infer.read_video(path)
  assert frames.shape == (T, H, W, 3) and fps == 6.0
  paths = infer.run(config, None, str(path), str(tmp_path / 'out'), chunk_len=3,
                    rollout='forward', params=params)
  _check_outputs(tmp_path / 'out', paths, config, T)
  with np.load(tmp_path / 'out' / 'masks_and_slots.npz') as z:
    assert z['fps'] == 6.0


def test_png_folder_natural_order(setup, tmp_path):
  config, _, params = setup
  frames = _frames(t=11)
  folder = tmp_path / 'frames'
  folder.mkdir()
  for i, frame in enumerate(frames):  # frame_2 must come before frame_10
    iio.imwrite(folder / f'frame_{i}.png', frame)
  (folder / 'notes.txt').write_text('not a frame')
  read, fps = infer.read_video(folder)
  np.testing.assert_array_equal(read, frames)
  assert fps is None
  paths = infer.run(config, None, str(folder), str(tmp_path / 'out'), chunk_len=3,
                    rollout='forward', params=params, overlay_format='gif')
  assert paths['overlay'].endswith('overlay.gif')
  _check_outputs(tmp_path / 'out', paths, config, 11)


def test_one_chunk_equals_whole_video(setup):
  config, model, params = setup
  frames = _frames()
  got = infer.segment_video(model, params, frames, config, chunk_len=8, rollout='forward')
  out, ids = _direct(model, params, config, frames, 'forward')
  np.testing.assert_allclose(got['slots'], out['slots'][0], atol=1e-5)
  np.testing.assert_allclose(got['masks'].reshape(T, 5, -1), out['dec_masks'][0], atol=1e-6)
  np.testing.assert_array_equal(got['ids'], ids)
  assert got['frames'].shape == (T, 16, 16, 3) and got['error'].shape == (T, 4, 4)


def test_two_chunks_carry_slots_forward(setup):
  """5 frames in chunks of 3 (the second padded from 2 to 3) equal one forward pass."""
  config, model, params = setup
  frames = _frames()
  chunked = infer.segment_video(model, params, frames, config, chunk_len=3, rollout='forward')
  out, ids = _direct(model, params, config, frames, 'forward')
  np.testing.assert_allclose(chunked['slots'], out['slots'][0], atol=1e-4)
  np.testing.assert_allclose(chunked['masks'].reshape(T, 5, -1), out['dec_masks'][0], atol=1e-5)
  np.testing.assert_array_equal(chunked['ids'], ids)
  # Without the carry, the second chunk would restart from the placeholders.
  restart = infer.segment_video(model, params, frames[2:], config, chunk_len=3)
  assert np.abs(restart['slots'][1:] - chunked['slots'][3:]).max() > 1e-2


def test_cyclic_chunks_ignore_padding(setup):
  """Cyclic per chunk: the padded last chunk equals the unpadded chunk from the carry."""
  config, model, params = setup
  frames = _frames()
  chunked = infer.segment_video(model, params, frames, config, chunk_len=3, rollout='cyclic')
  first, _ = _direct(model, params, config, frames[:3], 'cyclic')
  second, ids = _direct(model, params, config, frames[3:], 'cyclic',
                        initial_state=first['slots_predicted'][:, -1])
  np.testing.assert_allclose(chunked['slots'][:3], first['slots'][0], atol=1e-5)
  np.testing.assert_allclose(chunked['slots'][3:], second['slots'][0], atol=1e-4)
  np.testing.assert_array_equal(chunked['ids'][3:], ids)


# --------------------------------------------------------------------------- bad inputs

def test_missing_and_empty_inputs(tmp_path):
  with pytest.raises(FileNotFoundError, match='nope.mp4'):
    infer.read_video(tmp_path / 'nope.mp4')
  (tmp_path / 'empty').mkdir()
  (tmp_path / 'empty' / 'readme.txt').write_text('x')
  with pytest.raises(ValueError, match=r'empty.*no frames'):
    infer.read_video(tmp_path / 'empty')
  (tmp_path / 'zero.mp4').write_bytes(b'')
  with pytest.raises(ValueError, match=r'zero.mp4 is empty \(0 bytes\)'):
    infer.read_video(tmp_path / 'zero.mp4')


def test_zero_frame_and_undecodable_files(tmp_path):
  import imageio_ffmpeg
  writer = imageio_ffmpeg.write_frames(str(tmp_path / 'noframes.mp4'), (16, 16), fps=5,
                                       macro_block_size=1, ffmpeg_log_level='quiet')
  writer.send(None)
  writer.close()  # a container without a single frame
  with pytest.raises(ValueError, match=r'noframes.mp4.*no video frames'):
    infer.read_video(tmp_path / 'noframes.mp4')
  (tmp_path / 'bad.mp4').write_bytes(b'garbage' * 100)
  with pytest.raises(ValueError, match=r'cannot decode video .*bad.mp4'):
    infer.read_video(tmp_path / 'bad.mp4')
  (tmp_path / 'bad.gif').write_bytes(b'GIF89a' + b'\0' * 10)
  with pytest.raises(ValueError, match=r'cannot decode video .*bad.gif'):
    infer.read_video(tmp_path / 'bad.gif')
  folder = tmp_path / 'frames'
  folder.mkdir()
  iio.imwrite(folder / 'a.png', np.zeros((8, 8, 3), np.uint8))
  (folder / 'b.png').write_bytes(b'not a png')
  with pytest.raises(ValueError, match=r'cannot decode frame .*b.png'):
    infer.read_video(folder)


def test_frames_that_do_not_fit(setup, tmp_path):
  config, _, params = setup
  folder = tmp_path / 'tiny'
  folder.mkdir()
  iio.imwrite(folder / 'f0.png', np.zeros((3, 9, 3), np.uint8))
  with pytest.raises(ValueError, match=r'tiny: frames are 9x3 pixels, smaller than the model '
                                       r'patch size 4'):
    infer.run(config, None, str(folder), str(tmp_path / 'out'), params=params)
  gray = tmp_path / 'gray'
  gray.mkdir()
  iio.imwrite(gray / 'f0.png', np.zeros((16, 16), np.uint8))
  with pytest.raises(ValueError, match=r'f0.png: frames have 1 channel'):
    infer.read_video(gray)
  rgba = np.zeros((16, 16, 4), np.uint8)
  rgba[..., 3] = 255
  opaque = tmp_path / 'opaque.png'
  iio.imwrite(opaque, rgba)
  assert infer.read_video(opaque)[0].shape == (1, 16, 16, 3)  # opaque alpha is dropped
  rgba[0, 0, 3] = 0
  iio.imwrite(tmp_path / 'clear.png', rgba)
  with pytest.raises(ValueError, match=r'clear.png: frames have 4 channel'):
    infer.read_video(tmp_path / 'clear.png')
  mixed = tmp_path / 'mixed'
  mixed.mkdir()
  iio.imwrite(mixed / 'f0.png', np.zeros((16, 16, 3), np.uint8))
  iio.imwrite(mixed / 'f1.png', np.zeros((16, 18, 3), np.uint8))
  with pytest.raises(ValueError, match=r'f1.png is 18x16 but f0.png is 16x16'):
    infer.read_video(mixed)


def test_checkpoint_loading_and_mismatch(setup, tmp_path):
  config, model, params = setup
  path = tmp_path / 'params.msgpack'
  path.write_bytes(flax.serialization.msgpack_serialize(jax.device_get(params)))
  loaded = checkpoint.load_params(path, config)
  template = params_lib.template(model, encoders.encoder_spec(config), config)
  params_lib.check_fits(loaded, template, source=str(path), fix='the config')
  jax.tree.map(np.testing.assert_array_equal, loaded, jax.device_get(params))
  with pytest.raises(FileNotFoundError, match='missing.msgpack'):
    checkpoint.load_params(tmp_path / 'missing.msgpack', config)
  other = tiny_config()
  other.model.slot_dim = 8
  with pytest.raises(ValueError, match=r'(?s)params.msgpack does not fit the model.*'
                     r'corrector/.*: given \(\d+, \d+\), model'):
    params_lib.check_fits(loaded, params_lib.template(video_model.build_model(other),
                                                      encoders.encoder_spec(other), other),
                          source=str(path), fix='the config')


def test_command_line(setup, tmp_path):
  config, _, params = setup
  ckpt = tmp_path / 'params.msgpack'
  ckpt.write_bytes(flax.serialization.msgpack_serialize(jax.device_get(params)))
  gif = tmp_path / 'clip.gif'
  iio.imwrite(gif, _frames(t=3), duration=250, loop=0)
  overrides = [  # configs/demo.py shrunk to tiny_config's model
      '--config.data.resolution=16', '--config.model.encoder.cnn_patch_size=4',
      '--config.model.encoder.cnn_features=16', '--config.model.slot_dim=16',
      '--config.model.max_slots=5', '--config.model.decoder.hidden=(32,32)']
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='')
  proc = subprocess.run(
      [sys.executable, '-m', 'slotcurri_jax.infer', f'--config={REPO / "configs" / "demo.py"}',
       f'--checkpoint={ckpt}', f'--video={gif}', f'--output_dir={tmp_path / "out"}',
       '--chunk_len=2', '--rollout=cyclic', '--model_resolution_masks', *overrides],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert '"overlay"' in proc.stdout
  with np.load(tmp_path / 'out' / 'masks_and_slots.npz') as z:
    assert z['masks'].shape == (3, H, W)
    assert z['masks_model'].shape == (3, 16, 16)
    assert z['fps'] == 4.0


def test_preprocess_matches_training_resize():
  """Upsampling equals the MOVi pipeline's PyTorch-bicubic resize; constants survive both ways."""
  tf = pytest.importorskip('tensorflow')
  from slotcurri_jax.data import transforms
  raw = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
  video, display = infer.preprocess(jnp.asarray(raw), 16)
  x = tf.cast(raw, tf.float32) / 255.0
  weights = transforms.cubic_weights(8, 16)
  expected = transforms.normalize(transforms.resize_bicubic(x, weights, weights)).numpy()
  np.testing.assert_allclose(np.asarray(video), expected, atol=1e-5)
  assert display.dtype == jnp.uint8 and display.shape == (2, 16, 16, 3)
  for side in (8, 40):  # up- and (antialiased) downsampling keep a flat frame flat
    flat = np.full((1, side, side, 3), 51, np.uint8)
    video, display = infer.preprocess(jnp.asarray(flat), 16)
    np.testing.assert_array_equal(np.asarray(display), 51)
    want = (0.2 - np.asarray(infer.IMAGENET_MEAN)) / np.asarray(infer.IMAGENET_STD)
    np.testing.assert_allclose(np.asarray(video)[0, 5, 7], want, atol=1e-5)
