"""pipeline: determinism and resume, per-host parts, global sharded batches, errors."""
import shutil

import jax
import numpy as np
import pytest
import tensorflow as tf
from jax.sharding import PartitionSpec as P

from conftest import tiny_config
from slotcurri_jax import parallel
from slotcurri_jax.data import movi
from slotcurri_jax.data import pipeline


def _config(data_dir, **data):
  c = tiny_config()  # 16 px, 8 + 8 videos of 24 frames, batch 4
  c.data.data_dir = str(data_dir)
  c.data.preprocess_on_device = False  # batches hold 'video' (device: test_device_preprocess)
  for key, value in data.items():
    c.data[key] = value
  return c


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  root = tmp_path_factory.getbasetemp() / 'pipeline_tfds'
  pipeline.check_available(_config(root))
  return root


def _take(iterator, n):
  return [next(iterator)['video'] for _ in range(n)]


def test_resume_equals_skipping_batches(data_dir):
  config = _config(data_dir)  # 8 videos, batch 4: an epoch is 2 steps
  reference = _take(pipeline.train_iterator(config), 7)
  again = _take(pipeline.train_iterator(config), 7)
  for a, b in zip(reference, again):
    np.testing.assert_array_equal(a, b)
  for k in (1, 2, 3, 5):  # inside and across epoch boundaries
    resumed = _take(pipeline.train_iterator(config, start_step=k), 7 - k)
    for step, batch in enumerate(resumed, start=k):
      np.testing.assert_array_equal(batch, reference[step], err_msg=f'start_step={k}')
  # Epochs are reshuffled, and the seed matters.
  assert not all(np.array_equal(a, b) for a, b in zip(reference[:2], reference[2:4]))
  config.seed = 1
  other = _take(pipeline.train_iterator(config), 2)
  assert not np.array_equal(other[0], reference[0])


def test_each_process_reads_its_own_part(data_dir):
  assert [pipeline._host_range(10, p, 3) for p in range(3)] == [(0, 4), (4, 7), (7, 10)]
  config = _config(data_dir)
  parts = [next(pipeline.train_iterator(config, process_index=p, process_count=2))['video']
           for p in range(2)]
  assert parts[0].shape == parts[1].shape == (2, 4, 16, 16, 3)  # batch 4 over 2 hosts
  assert not np.array_equal(parts[0], parts[1])
  config.data.num_eval_videos = 5
  evals = [list(pipeline.eval_iterator(config, process_index=p, process_count=2))
           for p in range(2)]
  assert len(evals[0]) == len(evals[1]) == 1  # every host the same number of batches
  assert evals[0][0]['padding_mask'].tolist() == [True, True, True, False]
  assert evals[1][0]['padding_mask'].tolist() == [True, True, False, False]
  with pytest.raises(ValueError, match='batch_size=4 does not split over 3 processes'):
    next(pipeline.train_iterator(config, process_index=0, process_count=3))


def test_global_batches_sharded_over_8_devices(data_dir):
  assert jax.device_count() == 8
  config = _config(data_dir, batch_size=8)
  mesh = parallel.create_mesh()
  host = next(pipeline.train_iterator(config))
  batches = pipeline.prefetch_to_device(pipeline.train_iterator(config), mesh, 2)
  first = next(batches)
  video = first['video']
  assert video.shape == (8, 4, 16, 16, 3)
  assert video.sharding.spec == P(('data', 'fsdp'))
  assert len(video.addressable_shards) == 8
  assert all(s.data.shape == (1, 4, 16, 16, 3) for s in video.addressable_shards)
  np.testing.assert_array_equal(np.asarray(video), host['video'])
  assert next(batches)['video'].shape == (8, 4, 16, 16, 3)
  evals = pipeline.prefetch_to_device(pipeline.eval_iterator(config), mesh, 1)
  batch = next(evals)
  assert batch['segmentations'].shape == (8, 24, 16, 16)
  assert batch['segmentations'].dtype == np.int32 and batch['padding_mask'].dtype == bool
  assert batch['num_frames'].sharding.spec == P(('data', 'fsdp'))


def test_movi_reader_reads_prepared_files(data_dir, tmp_path):
  """movi_c is read with tfds.builder_from_directory: point it at synthetic_movi's files."""
  source = movi.synthetic_builder(_config(data_dir)).data_dir
  shutil.copytree(source, tmp_path / 'movi_c' / '128x128' / '1.0.0')
  config = _config(tmp_path, name='movi_c')
  pipeline.check_available(config)
  np.testing.assert_array_equal(next(pipeline.train_iterator(config))['video'],
                                next(pipeline.train_iterator(_config(data_dir)))['video'])
  with pytest.raises(ValueError, match=r"movi_c in .* has no split 'test'"):
    pipeline.check_available(config, splits=('test',))


