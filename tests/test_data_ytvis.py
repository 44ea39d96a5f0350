"""YouTube-VIS builder and transforms on a tiny fake YouTube-VIS 2021 folder."""
import copy
import io
import json
import pathlib
import shutil

import numpy as np
import PIL.Image
import pytest
import tensorflow as tf

from conftest import tiny_config
from slotcurri_jax.data import transforms
from slotcurri_jax.data import pipeline
from slotcurri_jax.data import ytvis

MEAN, STD = np.asarray(transforms.IMAGENET_MEAN), np.asarray(transforms.IMAGENET_STD)
SIZE = 12  # model resolution
SHORT = 16  # pre-pass short side


# --------------------------------------------------------------------------- fake data

def rle_counts(mask):
  """Run lengths over the column-major pixel order, zeros first."""
  flat = mask.T.reshape(-1).astype(np.int64)
  change = np.nonzero(np.diff(flat))[0] + 1
  bounds = np.concatenate([[0], change, [flat.size]])
  counts = np.diff(bounds).tolist()
  return [0] + counts if flat[0] else counts


def rle_string(counts):
  """COCO's compressed counts string (inverse of ytvis._rle_counts_from_string)."""
  out = []
  for i, value in enumerate(counts):
    x = value - counts[i - 2] if i > 2 else value
    more = True
    while more:
      c = x & 0x1F
      x >>= 5
      more = (x != -1) if (c & 0x10) else (x != 0)
      if more:
        c |= 0x20
      out.append(chr(c + 48))
  return ''.join(out)


def _blob(h, w, cy, cx, r):
  yy, xx = np.mgrid[:h, :w]
  return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)


def _video(rng, vid, name, h, w, frames, static, instances):
  """instances: list of (format, [mask or None per frame])."""
  if static:
    images = np.repeat(rng.integers(0, 256, (1, h, w, 3)), frames, axis=0).astype(np.uint8)
  else:
    images = rng.integers(0, 256, (frames, h, w, 3)).astype(np.uint8)
  anns = []
  for k, (fmt, masks) in enumerate(instances):
    segs = []
    for mask in masks:
      if mask is None:
        segs.append(None)
      elif fmt == 'rle':
        segs.append({'size': [h, w], 'counts': rle_counts(mask)})
      elif fmt == 'rle_string':
        segs.append({'size': [h, w], 'counts': rle_string(rle_counts(mask))})
      else:  # polygon: the mask's bounding rectangle (masks are rectangles then)
        ys, xs = np.nonzero(mask)
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        segs.append([[x0, y0, x1, y0, x1, y1, x0, y1]])
    anns.append({'id': vid * 10 + k, 'video_id': vid, 'category_id': 3 + k, 'iscrowd': 0,
                 'segmentations': segs, 'height': h, 'width': w})
  return {'id': vid, 'name': name, 'h': h, 'w': w, 'images': images, 'annotations': anns,
          'masks': [[m for m in masks] for _, masks in instances]}


def _rect(h, w, y0, y1, x0, x1):
  m = np.zeros((h, w), np.uint8)
  m[y0:y1, x0:x1] = 1
  return m


def fake_videos(overlapping=False):
  rng = np.random.default_rng(0)
  if overlapping:
    a, b = _rect(20, 30, 2, 12, 3, 20), _rect(20, 30, 8, 18, 10, 25)
    return [_video(rng, 1, 'train_v', 20, 30, 4, True, []),
            _video(rng, 2, 'overlap_v', 20, 30, 4, False, [('rle', [a] * 4), ('rle', [b] * 4)])]
  blob = _blob(24, 40, 10, 20, 6)
  return [  # file order deliberately differs from id order
      _video(rng, 12, 'b_portrait', 40, 24, 4, True,
             [('polygon', [_rect(40, 24, 5, 20, 3, 15)] * 4)]),
      _video(rng, 11, 'a_landscape', 24, 40, 5, True, [('rle', [blob] * 5)]),
      _video(rng, 15, 'c_short', 24, 32, 3, True, []),
      _video(rng, 14, 'd_heldout', 24, 40, 9, False, [
          ('rle_string', [_blob(24, 40, 8 + t, 10 + 2 * t, 5) for t in range(9)]),
          ('rle', [None, None] + [_blob(24, 40, 5, 34, 3)] * 6 + [None])]),
      _video(rng, 13, 'e_heldout', 30, 24, 3, False,
             [('polygon', [_rect(30, 24, 4, 14, 2, 10), None, _rect(30, 24, 6, 20, 5, 20)])]),
  ]


