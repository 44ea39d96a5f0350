"""MOVi pipeline (read from synthetic_movi): resizes, chunks, flips, evaluation ids."""
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from conftest import tiny_config
from slotcurri_jax.data import movi
from slotcurri_jax.data import transforms
from slotcurri_jax.data import pipeline

MEAN, STD = np.asarray(transforms.IMAGENET_MEAN), np.asarray(transforms.IMAGENET_STD)


def movi_config(data_dir):
  """32 px stored videos (8 + 8), upsampled to 40 px like MOVi's 128 -> 336."""
  c = tiny_config()
  c.data.data_dir = str(data_dir)
  c.data.synthetic.resolution = 32
  c.data.resolution = 40
  c.data.batch_size = 8
  c.data.preprocess_on_device = False  # the host transforms (device: test_device_preprocess)
  return c


@pytest.fixture(scope='session')
def config(tmp_path_factory):
  c = movi_config(tmp_path_factory.getbasetemp() / 'movi_tfds')
  pipeline.check_available(c)  # generates synthetic_movi
  return c


@pytest.fixture(scope='session')
def sources(config):
  """Stored videos of the train split, uint8 [N, 24, 32, 32, 3]."""
  builder = movi.synthetic_builder(config)
  return np.stack([ex['video'] for ex in tfds.as_numpy(builder.as_dataset(split='train'))])


def torch_bicubic_weights(in_size, out_size):
  """PyTorch's F.interpolate(mode='bicubic', align_corners=False) along one axis,
  element by element: float32 source position and fraction t (as PyTorch's CPU
  kernel computes them), taps clamped to the border, a = -0.75."""
  a = -0.75
  scale = np.float64(np.float32(in_size) / np.float32(out_size))
  weights = np.zeros((out_size, in_size))
  for i in range(out_size):
    src = np.float32(scale * (i + 0.5) - 0.5)
    base = np.floor(src)
    t = np.float64(np.float32(src - base))
    for k in range(-1, 3):
      x = abs(t - k)
      if x <= 1:
        w = ((a + 2) * x - (a + 3)) * x * x + 1
      else:
        w = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
      weights[i, min(max(int(base) + k, 0), in_size - 1)] += w
  return weights


def expected_clip(frames, size):
  """uint8 [T, H, W, 3] -> normalised float [T, size, size, 3], in float64."""
  rows = torch_bicubic_weights(frames.shape[1], size)
  cols = torch_bicubic_weights(frames.shape[2], size)
  out = np.einsum('oh,thwc->towc', rows, frames / 255.0)
  out = np.einsum('pw,towc->topc', cols, out)
  return (np.clip(out, 0, 1) - MEAN) / STD


@pytest.mark.parametrize('in_size,out_size', [(128, 336), (32, 40), (320, 518), (40, 16), (7, 7)])
def test_cubic_weights_match_pytorch_formula(in_size, out_size):
  got = transforms.cubic_weights(in_size, out_size).numpy()
  np.testing.assert_allclose(got, torch_bicubic_weights(in_size, out_size), atol=1e-6)
  np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-6)  # constants stay constant
  # a = -0.75, not TF's Keys a = -0.5: upsampling a step edge overshoots by PyTorch's amount.
  if (in_size, out_size) == (128, 336):
    step = np.repeat([0.0, 1.0], 64)[None, :, None].repeat(2, 0)
    ours = transforms.resize_bicubic(tf.constant(step, tf.float32), transforms.cubic_weights(2, 2),
                               transforms.cubic_weights(128, 336))
    tf_keys = tf.image.resize(step[None], (2, 336), method='bicubic')[0]
    assert np.abs(ours.numpy() - tf_keys.numpy()).max() > 1e-3


def test_nearest_exact_is_half_pixel():
  index = transforms.nearest_exact_indices(128, 336).numpy()
  np.testing.assert_array_equal(index, np.floor((np.arange(336) + 0.5) * 128 / 336).astype(int))
  assert index[10] == 4 and index[2] == 0 and index[-1] == 127
  # The legacy floor(i * in / out) differs.
  assert (index != np.floor(np.arange(336) * 128 / 336)).any()