def test_missing_data_dir_and_dataset_name_the_path_and_the_fix(tmp_path):
  with pytest.raises(FileNotFoundError, match=r'(?s)data_dir=.*nowhere does not exist.*gsutil -m '
                                              r'cp -r gs://kubric-public/tfds/movi_e/128x128'):
    pipeline.check_available(_config(tmp_path / 'nowhere', name='movi_e'))
  with pytest.raises(FileNotFoundError, match=r'(?s)movi_c is not in .*movi_c/128x128/1.0.0'
                                              r'/dataset_info.json.*gsutil'):
    pipeline.check_available(_config(tmp_path, name='movi_c'))
  config = _config(tmp_path, name='ytvis')
  config.data.ytvis.manual_dir = str(tmp_path / 'no_ytvis')
  with pytest.raises(FileNotFoundError, match=r'(?s)youtube-vos.org/dataset/vis.*'
                                              r'train/JPEGImages/<video>/<frame>.jpg'):
    pipeline.check_available(config)


def test_empty_split_is_an_error_not_a_hang(data_dir, tmp_path):
  config = _config(tmp_path)
  config.data.synthetic.num_validation = 0
  with pytest.raises(ValueError, match=r"synthetic_movi in .* has no split 'validation'"):
    pipeline.check_available(config)
  with pytest.raises(ValueError, match="has no split 'validation'"):
    list(pipeline.eval_iterator(config))
  # A host whose part of the split is empty stops instead of waiting forever.
  config = _config(data_dir, batch_size=16)
  with pytest.raises(ValueError, match='process 9 of 16 has no training examples'):
    next(pipeline.train_iterator(config, process_index=9, process_count=16))
  config.data.num_eval_videos = 0
  with pytest.raises(ValueError, match='nothing to evaluate'):
    next(pipeline.eval_iterator(config))


def _corrupt(data_dir, tmp_path, split, index):
  """A copy of the dataset whose video `index` of `split` has unreadable frames."""
  config = _config(data_dir)
  source = movi.synthetic_builder(config).data_dir
  copy = tmp_path / 'bad'
  target = copy / source.split('/pipeline_tfds/')[1]
  shutil.copytree(source, target)
  files = sorted(str(f) for f in target.glob(f'*-{split}.tfrecord-*'))
  seen = 0
  for name in files:
    records = [r.numpy() for r in tf.data.TFRecordDataset(name)]
    for j, record in enumerate(records):
      if seen == index:
        example = tf.train.Example.FromString(record)
        frames = example.features.feature['video'].bytes_list.value
        for f in range(len(frames)):
          frames[f] = b'not a png'
        records[j] = example.SerializeToString()
        with tf.io.TFRecordWriter(name) as writer:
          for r in records:
            writer.write(r)
        return _config(copy)
      seen += 1
  raise AssertionError('no such record')


def test_undecodable_record_is_named(data_dir, tmp_path):
  config = _corrupt(data_dir, tmp_path, 'train', 5)
  batches = pipeline.train_iterator(config)
  with pytest.raises(ValueError, match=r"undecodable record in train\[0:8\] of .*: video "
                                       r"'train_000005', record 5 of .*train.tfrecord"):
    for _ in range(2):  # an epoch
      next(batches)
  config = _corrupt(data_dir, tmp_path / 'eval', 'validation', 2)
  with pytest.raises(ValueError, match=r"video 'validation_000002', record 2 of "):
    list(pipeline.eval_iterator(config))


@pytest.mark.parametrize('on_device', [True, False])
def test_batch_shapes_are_the_batches_the_iterators_yield(data_dir, on_device):
  """What tools/aot.py compiles for, read from the config alone, is what training feeds."""
  config = _config(data_dir, preprocess_on_device=on_device)
  train_shapes, eval_shapes = pipeline.batch_shapes(config)

  def layout(batch):
    return {k: (tuple(np.shape(v)), np.asarray(v).dtype) for k, v in batch.items()}

  expected = {k: (v.shape, np.dtype(v.dtype)) for k, v in train_shapes.items()}
  assert layout(next(pipeline.train_iterator(config))) == expected
  evaluation = {k: v for k, v in next(pipeline.eval_iterator(config)).items()
                if k != 'video_name'}
  assert layout(evaluation) == {k: (v.shape, np.dtype(v.dtype)) for k, v in eval_shapes.items()}


def test_process_0_prepares_the_dataset_before_the_others(monkeypatch):
  """On several processes a shared data_dir is built once: process 0 prepares, the others
  wait at a barrier, then find it prepared (or prepare their own disk's)."""
  import dataclasses
  from jax.experimental import multihost_utils
  from slotcurri_jax.data import datasets
  calls = []
  spec = dataclasses.replace(datasets.DATASETS['synthetic_movi'],
                             builder=lambda config: calls.append('prepare') or 'builder')
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  monkeypatch.setattr(multihost_utils, 'sync_global_devices', lambda name: calls.append('wait'))
  for index, order in ((0, ['prepare', 'wait']), (1, ['wait', 'prepare'])):
    monkeypatch.setattr(jax, 'process_index', lambda: index)
    calls.clear()
    assert datasets.Dataset(config=tiny_config(), spec=spec).builder == 'builder'
    assert calls == order
