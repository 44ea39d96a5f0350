"""synthetic_movi: MOVi's feature spec, determinism, object counts, occlusion, ids."""
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from slotcurri_jax.data import synthetic_movi

SETTINGS = dict(resolution=32, num_frames=24, min_objects=3, max_objects=5, difficulty=0.5,
                num_train=4, num_validation=2, seed=0)


@pytest.fixture(scope='session')
def built(tmp_path_factory):
  data_dir = tmp_path_factory.getbasetemp() / 'synthetic_spec_tfds'
  return synthetic_movi.prepare(SETTINGS, str(data_dir))


def _movi_spec(t, h, w):
  """MOVi-C's features (kubric challenges/movi/movi_c.py), written out by hand:
  name -> (shape, dtype) of the decoded tensors; None = ragged."""
  n = None
  return {
      'video': ((t, h, w, 3), tf.uint8),
      'segmentations': ((t, h, w, 1), tf.uint8),
      'forward_flow': ((t, h, w, 2), tf.uint16),
      'backward_flow': ((t, h, w, 2), tf.uint16),
      'depth': ((t, h, w, 1), tf.uint16),
      'background': ((), tf.string),
      'metadata/video_name': ((), tf.string),
      'metadata/width': ((), tf.int32),
      'metadata/height': ((), tf.int32),
      'metadata/num_frames': ((), tf.int32),
      'metadata/num_instances': ((), tf.uint16),
      'metadata/depth_range': ((2,), tf.float32),
      'metadata/forward_flow_range': ((2,), tf.float32),
      'metadata/backward_flow_range': ((2,), tf.float32),
      'instances/mass': ((n,), tf.float32),
      'instances/friction': ((n,), tf.float32),
      'instances/restitution': ((n,), tf.float32),
      'instances/positions': ((n, t, 3), tf.float32),
      'instances/quaternions': ((n, t, 4), tf.float32),
      'instances/velocities': ((n, t, 3), tf.float32),
      'instances/angular_velocities': ((n, t, 3), tf.float32),
      'instances/bboxes_3d': ((n, t, 8, 3), tf.float32),
      'instances/image_positions': ((n, t, 2), tf.float32),
      'instances/bboxes': ((n, n, 4), tf.float32),
      'instances/bbox_frames': ((n, n), tf.int32),
      'instances/visibility': ((n, t), tf.uint16),
      'instances/asset_id': ((n,), tf.string),
      'instances/category': ((n,), tf.int64),
      'instances/scale': ((n,), tf.float32),
      'camera/focal_length': ((), tf.float32),
      'camera/sensor_width': ((), tf.float32),
      'camera/field_of_view': ((), tf.float32),
      'camera/positions': ((t, 3), tf.float32),
      'camera/quaternions': ((t, 4), tf.float32),
      'events/collisions/instances': ((n, 2), tf.uint16),
      'events/collisions/frame': ((n,), tf.int32),
      'events/collisions/force': ((n,), tf.float32),
      'events/collisions/position': ((n, 3), tf.float32),
      'events/collisions/image_position': ((n, 2), tf.float32),
      'events/collisions/contact_normal': ((n, 3), tf.float32),
  }


def _flatten(tree, prefix=''):
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flatten(value, f'{prefix}{key}/'))
    else:
      out[prefix + key] = value
  return out


def test_feature_spec_is_movis(built):
  info = _flatten(built.info.features.get_tensor_info())
  got = {k: (tuple(v.shape), v.tf_dtype) for k, v in info.items()}
  assert got == _movi_spec(24, 32, 32)
  # Frames are stored PNG-encoded like MOVi's (the reader decodes bytes, not raw tensors).
  assert isinstance(built.info.features['video'], tfds.features.Video)
  shard = built.info.splits['train'].file_instructions[0].filename
  record = next(iter(tf.data.TFRecordDataset(shard)))
  example = tf.train.Example.FromString(record.numpy()).features.feature
  for key in ('video', 'segmentations', 'depth'):
    frames = example[key].bytes_list.value
    assert len(frames) == 24 and all(f.startswith(b'\x89PNG') for f in frames)
  assert built.info.features['instances']['category'].names[13] == 'None'
  assert set(built.info.splits) == {'train', 'validation'}
  assert built.info.splits['train'].num_examples == 4
  assert built.info.splits['validation'].num_examples == 2


