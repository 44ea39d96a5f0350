"""The input pipelines: one entry point for every dataset of the registry (data/datasets.py).

  check_available(config)          before any compilation: data there, splits non-empty
  train_iterator(config, start_step=k)  infinite host-local numpy training batches
  eval_iterator(config)            finite host-local numpy evaluation batches
  prefetch_to_device(it, mesh, n)  host batches -> global sharded jax.Arrays, n in flight
  batch_shapes(config)             the global batches' shapes, without reading data

Each takes `data=`, the run's `datasets.Dataset` (train.Run.data): its spec and builder
are made once per run. Without it (tests, notebooks) one is made for the call.

Determinism. A training batch is a function of (config.seed, process_index,
step) only, so a job resumed at step k sees exactly the batches the
uninterrupted job saw from step k on:
  * the stream is a sequence of epochs over the host's part of the split;
    epoch e visits the shards in an order drawn from key(seed, process, e), and
    a shuffle buffer seeded from the same key mixes their records;
  * element n of the stream (counting over all epochs) gets its chunk offset,
    flip and crop from stateless ops seeded by key(seed, process, n);
  * resuming at step k starts at epoch (k B) // N and skips (k B) % N
    examples of it (B: host batch, N: host examples) before any frame is
    decoded, so a resume costs at most one epoch of reading and parsing.

Each host reads its own contiguous part of every split (split[a:b]). Records
that fail to decode are reported with their video name, shard and index.
Transient read errors (a flaky network filesystem) are retried with back-off from
the element that failed (`_retrying`, data.read_retries), so they change no batch.
"""
from __future__ import annotations

import collections
import itertools
import math
import re
import time
from typing import Any, Callable, Iterator, Sequence

from absl import logging
import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from slotcurri_jax import errors
from slotcurri_jax import parallel
from slotcurri_jax.data import datasets

EVAL_SPLIT = 'validation'  # MOVi's validation split; YT-VIS's held-out videos
_MAX_CYCLE = 16  # shards read concurrently
_STREAM_TRAIN, _STREAM_EPOCH = 1, 2  # fold-in tags of the two random streams


# --------------------------------------------------------------------------- datasets

def _dataset(config, data: datasets.Dataset | None) -> datasets.Dataset:
  """The run's Dataset, or one made from `config` for this call."""
  return data if data is not None else datasets.Dataset.from_config(config)


def _processes(process_index, process_count) -> tuple[int, int]:
  p = jax.process_index() if process_index is None else process_index
  n = jax.process_count() if process_count is None else process_count
  if not 0 <= p < n:
    raise ValueError(f'process_index={p} not in [0, process_count={n})')
  return p, n


def _host_range(total: int, p: int, n: int) -> tuple[int, int]:
  """Contiguous part p of n of `total` examples; the first total % n parts get one more."""
  size, extra = divmod(total, n)
  start = p * size + min(p, extra)
  return start, start + size + (p < extra)


def _num_examples(builder, split: str, config) -> int:
  splits = builder.info.splits
  if split not in splits:
    raise ValueError(f'{config.data.name} in {builder.data_dir} has no split {split!r} '
                     f'(it has {sorted(splits)}; a generated dataset leaves out an empty split)')
  count = splits[split].num_examples
  if count == 0:
    raise ValueError(f'split {split!r} of {config.data.name} in {builder.data_dir} is empty')
  return count


def _eval_count(builder, config) -> int:
  """Evaluated videos: the first data.num_eval_videos of the split (-1: all; YT-VIS: 210
  of the 300 held out, quirk 11, set in configs/ytvis.py)."""
  count = _num_examples(builder, EVAL_SPLIT, config)
  limit = config.data.num_eval_videos
  if limit >= 0:
    count = min(count, limit)
  if count == 0:
    raise ValueError('config.data.num_eval_videos=0: nothing to evaluate')
  return count


def check_available(config, splits: Sequence[str] = ('train', 'validation'), *,
                    data: datasets.Dataset | None = None) -> None:
  """Raise a clear error unless every split is there and non-empty on this host.

  A missing data_dir or dataset raises FileNotFoundError with the copy command
  (MOVi) or the download page and folder layout (YT-VIS); synthetic_movi is
  generated into data_dir instead (a few minutes at most, once).
  """
  builder = _dataset(config, data).builder
  p, n = _processes(None, None)
  for split in splits:
    total = _eval_count(builder, config) if split == EVAL_SPLIT else (
        _num_examples(builder, split, config))
    start, stop = _host_range(total, p, n)
    if split != EVAL_SPLIT and start == stop:
      raise ValueError(f'split {split!r} has {total} examples, fewer than the {n} processes')