def _candidates(sources):
  """Every chunk at offsets 0, 4, ..., 20 of every video, resized and normalised:
  ([N * 6, 4, 40, 40, 3], [(video, offset)])."""
  keys = [(v, o) for v in range(len(sources)) for o in range(0, 24, 4)]
  return np.stack([expected_clip(sources[v][o:o + 4], 40) for v, o in keys]), keys


def test_train_batches_shapes_ranges_chunks_and_flips(config, sources):
  candidates, keys = _candidates(sources)
  batches = pipeline.train_iterator(config)
  flips = []
  for _ in range(4):
    batch = next(batches)
    video = batch['video']
    assert set(batch) == {'video'}
    assert video.shape == (8, 4, 40, 40, 3) and video.dtype == np.float32
    assert (video >= (0 - MEAN) / STD - 1e-5).all() and (video <= (1 - MEAN) / STD + 1e-5).all()
    for clip in video:
      # The clip is one video's frames [o, o + 4) with o a multiple of 4, resized,
      # normalised and possibly flipped as a whole (every frame flipped).
      plain = np.abs(candidates - clip).max(axis=(1, 2, 3, 4)) < 2e-5
      flipped = np.abs(candidates[:, :, :, ::-1] - clip).max(axis=(1, 2, 3, 4)) < 2e-5
      assert plain.sum() + flipped.sum() == 1, (plain.sum(), flipped.sum())
      flips.append(bool(flipped.any()))
  assert 0 < sum(flips) < len(flips)  # flip_prob 0.5: both kinds occur


def test_no_flip_when_flip_prob_is_zero(config, sources):
  c = movi_config(config.data.data_dir)
  c.data.flip_prob = 0.0
  candidates, _ = _candidates(sources)
  for clip in next(pipeline.train_iterator(c))['video']:
    assert (np.abs(candidates - clip).max(axis=(1, 2, 3, 4)) < 2e-5).sum() == 1


def test_eval_batches_whole_videos_with_ids(config):
  builder = movi.synthetic_builder(config)
  stored = list(tfds.as_numpy(builder.as_dataset(split='validation')))
  batches = list(pipeline.eval_iterator(config))
  assert len(batches) == 1
  batch = batches[0]
  assert batch['video'].shape == (8, 24, 40, 40, 3) and batch['video'].dtype == np.float32
  assert batch['segmentations'].shape == (8, 24, 40, 40)
  assert batch['segmentations'].dtype == np.int32
  np.testing.assert_array_equal(batch['num_frames'], 24)
  assert batch['padding_mask'].all()
  index = np.floor((np.arange(40) + 0.5) * 32 / 40).astype(int)
  for b, example in enumerate(stored):  # eval order = storage order
    np.testing.assert_allclose(batch['video'][b], expected_clip(example['video'], 40), atol=2e-5)
    ids = example['segmentations'][..., 0][:, index][:, :, index]
    np.testing.assert_array_equal(batch['segmentations'][b], ids)
  assert batch['segmentations'].max() >= 1


def test_eval_pads_the_last_batch_and_limits_videos(config):
  c = movi_config(config.data.data_dir)
  c.data.num_eval_videos = 5
  c.data.eval_batch_size = 4
  batches = list(pipeline.eval_iterator(c))
  assert [b['padding_mask'].tolist() for b in batches] == [[True] * 4, [True, False, False, False]]
  assert (batches[1]['video'][1:] == 0).all() and (batches[1]['segmentations'][1:] == 0).all()


def test_ids_beyond_max_instances_are_an_error(config):
  c = movi_config(config.data.data_dir)
  c.data.max_instances = 2  # the videos have 2-3 objects
  with pytest.raises(ValueError, match=r"video 'validation_\d+' has instance id \d+ >= "
                                       r'config.data.max_instances=2'):
    list(pipeline.eval_iterator(c))