def test_build_is_deterministic_and_seeded(built, tmp_path):
  again = synthetic_movi.prepare(dict(SETTINGS, num_train=2), str(tmp_path / 'again'))
  other = synthetic_movi.prepare(dict(SETTINGS, num_train=2, seed=1), str(tmp_path / 'other'))
  for split in ('train', 'validation'):
    first = list(tfds.as_numpy(built.as_dataset(split=f'{split}[:2]')))
    second = list(tfds.as_numpy(again.as_dataset(split=split)))
    third = list(tfds.as_numpy(other.as_dataset(split=split)))
    for a, b, c in zip(first, second, third):
      assert a['metadata']['video_name'] == b['metadata']['video_name']
      np.testing.assert_array_equal(a['video'], b['video'])
      np.testing.assert_array_equal(a['segmentations'], b['segmentations'])
      np.testing.assert_array_equal(a['forward_flow'], b['forward_flow'])
      assert not np.array_equal(a['video'], c['video'])
  # Settings are in the config name: different settings never share a directory.
  assert again.builder_config.name != built.builder_config.name != other.builder_config.name


def test_object_counts_respect_the_range():
  for lo, hi in ((3, 5), (23, 23)):
    config = synthetic_movi.config_from_settings(**dict(SETTINGS, min_objects=lo, max_objects=hi))
    counts = [synthetic_movi.render_example(config, 'train', i)['metadata']['num_instances']
              for i in range(12 if hi < 23 else 1)]
    assert all(lo <= n <= hi for n in counts), counts
  assert len(set(counts)) == 1
  with pytest.raises(ValueError, match='max_objects=24'):
    synthetic_movi.config_from_settings(max_objects=24)


def test_occlusion_nearest_object_wins():
  """Where two silhouettes overlap, the segmentation shows the nearer object."""
  config = synthetic_movi.config_from_settings(**SETTINGS)
  overlapping = 0
  for index in range(4):
    example = synthetic_movi.render_example(config, 'train', index)
    objects, _, _ = synthetic_movi.sample_scene(config, 'train', index)
    # Instance i+1's depth is its positions[:, 2]: match scene objects to ids by depth.
    depths = [inst['positions'][0, 2] for inst in example['instances']]
    ids = [1 + int(np.argmin(np.abs(np.asarray(depths) - np.float32(o.depth)))) for o in objects]
    assert sorted(ids) == list(range(1, len(objects) + 1))
    shapes = np.stack([synthetic_movi.silhouette(o, config.resolution) for o in objects])
    two = shapes.sum(axis=0) >= 2
    overlapping += int(two.sum())
    depth = np.where(shapes, np.asarray([o.depth for o in objects])[:, None, None, None], np.inf)
    nearest = np.asarray(ids)[np.argmin(depth, axis=0)]
    seg = example['segmentations'][..., 0]
    np.testing.assert_array_equal(seg[two], nearest[two])
    covered = shapes.any(axis=0)
    np.testing.assert_array_equal(seg[covered], nearest[covered])
    assert (seg[~covered] == 0).all()
  assert overlapping > 0


def test_ids_contiguous_and_sorted_by_visibility():
  config = synthetic_movi.config_from_settings(**dict(SETTINGS, difficulty=1.0))
  for index in range(6):
    example = synthetic_movi.render_example(config, 'validation', index)
    seg = example['segmentations']
    visibility = np.asarray([inst['visibility'].sum() for inst in example['instances']])
    assert len(visibility) == example['metadata']['num_instances']
    assert (np.diff(visibility.astype(np.int64)) <= 0).all()  # MOVi: most visible first
    visible = int((visibility > 0).sum())
    assert set(np.unique(seg)) - {0} == set(range(1, visible + 1))
    for i, inst in enumerate(example['instances']):
      np.testing.assert_array_equal(inst['visibility'], (seg[..., 0] == i + 1).sum(axis=(1, 2)))
      assert list(inst['bbox_frames']) == list(np.nonzero(inst['visibility'])[0])
      assert len(inst['bboxes']) == len(inst['bbox_frames'])
    assert example['video'].dtype == np.uint8 and example['video'].shape == (24, 32, 32, 3)
    assert example['video'].std() > 5  # textured, not flat


def test_background_is_textured():
  config = synthetic_movi.config_from_settings(**SETTINGS)
  for index in range(3):
    _, background, _ = synthetic_movi.sample_scene(config, 'train', index)
    # Not flat: neighbouring pixels differ and the image spans a range of values.
    assert np.abs(np.diff(background, axis=0)).mean() > 1e-3
    assert np.ptp(background) > 0.1