# --------------------------------------------------------------------------- records

class _Records:
  """Examples of split[start:stop] as (shard, index in shard, features).

  `features` are parsed from the tf.train.Example but not decoded (frames stay
  PNG bytes): parsing keeps only the features the transform needs, so the
  shuffle buffer holds a video's frames, not MOVi's 5-8 MB of flows and depth.
  """

  def __init__(self, builder, split: str, start: int, stop: int,
               decoders: tfds.decode.PartialDecoding):
    self.builder = builder
    self.split = f'{split}[{start}:{stop}]'
    instructions = builder.info.splits[self.split].file_instructions if stop > start else []
    self.files = [fi.filename for fi in instructions]
    self.skips = [fi.skip for fi in instructions]
    self.takes = [fi.take for fi in instructions]
    self.size = sum(self.takes)
    features = decoders.extract_features(builder.info.features)
    self._parse = lambda record: features.deserialize_example(record, decoders=decoders.decoders)

  def _shard(self, i) -> tf.data.Dataset:
    files, skips, takes = (tf.constant(self.files, tf.string), tf.constant(self.skips, tf.int64),
                           tf.constant(self.takes, tf.int64))
    records = tf.data.TFRecordDataset(files[i]).skip(skips[i]).take(takes[i])
    return records.enumerate(start=skips[i]).map(
        lambda j, r: (tf.cast(i, tf.int32), j, self._parse(r)))

  def in_order(self) -> tf.data.Dataset:
    return tf.data.Dataset.range(len(self.files)).flat_map(self._shard)

  def epochs(self, key: tf.Tensor, first_epoch: int, shuffle_buffer: int) -> tf.data.Dataset:
    """Epochs first_epoch, first_epoch + 1, ... (forever), each freshly shuffled from key."""
    num_files = len(self.files)

    def epoch(e):
      epoch_key = tf.random.experimental.stateless_fold_in(key, e)
      order = tf.random.experimental.stateless_shuffle(
          tf.range(num_files, dtype=tf.int64), seed=epoch_key)
      examples = tf.data.Dataset.from_tensor_slices(order).interleave(
          self._shard, cycle_length=min(num_files, _MAX_CYCLE), block_length=1,
          num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
      seed = tf.random.stateless_uniform([], epoch_key, 0, 2**31 - 1, dtype=tf.int64)
      return examples.shuffle(max(shuffle_buffer, 1), seed=seed)

    return tf.data.Dataset.range(first_epoch, 2**62).flat_map(epoch)

  def undecodable(self, shard, index, features, error) -> ValueError:
    name = features['metadata']['video_name'].numpy().decode()
    return errors.mark(ValueError(
        f'undecodable record in {self.split} of {self.builder.data_dir}: video {name!r}, '
        f'record {int(index)} of {self.files[int(shard)]}: {tf_message(error)}'))

  def unreadable(self, error: tf.errors.OpError) -> ValueError:
    """The record a failed read of the stream stopped at (its CRC or length is corrupt):
    each file is read again in order, counting records, to name the file and the record."""
    for path in self.files:
      count = 0
      try:
        for _ in tf.data.TFRecordDataset(path):
          count += 1
      except tf.errors.OpError as e:
        return errors.mark(ValueError(
            f'corrupt record in {self.split} of {self.builder.data_dir}: record {count} of '
            f'{path} cannot be read ({tf_message(e)}). Copy that file again (or delete the '
            'dataset folder to regenerate synthetic_movi).'))
    return errors.mark(ValueError(f'reading {self.split} of {self.builder.data_dir} failed: '
                                  f'{tf_message(error)}'))


def tf_message(error: BaseException) -> str:
  """A TensorFlow error's message without its internal function and op names."""
  text = getattr(error, 'message', None) or str(error)
  text = re.sub(r'\{\{function_node [^}]*\}\}\s*', '', text)
  return re.sub(r'\s*\[Op:[^\]]*\].*$', '', text, flags=re.S).strip()


def _find_bad_record(records: _Records, stream: tf.data.Dataset, transform, error):
  """Re-run `transform` eagerly on each element of `stream` (the undecoded
  elements of the failed batch), raise for the first that fails, else re-raise."""
  try:
    for element in stream:
      try:
        transform(*element)
      except tf.errors.OpError as e:
        raise records.undecodable(*element[-3:], e) from e
  except tf.errors.OpError as e:  # the stream itself is unreadable: a corrupt record
    raise records.unreadable(e) from e
  raise error


# --------------------------------------------------------------------------- transient errors

# Errors of a flaky network filesystem (GCS mid-epoch), worth a retry; DataLoss and
# InvalidArgument (a corrupt record) are not.
TRANSIENT_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
                    tf.errors.AbortedError, tf.errors.InternalError, tf.errors.UnknownError)


