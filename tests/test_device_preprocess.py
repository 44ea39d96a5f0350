"""Preprocessing on device (data/device_preprocess.py) equals the host pipeline."""
import math

import jax
import numpy as np
import pytest

from conftest import tiny_config
from slotcurri_jax import parallel
from slotcurri_jax.data import device_preprocess
from slotcurri_jax.data import transforms
from slotcurri_jax.data import pipeline
from slotcurri_jax.tools import check_fixture
import test_data_ytvis as fake_ytvis

ATOL = 2e-5  # normalised units (1/std ~ 4.4 x pixel units); the two paths differ by ~1e-6


def _paths(config):
  host, raw = config.copy_and_resolve_references(), config.copy_and_resolve_references()
  host.data.preprocess_on_device = False
  raw.data.preprocess_on_device = True
  return host, raw


def _on_device(batch, config):
  """The raw batch through `preprocess` under jit, sharded over up to 8 devices like the step."""
  mesh = parallel.create_mesh(devices=jax.devices()[:math.gcd(len(batch['flip']), 8)])
  step = jax.jit(lambda b: device_preprocess.preprocess(b, config),
                 in_shardings=(parallel.batch_sharding(mesh),))
  out = step(parallel.host_to_global(batch, mesh))
  assert out['video'].sharding.is_equivalent_to(parallel.batch_sharding(mesh), 5)
  return jax.device_get(out)


def _compare_train(config, steps=2):
  host, raw = _paths(config)
  h_it, r_it = pipeline.train_iterator(host), pipeline.train_iterator(raw)
  flips = []
  for _ in range(steps):
    expected, batch = next(h_it), next(r_it)
    assert set(batch) == {'frames', 'size', 'crop', 'flip'} and batch['frames'].dtype == np.uint8
    got = _on_device(batch, raw)
    assert set(got) == {'video'} and got['video'].dtype == np.float32
    np.testing.assert_allclose(got['video'], expected['video'], atol=ATOL, rtol=0)
    flips += batch['flip'].tolist()
  return flips


def _compare_eval(config):
  host, raw = _paths(config)
  for expected, batch in zip(pipeline.eval_iterator(host), pipeline.eval_iterator(raw),
                             strict=True):
    got = _on_device(batch, raw)
    assert set(got) == set(expected)
    real = expected['padding_mask']  # fillers (black frames here, zeros there) never count
    np.testing.assert_allclose(got['video'][real], expected['video'][real], atol=ATOL, rtol=0)
    for key in ('segmentations', 'num_frames', 'padding_mask'):
      np.testing.assert_array_equal(got[key], expected[key])


# --------------------------------------------------------------------------- weights

@pytest.mark.parametrize('in_size,out_size,start', [(128, 336, 0), (320, 518, 100),
                                                    (568, 920, 401), (40, 16, 0), (26, 19, 7)])
def test_weights_equal_the_host_weights(in_size, out_size, start):
  count = min(64, out_size - start)
  # The source positions are bit-equal to PyTorch's float64-then-float32 arithmetic.
  src = (np.float64(np.float32(in_size) / np.float32(out_size)) * (start + np.arange(count) + 0.5)
         - 0.5).astype(np.float32)
  got = jax.jit(device_preprocess.source_positions, static_argnums=3)(
      in_size, out_size, start, count)
  np.testing.assert_array_equal(np.asarray(got), src)
  # A window starting at stored pixel `offset` holds the same weights, shifted.
  offset = max(int(np.floor(src[0])) - 1, 0)
  weights = device_preprocess.cubic_weights(in_size, out_size, start, offset, count,
                                            in_size - offset)
  expected = transforms.cubic_weights(in_size, out_size).numpy()[start:start + count, offset:]
  np.testing.assert_allclose(np.asarray(weights), expected, atol=1e-6, rtol=0)


