"""What a dataset declares once, for the input pipeline and evaluation to call.

Each dataset module (data/movi.py, data/ytvis.py, data/video_folder.py) builds a `DatasetSpec`; the registry
(data/datasets.py) maps `config.data.name` to it. `pipeline.py` and `evaluate.py` hold
no dataset names: adding a dataset is one module with its spec, one registry entry
and a `configs/<name>.py`.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Optional

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """A dataset's interface.

  builder(config): the prepared TFDS builder; raises FileNotFoundError that says how to
    get the data (or generates it, synthetic_movi).
  train_decoders, eval_decoders: TFDS decoders of the features each split needs.
  train_example(example, seed, config): one training clip {'video': float32
    [clip_len, R, R, 3]} (host path); train_example_raw: the same clip as uint8 frames at
    the stored size plus its geometry (data/device_preprocess.py).
  eval_example(example, config) / eval_example_raw: one whole video with its
    segmentations [T, R, R] int32 ids, num_frames and what `check_video` reads.
  check_video(video, video_name, config): raise on labels the config cannot hold.
  eval_lengths(builder): per-video lengths of the evaluation split in order, or None
    when every video has the builder's fixed length.
  eval_frame_side(config): the side S of the stored evaluation frames that raw batches
    carry (each frame fits in S x S; batches are padded to it on every host).
  train_frame_side(config): the side of the square uint8 frames a raw training clip
    ships (the stored frame, or the window its crop reads).
  max_eval_frames(config): the frames T_pad of the longest evaluation batch.
  These three give the batches' shapes without opening the data (tools/aot.py).
  metric_convention: 'movi' | 'ytvis', how per-frame metrics count frames (metrics.py).
  eval_videos(builder): the evaluated videos in split order as dicts with 'name' and
    'has_masks'; evaluation then writes each one's predicted ids to a file and scores only
    those with masks. None: every video has labels and no mask files are written.
  """
  name: str
  builder: Callable[[Any], Any]
  train_decoders: Any
  eval_decoders: Any
  train_example: Callable[[dict, tf.Tensor, Any], dict]
  train_example_raw: Callable[[dict, tf.Tensor, Any], dict]
  eval_example: Callable[[dict, Any], dict]
  eval_example_raw: Callable[[dict, Any], dict]
  check_video: Callable[[dict, str, Any], None]
  eval_lengths: Callable[[Any], Optional[list]]
  eval_frame_side: Callable[[Any], int]
  train_frame_side: Callable[[Any], int]
  max_eval_frames: Callable[[Any], int]
  metric_convention: str
  eval_videos: Optional[Callable[[Any], list]] = None


LOCAL_TFDS = '~/tensorflow_datasets'  # default data_dir of generated / prepared datasets


def data_dir(config, default: str) -> str:
  """config.data.data_dir, else `default` (a dataset's usual place)."""
  if config.data.data_dir:
    return config.data.data_dir
  return os.path.expanduser(default)