def _next(iterator):
  """next(iterator): one place for tests to inject read failures."""
  return next(iterator)


def _sleep(seconds: float) -> None:
  time.sleep(seconds)


def _retrying(open_at: Callable[[int], Iterator], records: _Records, config) -> Iterator:
  """Elements of open_at(0); a transient read error reopens the stream at the element that
  failed (open_at(position)) after a back-off, up to data.read_retries times in a row, then
  raises a user error naming the file. Other errors propagate."""
  retries, backoff = int(config.data.read_retries), float(config.data.read_backoff_s)
  position, failures = 0, 0
  iterator = open_at(0)
  while True:
    try:
      element = _next(iterator)
    except StopIteration:
      return
    except TRANSIENT_ERRORS as e:
      failures += 1
      where = next((f for f in records.files if f in e.message), None)
      if failures > retries:
        raise errors.mark(OSError(
            f'reading {where or records.split + " of " + str(records.builder.data_dir)} failed '
            f'{failures} times in a row ({type(e).__name__}: {e.message.splitlines()[0]}). '
            'Check the connection, or copy the data to a local disk and point '
            '--config.data.data_dir at it.')) from e
      delay = backoff * 2 ** (failures - 1)
      logging.warning('reading %s failed (%s: %s); retry %d of %d in %.0f s',
                      where or records.split, type(e).__name__, e.message.splitlines()[0],
                      failures, retries, delay)
      _sleep(delay)
      iterator = open_at(position)
      continue
    failures = 0
    position += 1
    yield element


# --------------------------------------------------------------------------- training

def _host_batch(config, key: str, n: int) -> int:
  """The batch of one of n hosts: config.data.<key> (a global batch) // n."""
  size = config.data[key]
  if size % n:
    raise ValueError(f'config.data.{key}={size} does not split over {n} processes')
  return size // n


def train_iterator(config, *, start_step: int = 0, process_index: int | None = None,
                   process_count: int | None = None, data: datasets.Dataset | None = None
                   ) -> Iterator[dict[str, np.ndarray]]:
  """Infinite host-local training batches {'video': float32 [B_host, T, R, R, 3]}, or with
  config.data.preprocess_on_device raw batches {'frames': uint8, 'size', 'crop', 'flip'}
  (data/device_preprocess.py) that the train step turns into that video.

  B_host = data.batch_size // process_count. The batches from start_step=k are
  those the iterator from step 0 yields after k batches (see module doc).
  """
  p, n = _processes(process_index, process_count)
  batch = _host_batch(config, 'batch_size', n)
  data = _dataset(config, data)
  spec, builder = data.spec, data.builder
  start, stop = _host_range(_num_examples(builder, 'train', config), p, n)
  records = _Records(builder, 'train', start, stop, spec.train_decoders)
  if records.size == 0:
    raise ValueError(f'process {p} of {n} has no training examples in {builder.data_dir}')
  buffer = config.data.shuffle_buffer
  key = tf.constant([config.seed, p], tf.int64)
  epoch_key = tf.random.experimental.stateless_fold_in(key, _STREAM_EPOCH)
  element_key = tf.random.experimental.stateless_fold_in(key, _STREAM_TRAIN)
  first = start_step * batch
  first_epoch, skip = divmod(first, records.size)

  def undecoded():  # (counter, shard, index, features) from element `first` on
    stream = records.epochs(epoch_key, first_epoch, buffer)
    stream = stream.enumerate(start=first_epoch * records.size)
    return stream.map(lambda c, e: (c, *e)).skip(skip)

  def transform(counter, shard, index, features):
    seed = tf.random.experimental.stateless_fold_in(element_key, counter)
    return (spec.train_example_raw if config.data.preprocess_on_device
            else spec.train_example)(features, seed, config)

  def batches_from(b):  # the stream from batch b on
    ds = undecoded().skip(b * batch).map(transform, num_parallel_calls=tf.data.AUTOTUNE,
                                         deterministic=True)
    return ds.batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE).as_numpy_iterator()

  iterator = _retrying(batches_from, records, config)
  for b in itertools.count():
    try:
      out = next(iterator)
    except tf.errors.OpError as e:
      _find_bad_record(records, undecoded().skip(b * batch).take(batch), transform, e)
    yield out