def write_fake_ytvis(root, videos):
  images_dir = root / 'train' / 'JPEGImages'
  meta = []
  for v in videos:
    (images_dir / v['name']).mkdir(parents=True)
    names = []
    for t, image in enumerate(v['images']):
      name = f'{v["name"]}/{5 * t:05d}.jpg'
      PIL.Image.fromarray(image).save(images_dir / name, quality=95)
      names.append(name)
    meta.append({'id': v['id'], 'height': v['h'], 'width': v['w'], 'length': len(names),
                 'file_names': names})
  annotations = [a for v in videos for a in v['annotations']]
  (root / 'train' / 'instances.json').write_text(json.dumps(
      {'videos': meta, 'annotations': annotations, 'categories': [{'id': 3}, {'id': 4}]}))


def ytvis_config(data_dir, manual_dir, num_heldout=2):
  c = tiny_config()
  c.data.name = 'ytvis'
  c.data.data_dir = str(data_dir)
  c.data.resolution = SIZE
  c.data.max_instances = 25
  c.data.flip_prob = 0.0
  c.data.batch_size = 4
  c.data.eval_batch_size = 2
  c.data.ytvis.manual_dir = str(manual_dir)
  c.data.ytvis.num_heldout = num_heldout
  c.data.ytvis.prepass_short_side = SHORT
  c.data.preprocess_on_device = False  # the host transforms (device: test_device_preprocess)
  return c


@pytest.fixture(scope='session')
def fake(tmp_path_factory):
  root = tmp_path_factory.getbasetemp()
  videos = fake_videos()
  write_fake_ytvis(root / 'ytvis_raw', videos)
  config = ytvis_config(root / 'ytvis_tfds', root / 'ytvis_raw')
  pipeline.check_available(config)  # builds the TFDS dataset from the raw folder
  frames = {v['name']: np.stack([np.asarray(PIL.Image.open(
      root / 'ytvis_raw' / 'train' / 'JPEGImages' / f'{v["name"]}/{5 * t:05d}.jpg'))
      for t in range(len(v['images']))]) for v in videos}
  return config, videos, frames


# --------------------------------------------------------------------------- expectations

def _nearest(x, out_h, out_w):
  rows = np.floor((np.arange(out_h) + 0.5) * x.shape[0] / out_h).astype(int)
  cols = np.floor((np.arange(out_w) + 0.5) * x.shape[1] / out_w).astype(int)
  return x[rows][:, cols]


def _prepass_size(h, w):
  return (int(h / w * SHORT), SHORT) if w < h else (SHORT, int(w / h * SHORT))


def _centre(h, w):
  side = min(h, w)
  return round((h - side) / 2), round((w - side) / 2), side


def _bicubic(frames, out_h, out_w):
  out = transforms.resize_bicubic(frames.astype(np.float32) / 255.0, transforms.cubic_weights(
      frames.shape[1], out_h), transforms.cubic_weights(frames.shape[2], out_w))
  return out.numpy()


# --------------------------------------------------------------------------- tests

def test_rle_and_polygon_decoding():
  rng = np.random.default_rng(1)
  mask = (rng.uniform(size=(7, 9)) < 0.4).astype(np.uint8)
  counts = rle_counts(mask)
  np.testing.assert_array_equal(ytvis.decode_rle({'size': [7, 9], 'counts': counts}), mask)
  np.testing.assert_array_equal(
      ytvis.decode_rle({'size': [7, 9], 'counts': rle_string(counts)}), mask)
  big = _blob(50, 60, 25, 30, 20)  # long runs: multi-group and negative deltas
  np.testing.assert_array_equal(
      ytvis.decode_rle({'size': [50, 60], 'counts': rle_string(rle_counts(big))}), big)
  # Hand-encoded: counts after the third are deltas to the count two before (3 - 2 = 1).
  assert ytvis._rle_counts_from_string('5221') == [5, 2, 2, 3]
  # Pixels whose centre is inside the polygon; two polygons of one object are a union.
  got = ytvis.decode_polygons([[2, 1, 6, 1, 6, 4, 2, 4], [0, 5, 1, 5, 1, 6, 0, 6]], 7, 8)
  expected = _rect(7, 8, 1, 4, 2, 6)
  expected[5, 0] = 1
  np.testing.assert_array_equal(got, expected)
  triangle = ytvis.decode_polygons([[0, 0, 8, 0, 0, 8]], 8, 8)
  np.testing.assert_array_equal(triangle, (np.add.outer(np.arange(8), np.arange(8)) < 7))
  with pytest.raises(ValueError, match='sum to'):
    ytvis.decode_rle({'size': [2, 2], 'counts': [1, 2]})