def test_device_path_equals_pytorch(fixtures_dir):
  """resize.npz, made with torch's F.interpolate (fixtures/make_resize_fixture.py): MOVi
  128 -> 336 with and without flip, YT-VIS 320 x 568 -> short side 518 with three crops
  (through the stored-pixel windows data/ytvis.py ships), and the evaluation centre square.

  Tolerance (check_fixture.TOL_RESIZE, 1e-5 in normalised units): each output is 4 + 4
  taps summed in float32 by both (|weights| sum to at most ~1.3), rounded at every step in
  a different order, then normalised (x 1/std <= 4.4): a few float32 ulps of 1.0 (1.2e-7)
  times 4.4, about 4e-6 at worst; measured 2.6e-6. A wrong kernel coefficient, a missing
  clamp or a shifted source position gives 0.1 - 3.
  """
  with np.load(fixtures_dir / 'resize.npz', allow_pickle=False) as z:
    data = check_fixture._Loaded(z)
  outputs = check_fixture.resize_outputs(data)
  assert set(outputs) == {f'{case}/{name}' for case, name in (k.split('/out/') for k in data.files
                                                              if '/out/' in k)}
  for name, ours in outputs.items():
    case, output = name.split('/')
    np.testing.assert_allclose(ours, data[f'{case}/out/{output}'], **check_fixture.TOL_RESIZE,
                               err_msg=name)


def test_host_batches_pass_through():
  config = tiny_config()
  video = np.zeros((2, 4, 16, 16, 3), np.float32)
  assert device_preprocess.preprocess({'video': video}, config)['video'] is video
  features = {'features': np.zeros((2, 4, 16, 8), np.float32)}
  assert device_preprocess.preprocess(features, config) is features
  assert device_preprocess.model_video(video, config) is video


# --------------------------------------------------------------------------- synthetic_movi

@pytest.fixture(scope='session')
def movi_config(tmp_path_factory):
  """32 px stored videos upsampled to 40 px, like MOVi's 128 -> 336 (test_data_movi's data)."""
  c = tiny_config()
  c.data.data_dir = str(tmp_path_factory.getbasetemp() / 'movi_tfds')
  c.data.synthetic.resolution = 32
  c.data.resolution = 40
  c.data.batch_size = 8
  pipeline.check_available(c)
  return c


def test_synthetic_movi_train_batches_equal_the_host_path(movi_config):
  flips = _compare_train(movi_config)
  assert 0 < sum(flips) < len(flips)  # both kinds of clip were compared


def test_synthetic_movi_eval_batches_equal_the_host_path(movi_config):
  c = movi_config.copy_and_resolve_references()
  c.data.num_eval_videos = 5  # a padded last batch: fillers too
  c.data.eval_batch_size = 8
  _compare_eval(c)


def test_raw_path_ships_uint8_at_the_stored_size(movi_config):
  host, raw = _paths(movi_config)
  a, b = next(pipeline.train_iterator(host)), next(pipeline.train_iterator(raw))
  assert b['frames'].shape == (8, 4, 32, 32, 3)
  assert device_preprocess.raw_nbytes(a) / device_preprocess.raw_nbytes(b) > 6


# --------------------------------------------------------------------------- fake YouTube-VIS

@pytest.fixture(scope='session')
def ytvis_raw(tmp_path_factory):
  root = tmp_path_factory.getbasetemp() / 'ytvis_device_raw'
  fake_ytvis.write_fake_ytvis(root, fake_ytvis.fake_videos())
  return root


@pytest.mark.parametrize('resolution,flip_prob', [(fake_ytvis.SIZE, 0.0), (24, 0.5)])
def test_fake_ytvis_batches_equal_the_host_path(tmp_path_factory, ytvis_raw, resolution,
                                                flip_prob):
  """Downsampling 16 -> 12 (the fixture's) and upsampling 16 -> 24 with flips; frames of
  different sizes and orientations, a video shorter than a clip, padded eval frames."""
  c = fake_ytvis.ytvis_config(tmp_path_factory.getbasetemp() / 'ytvis_device_tfds', ytvis_raw)
  c.data.resolution = resolution
  c.data.flip_prob = flip_prob
  pipeline.check_available(c)
  raw = next(pipeline.train_iterator(_paths(c)[1]))
  window = fake_ytvis.SHORT + 4
  assert raw['frames'].shape == (4, 4, window, window, 3)
  flips = _compare_train(c, steps=3)
  if flip_prob:
    assert 0 < sum(flips) < len(flips)
  _compare_eval(c)
