"""Data errors: an unreachable bucket fails before compiling; transient read errors are retried."""
import pathlib
import socket

import numpy as np
import pytest
import tensorflow as tf

from cli_helpers import error_lines, run_main, tiny_data_dir  # noqa: F401  (a fixture)

from slotcurri_jax.data import datasets
from slotcurri_jax.data import pipeline


def test_unreachable_bucket_is_one_message_before_compiling(capsys, tmp_path, monkeypatch):
  def offline(*args, **kwargs):
    raise socket.gaierror(-2, 'Name or service not known')

  monkeypatch.setattr(socket, 'getaddrinfo', offline)
  status, _, err = run_main(capsys, '--config=configs/movi_c.py', f'--workdir={tmp_path}/w')
  assert status == 1 and 'Traceback' not in err
  assert error_lines(err) == [
      'error: config.data.data_dir=gs://kubric-public/tfds cannot be reached from this machine '
      '(no route to Google Cloud Storage: [Errno -2] Name or service not known).',
      'Copy movi_c once to a local disk (it is ~50-80 GB; reading the bucket mid-training is '
      'fragile):',
      '  mkdir -p /data/tfds/movi_c && gsutil -m cp -r gs://kubric-public/tfds/movi_c/128x128 '
      '/data/tfds/movi_c/',
      'then pass --config.data.data_dir=/data/tfds (or read the bucket directly with '
      '--config.data.data_dir=gs://kubric-public/tfds).']
  assert not (tmp_path / 'w').exists()


def _config(data_dir):
  import tiny_cli_config  # pylint: disable=import-outside-toplevel
  config = tiny_cli_config.get_config()
  config.data.data_dir = str(data_dir)
  config.data.read_retries = 2
  return config


def _flaky(monkeypatch, failures: int, at_call: int, path: str = 'gs://bucket/shard-00000'):
  """Make the reader raise `failures` transient errors in a row from its `at_call`-th read."""
  real, calls, sleeps = pipeline._next, [0], []

  def flaky_next(iterator):
    calls[0] += 1
    if at_call <= calls[0] < at_call + failures:
      raise tf.errors.UnavailableError(None, None, f'GCS: 503 reading {path}')
    return real(iterator)

  monkeypatch.setattr(pipeline, '_next', flaky_next)
  monkeypatch.setattr(pipeline, '_sleep', sleeps.append)
  return sleeps


def test_transient_read_errors_are_retried_without_changing_a_batch(tiny_data_dir, monkeypatch,
                                                                   caplog):
  config = _config(tiny_data_dir)
  want = [b['frames'] for _, b in zip(range(3), pipeline.train_iterator(config))]
  sleeps = _flaky(monkeypatch, failures=2, at_call=2)
  got = [b['frames'] for _, b in zip(range(3), pipeline.train_iterator(config))]
  assert sleeps == [2.0, 4.0]  # back-off doubles
  for a, b in zip(want, got):
    np.testing.assert_array_equal(a, b)
  assert 'retry 1 of 2 in 2 s' in caplog.text and 'retry 2 of 2 in 4 s' in caplog.text
  eval_want = next(pipeline.eval_iterator(config))['frames']
  _flaky(monkeypatch, failures=1, at_call=3)
  np.testing.assert_array_equal(next(pipeline.eval_iterator(config))['frames'], eval_want)


def test_persistent_read_errors_give_up_naming_the_file(tiny_data_dir, monkeypatch):
  config = _config(tiny_data_dir)
  shard = datasets.Dataset.from_config(config).builder.info.splits['train[0:8]'].file_instructions[0].filename
  _flaky(monkeypatch, failures=100, at_call=1, path=shard)
  with pytest.raises(OSError) as error:
    next(pipeline.train_iterator(config))
  assert str(error.value).startswith(
      f'reading {shard} failed 3 times in a row (UnavailableError: GCS: 503 reading {shard}). '
      'Check the connection, or copy the data to a local disk')


def test_a_corrupt_record_is_named_by_file_and_record(tiny_data_dir, tmp_path):
  """4 KiB of random bytes in the middle of a TFRecord file (its size unchanged): the error
  names the file and the record, without TensorFlow's op names."""
  import shutil
  config = _config(tiny_data_dir)
  source = pathlib.Path(datasets.Dataset.from_config(config).builder.data_dir)
  copy = tmp_path / source.relative_to(tiny_data_dir)
  shutil.copytree(source, copy)
  shard = copy / 'synthetic_movi-train.tfrecord-00000-of-00001'
  length = shard.stat().st_size
  with open(shard, 'r+b') as f:
    f.seek(length // 2)
    f.write(np.random.default_rng(0).bytes(4096))
  config.data.data_dir = str(tmp_path)
  with pytest.raises(ValueError) as error:
    for _ in zip(range(4), pipeline.train_iterator(config)):
      pass
  text = str(error.value)
  assert text.startswith(f'corrupt record in train[0:8] of {copy}: record ')
  assert f' of {shard} cannot be read (corrupted record at ' in text
  assert 'Op:' not in text and 'function_node' not in text