# --------------------------------------------------------------------------- evaluation

def _eval_plan(config, builder, n: int) -> tuple[int, list[tuple[int, int]], int]:
  """(host batch, each host's [start, stop) of the evaluated videos, batches per host:
  the same on every host)."""
  batch = _host_batch(config, 'eval_batch_size', n)
  total = _eval_count(builder, config)
  ranges = [_host_range(total, q, n) for q in range(n)]
  return batch, ranges, math.ceil(max(b - a for a, b in ranges) / batch)


def num_eval_batches(config, process_count: int | None = None, *,
                     data: datasets.Dataset | None = None) -> int:
  """How many batches `eval_iterator` yields (the same on every host)."""
  _, n = _processes(None, process_count)
  return _eval_plan(config, _dataset(config, data).builder, n)[2]


def eval_iterator(config, *, process_index: int | None = None, process_count: int | None = None,
                  data: datasets.Dataset | None = None) -> Iterator[dict[str, np.ndarray]]:
  """Finite host-local evaluation batches of whole videos:

    video          float32 [B_host, T_pad, R, R, 3]
    segmentations  int32 [B_host, T_pad, R, R] ids (0 = background / no instance)
    num_frames     int32 [B_host]
    padding_mask   bool [B_host], False for fillers that pad the last batches

  Every host yields the same number of batches with the same T_pad (MOVi: the
  dataset's 24 frames; YT-VIS: the longest video of the global batch rounded
  up to a multiple of 8; frames past a video's end repeat its last frame, with
  segmentation 0). With config.data.preprocess_on_device, 'video' is replaced by the
  raw keys of data/device_preprocess.py: frames uint8 [B_host, T_pad, P, Q, 3] at the
  stored size (zero-padded to the batch's largest), size, crop, flip.
  """
  p, n = _processes(process_index, process_count)
  data = _dataset(config, data)
  spec, builder = data.spec, data.builder
  batch, ranges, num_batches = _eval_plan(config, builder, n)
  lengths = spec.eval_lengths(builder)  # None: every video has the builder's length
  fixed = builder.info.features['video'].shape[0] if lengths is None else None
  records = _Records(builder, EVAL_SPLIT, *ranges[p], spec.eval_decoders)

  def transform(shard, index, features):
    out = (spec.eval_example_raw if config.data.preprocess_on_device
           else spec.eval_example)(features, config)
    out['video_name'] = features['metadata']['video_name']
    return out

  def videos_from(i):  # the stream from video i on
    return records.in_order().skip(i).map(transform, num_parallel_calls=tf.data.AUTOTUNE,
                                          deterministic=True).prefetch(2).as_numpy_iterator()

  iterator = _retrying(videos_from, records, config)
  for b in range(num_batches):
    videos = []
    for i in range(b * batch, min((b + 1) * batch, records.size)):
      try:
        videos.append(next(iterator))
      except tf.errors.OpError as e:
        _find_bad_record(records, records.in_order().skip(i).take(1), transform, e)
      spec.check_video(videos[-1], videos[-1]['video_name'].decode(), config)
    if lengths is None:
      t_pad = fixed
    else:  # the longest video of this global batch (all hosts), rounded up to a multiple of 8
      longest = max(lengths[i] for a, c in ranges
                    for i in range(a + b * batch, min(a + (b + 1) * batch, c)))
      t_pad = int(math.ceil(longest / 8) * 8)
    if config.data.preprocess_on_device:
      yield _pad_raw_batch(videos, batch, t_pad, config.data.resolution,
                           spec.eval_frame_side(config))
    else:
      yield _pad_batch(videos, batch, t_pad, config.data.resolution)


def eval_positions(config, process_count: int | None = None, *,
                   data: datasets.Dataset | None = None) -> list[np.ndarray]:
  """Per batch of `eval_iterator`: the split index of each row of the global batch (the
  hosts' batches one after the other, in process order), -1 for fillers."""
  _, n = _processes(None, process_count)
  batch, ranges, num_batches = _eval_plan(config, _dataset(config, data).builder, n)
  return [np.asarray([a + i * batch + r if a + i * batch + r < c else -1
                      for a, c in ranges for r in range(batch)]) for i in range(num_batches)]