def test_splits_heldout_last_in_file_order_and_manifest(fake):
  config, videos, _ = fake
  builder = ytvis.prepare(config)
  assert builder.info.splits['train'].num_examples == 3
  assert builder.info.splits['validation'].num_examples == 2
  manifest = ytvis.read_manifest(builder)
  assert [v['name'] for v in manifest['train']] == ['b_portrait', 'a_landscape', 'c_short']
  assert [v['id'] for v in manifest['heldout']] == [14, 13]  # the last 2 in file order
  assert [v['num_frames'] for v in manifest['heldout']] == [9, 3]
  stored = {ex['metadata']['video_name'].decode(): ex for split in ('train', 'validation')
            for ex in builder.as_dataset(split=split).as_numpy_iterator()}
  assert [ex['metadata']['video_name'].decode() for ex in
          builder.as_dataset(split='validation').as_numpy_iterator()] == ['d_heldout', 'e_heldout']
  for v in videos:
    ex = stored[v['name']]
    h, w = _prepass_size(v['h'], v['w'])
    assert ex['video'].shape == (len(v['images']), h, w, 3)
    # Quirk 9: frames nearest-resized in the pre-pass, masks too, one channel per instance.
    masks = ex['masks']
    assert masks.shape[-1] == max(len(v['masks']), 1)
    for k, per_frame in enumerate(v['masks']):
      for t, m in enumerate(per_frame):
        expected = np.zeros((h, w)) if m is None else _nearest(m, h, w)
        np.testing.assert_array_equal(masks[t, :, :, k], expected, err_msg=f'{v["name"]} {k} {t}')
    if not v['masks']:
      assert not masks.any()
    assert list(ex['instances']['category_id']) == [a['category_id'] for a in v['annotations']]


def test_stored_png_decodes_to_its_pixels():
  image = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
  data = ytvis.stored_png(image)
  np.testing.assert_array_equal(np.asarray(PIL.Image.open(io.BytesIO(data))), image)
  np.testing.assert_array_equal(tf.io.decode_image(data, channels=3).numpy(), image)
  # Stored, not compressed: a flat frame (which deflate would shrink to a few hundred
  # bytes) keeps every row byte: a filter byte + 3 W per row.
  flat = np.zeros((64, 64, 3), np.uint8)
  assert len(ytvis.stored_png(flat)) >= 64 * (1 + 3 * 64)
  np.testing.assert_array_equal(tf.io.decode_image(ytvis.stored_png(flat)).numpy(), flat)


def test_a_1_0_0_build_still_loads(fake, tmp_path):
  """Builder 1.0.1 only changed how frames are stored: a prepared 1.0.0 dataset is read
  (with a warning) instead of being rebuilt or refused."""
  config, _, _ = fake
  current = ytvis.prepare(config)
  old_root = tmp_path / 'tfds'
  old_dir = old_root / pathlib.Path(current.data_dir).relative_to(config.data.data_dir).parent / '1.0.0'
  shutil.copytree(current.data_dir, old_dir)
  info = json.loads((old_dir / 'dataset_info.json').read_text())
  info['version'] = '1.0.0'
  (old_dir / 'dataset_info.json').write_text(json.dumps(info))
  old_config = copy.deepcopy(config)
  old_config.data.data_dir = str(old_root)
  old_config.data.ytvis.manual_dir = ''  # nothing to rebuild from
  builder = ytvis.prepare(old_config)
  assert str(builder.version) == '1.0.0'
  assert builder.info.splits['validation'].num_examples == 2


def test_prepass_frames_are_nearest_samples(fake):
  config, videos, frames = fake
  builder = ytvis.prepare(config)
  ex = next(builder.as_dataset(split='train').as_numpy_iterator())
  v = videos[0]
  h, w = _prepass_size(v['h'], v['w'])
  np.testing.assert_array_equal(ex['video'], np.stack(
      [_nearest(f, h, w) for f in frames[v['name']]]))


