"""Palettes, overlays, clip figures and the PNG / GIF / MP4 / curve writers."""
import imageio.v3 as iio
import numpy as np
import pytest

from slotcurri_jax import visualize


def test_palette_distinct_and_stable():
  big = visualize.palette(64)
  assert big.shape == (64, 3) and big.dtype == np.uint8
  assert len({tuple(c) for c in big}) == 64
  np.testing.assert_array_equal(visualize.palette(7), big[:7])
  assert visualize.palette(0).shape == (0, 3)


def test_overlay_colours_exact():
  frames = np.zeros((2, 3, 4, 3), np.uint8)
  frames[1] = 200
  ids = np.array([[[0, 1, 2, 3]] * 3, [[3, 3, 0, 0]] * 3])
  colours = visualize.palette(4).astype(np.float32)
  out = visualize.overlay(frames, ids, alpha=0.5)
  assert out.shape == frames.shape and out.dtype == np.uint8
  np.testing.assert_array_equal(out[0, 0], np.round(0.5 * colours[[0, 1, 2, 3]]))
  np.testing.assert_array_equal(out[1, 2, 0], np.round(100.0 + 0.5 * colours[3]))
  np.testing.assert_array_equal(visualize.overlay(frames, ids, alpha=1.0)[0, 1],
                                colours[[0, 1, 2, 3]])
  # background=0 leaves id-0 pixels as they were
  kept = visualize.overlay(frames, ids, background=0)
  np.testing.assert_array_equal(kept[1, :, 2:], frames[1, :, 2:])
  assert not np.array_equal(kept[1, :, :2], frames[1, :, :2])


def test_ids_to_rgb_and_errors():
  rgb = visualize.ids_to_rgb(np.array([[0, 2]]), num_colours=5)
  np.testing.assert_array_equal(rgb[0], visualize.palette(5)[[0, 2]])
  with pytest.raises(ValueError, match='>= 0'):
    visualize.ids_to_rgb(np.array([-1]))
  with pytest.raises(ValueError, match='id 4'):
    visualize.ids_to_rgb(np.array([4]), num_colours=3)
  with pytest.raises(ValueError, match='ids'):
    visualize.overlay(np.zeros((2, 4, 4, 3), np.uint8), np.zeros((2, 4, 5), int))


def _clip(t=3, h=8, w=8, k=4, seed=0):
  rng = np.random.default_rng(seed)
  frames = rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8)
  logits = rng.normal(size=(t, k, h, w))
  masks = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  return frames, masks.argmax(1), rng.integers(0, 3, (t, h, w)), masks, rng.random((t, h, w))


def test_clip_figure_layout():
  frames, pred, true, masks, error = _clip()
  fig = visualize.clip_figure(frames, pred, true, masks, error)
  rows = 3 + 4 + 1  # frames, prediction, truth, 4 slots, error
  swatch = 6 + 2
  assert fig.dtype == np.uint8
  assert fig.shape == (rows * 10 - 2, swatch + 3 * 10 - 2, 3)
  np.testing.assert_array_equal(fig[:8, swatch:swatch + 8], frames[0])  # top-left tile
  np.testing.assert_array_equal(  # prediction overlay of frame 1
      fig[10:18, swatch + 10:swatch + 18], visualize.overlay(frames, pred, num_colours=4)[1])
  colours = visualize.palette(4)
  for k in range(4):  # each slot row starts with its colour swatch
    np.testing.assert_array_equal(fig[30 + 10 * k, 0], colours[k])
  # only the required rows: no swatch column
  small = visualize.clip_figure(frames, pred)
  assert small.shape == (2 * 10 - 2, 3 * 10 - 2, 3)


def test_clip_figure_subsamples_and_shrinks():
  frames, pred, true, masks, error = _clip(t=20, h=40, w=40, k=2)
  fig = visualize.clip_figure(frames, pred, true, None, error, max_frames=5, tile_size=16)
  tile = 40 // 3  # shrink factor ceil(40 / 16) = 3
  assert fig.shape == (4 * (tile + 2) - 2, 5 * (tile + 2) - 2, 3)
  with pytest.raises(ValueError, match='slot_masks'):
    visualize.clip_figure(frames, pred, None, masks[:, :, :8, :8])


def test_slot_tiles():
  frames, _, _, masks, _ = _clip(t=1, h=6, w=5, k=3)
  tiles = visualize.slot_tiles(frames[0], masks[0])
  assert tiles.shape == (4 + 6, 3 * 7 - 2, 3)
  np.testing.assert_array_equal(tiles[0, 7], visualize.palette(3)[1])
  expected = (frames[0] * masks[0, 2, :, :, None] + 0.5).astype(np.uint8)
  np.testing.assert_array_equal(tiles[4:, 14:19], expected)


def test_png_and_gif_roundtrip(tmp_path):
  image = np.random.default_rng(1).integers(0, 256, (9, 11, 3), dtype=np.uint8)
  visualize.save_png(tmp_path / 'sub' / 'a.png', image)
  np.testing.assert_array_equal(iio.imread(tmp_path / 'sub' / 'a.png'), image)
  frames = np.zeros((4, 10, 12, 3), np.uint8)
  for t in range(4):  # flat palette colours survive GIF quantisation
    frames[t] = visualize.palette(4)[t]
  visualize.save_gif(tmp_path / 'a.gif', frames, fps=5)
  back = iio.imread(tmp_path / 'a.gif', index=None)
  assert back.shape[:3] == (4, 10, 12)
  np.testing.assert_array_equal(back[..., :3], frames)
  assert iio.immeta(tmp_path / 'a.gif', index=0)['duration'] == 200


def test_save_video_mp4_odd_size(tmp_path):
  frames = np.full((5, 11, 13, 3), 128, np.uint8)
  written = visualize.save_video(tmp_path / 'v.mp4', frames, fps=5)
  assert written == str(tmp_path / 'v.mp4')
  back = iio.imread(written, plugin='FFMPEG')
  assert back.shape == (5, 12, 14, 3)  # padded to even sides for yuv420p
  assert abs(float(back[:, :11, :13].mean()) - 128) < 3


def test_save_video_falls_back_to_gif(tmp_path, monkeypatch):
  import imageio_ffmpeg

  def no_ffmpeg():
    raise RuntimeError('no ffmpeg exe could be found')
  monkeypatch.setattr(imageio_ffmpeg, 'get_ffmpeg_exe', no_ffmpeg)
  frames = np.zeros((3, 8, 8, 3), np.uint8)
  frames[:, 0, 0] = np.arange(3)[:, None] * 100  # distinct frames (GIF merges repeats)
  with pytest.warns(UserWarning, match='ffmpeg is unavailable'):
    written = visualize.save_video(tmp_path / 'v.mp4', frames, fps=4)
  assert written.endswith('v.gif')
  assert iio.imread(written, index=None).shape[:3] == (3, 8, 8)


def test_training_curves(tmp_path):
  history = {'loss': [(s, 1.0 / s) for s in range(1, 20)],
             'loss_mse': [(s, 0.5 / s) for s in range(1, 20)],
             'active_slots': [(0, 2), (5, 3), (10, 7)]}
  path = tmp_path / 'curves.png'
  visualize.training_curves(history, path)
  image = iio.imread(path)
  assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 300
  assert image[..., :3].std() > 10  # something was drawn
  with pytest.raises(ValueError, match='empty history'):
    visualize.training_curves({'loss': []}, tmp_path / 'none.png')