def _pad_batch(videos: list[dict], batch: int, t_pad: int, size: int) -> dict[str, np.ndarray]:
  out = {'video': np.zeros((batch, t_pad, size, size, 3), np.float32),
         'segmentations': np.zeros((batch, t_pad, size, size), np.int32),
         'num_frames': np.full((batch,), t_pad, np.int32),  # fillers: a valid length
         'padding_mask': np.zeros((batch,), bool)}
  for b, v in enumerate(videos):
    t = int(v['num_frames'])
    if t > t_pad:
      raise ValueError(f'video {v["video_name"].decode()!r} has {t} frames > padded {t_pad}')
    out['video'][b, :t] = v['video']
    out['video'][b, t:] = v['video'][t - 1]  # repeat the last frame
    out['segmentations'][b, :t] = v['segmentations']
    out['num_frames'][b] = t
    out['padding_mask'][b] = True
  return out


def _pad_raw_batch(videos: list[dict], batch: int, t_pad: int, size: int, side: int
                   ) -> dict[str, np.ndarray]:
  """`_pad_batch` for raw videos: frames uint8 at their stored size, zero-padded in space
  to the dataset's `side` (the same on every host, also for a host whose last batch holds
  no video); fillers are black side x side frames."""
  out = {'frames': np.zeros((batch, t_pad, side, side, 3), np.uint8),
         'size': np.tile(np.asarray([side, side, size, size], np.int32), (batch, 1)),
         'crop': np.zeros((batch, 4), np.int32),
         'flip': np.zeros((batch,), bool),
         'segmentations': np.zeros((batch, t_pad, size, size), np.int32),
         'num_frames': np.full((batch,), t_pad, np.int32),
         'padding_mask': np.zeros((batch,), bool)}
  for b, v in enumerate(videos):
    t = int(v['num_frames'])
    if t > t_pad:
      raise ValueError(f'video {v["video_name"].decode()!r} has {t} frames > padded {t_pad}')
    h, w = v['frames'].shape[1:3]
    if max(h, w) > side:
      raise ValueError(f'video {v["video_name"].decode()!r} has {h}x{w} frames, larger than '
                       f'the {side}x{side} its dataset declares (DatasetSpec.eval_frame_side)')
    out['frames'][b, :t, :h, :w] = v['frames']
    out['frames'][b, t:, :h, :w] = v['frames'][t - 1]  # repeat the last frame
    for key in ('size', 'crop', 'flip'):
      out[key][b] = v[key]
    out['segmentations'][b, :t] = v['segmentations']
    out['num_frames'][b] = t
    out['padding_mask'][b] = True
  return out


# --------------------------------------------------------------------------- shapes

def batch_shapes(config, *, data: datasets.Dataset | None = None) -> tuple[dict, dict]:
  """(train, eval): the global batches the iterators above yield (all hosts together), as
  jax.ShapeDtypeStruct leaves, read from the config and the DatasetSpec only (no data):
  the shapes the train and eval steps are compiled for (tools/aot.py). Eval is the
  longest evaluation batch (DatasetSpec.max_eval_frames)."""
  spec = _dataset(config, data).spec
  struct = jax.ShapeDtypeStruct
  b, t, r = config.data.batch_size, config.data.train_clip_len, config.data.resolution
  e, t_eval = config.data.eval_batch_size, spec.max_eval_frames(config)

  def frames(n, frames_, side):
    if not config.data.preprocess_on_device:
      return {'video': struct((n, frames_, r, r, 3), np.float32)}
    return {'frames': struct((n, frames_, side, side, 3), np.uint8),
            'size': struct((n, 4), np.int32), 'crop': struct((n, 4), np.int32),
            'flip': struct((n,), np.bool_)}

  train = frames(b, t, spec.train_frame_side(config))
  evaluation = dict(frames(e, t_eval, spec.eval_frame_side(config)),
                    segmentations=struct((e, t_eval, r, r), np.int32),
                    num_frames=struct((e,), np.int32), padding_mask=struct((e,), np.bool_))
  return train, evaluation


# --------------------------------------------------------------------------- device transfer

def prefetch_to_device(iterator: Iterator[Any], mesh, size: int) -> Iterator[Any]:
  """Host batches -> global jax.Arrays sharded over the mesh (parallel.host_to_global),
  keeping `size` batches in flight so the transfer overlaps the previous step."""
  queue: collections.deque = collections.deque()

  def fill(count):
    for host_batch in itertools.islice(iterator, count):
      queue.append(parallel.host_to_global(host_batch, mesh))

  fill(max(size, 1))
  while queue:
    yield queue.popleft()
    fill(1)