def test_eval_centre_crop_ids_and_time_padding(fake):
  config, videos, frames = fake
  batches = list(pipeline.eval_iterator(config))
  assert len(batches) == 1
  batch = batches[0]
  assert batch['video'].shape == (2, 16, SIZE, SIZE, 3)  # 9 frames -> padded to 16
  assert batch['segmentations'].shape == (2, 16, SIZE, SIZE)
  assert batch['num_frames'].tolist() == [9, 3] and batch['padding_mask'].all()
  for b, v in enumerate(videos[3:]):
    h, w = _prepass_size(v['h'], v['w'])
    pre = np.stack([_nearest(f, h, w) for f in frames[v['name']]])
    top, left, side = _centre(h, w)
    expected = (_bicubic(pre[:, top:top + side, left:left + side], SIZE, SIZE) - MEAN) / STD
    t = len(pre)
    np.testing.assert_allclose(batch['video'][b, :t], expected, atol=1e-5)
    np.testing.assert_array_equal(batch['video'][b, t:], np.repeat(batch['video'][b, t - 1:t],
                                                                   16 - t, axis=0))
    ids = np.zeros((t, h, w), np.int32)
    for k, per_frame in enumerate(v['masks']):
      for f, m in enumerate(per_frame):
        if m is not None:
          ids[f][_nearest(m, h, w) != 0] = k + 1
    ids = np.stack([_nearest(i[top:top + side, left:left + side], SIZE, SIZE) for i in ids])
    np.testing.assert_array_equal(batch['segmentations'][b, :t], ids)
    assert (batch['segmentations'][b, t:] == 0).all()
  assert set(np.unique(batch['segmentations'][0])) == {0, 1, 2}


def test_eval_takes_the_first_held_out_videos(fake):
  config, _, _ = fake
  kept, config.data.num_eval_videos = config.data.num_eval_videos, 1
  try:
    batches = list(pipeline.eval_iterator(config))
  finally:
    config.data.num_eval_videos = kept
  assert batches[0]['padding_mask'].tolist() == [True, False]
  assert batches[0]['num_frames'][0] == 9 and batches[0]['video'].shape[1] == 16


def test_train_clip_is_one_random_crop_of_the_short_side_resize(fake):
  config, videos, frames = fake
  clips = next(pipeline.train_iterator(config))['video']
  assert clips.shape == (4, 4, SIZE, SIZE, 3) and clips.dtype == np.float32
  # Training videos are static: a crop shared by the clip gives 4 equal frames.
  for clip in clips:
    for t in range(1, 4):
      np.testing.assert_allclose(clip[t], clip[0], atol=1e-6)
  # Each clip is a SIZE x SIZE window of one video's short-side bicubic resize.
  windows = []
  for v in videos[:3]:
    h, w = _prepass_size(v['h'], v['w'])
    pre = _nearest(frames[v['name']][0], h, w)
    nh, nw = ytvis.short_side_size(h, w, SIZE)
    full = (_bicubic(pre[None], nh, nw)[0] - MEAN) / STD
    windows += [full[i:i + SIZE, j:j + SIZE] for i in range(nh - SIZE + 1)
                for j in range(nw - SIZE + 1)]
  windows = np.stack(windows)
  for clip in clips:
    assert (np.abs(windows - clip[0]).max(axis=(1, 2, 3)) < 1e-5).any()


def test_overlapping_masks_are_an_error(tmp_path):
  write_fake_ytvis(tmp_path / 'raw', fake_videos(overlapping=True))
  config = ytvis_config(tmp_path / 'tfds', tmp_path / 'raw', num_heldout=1)
  with pytest.raises(ValueError, match=r"video 'overlap_v': 2 instance masks overlap"):
    list(pipeline.eval_iterator(config))


def test_batch_shapes_bound_the_raw_batches(fake):
  """tools/aot.py compiles for pipeline.batch_shapes: the training batch exactly, and the
  evaluation batch of the longest video (80 frames), which every real batch's T_pad fits."""
  config, _, _ = fake
  config = config.copy_and_resolve_references()
  config.data.preprocess_on_device = True
  train_shapes, eval_shapes = pipeline.batch_shapes(config)
  batch = next(pipeline.train_iterator(config))
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
      k: (s.shape, np.dtype(s.dtype)) for k, s in train_shapes.items()}
  assert eval_shapes['frames'].shape[1] == 80
  for batch in pipeline.eval_iterator(config):
    for key, value in batch.items():
      if key in eval_shapes:
        shape = eval_shapes[key].shape
        assert value.dtype == eval_shapes[key].dtype, key
        assert value.shape[0] == shape[0] and value.shape[2:] == shape[2:], key
        assert value.ndim < 2 or value.shape[1] <= shape[1], key
