"""The video_folder dataset: layouts, splits, pieces, bad inputs (one line each), and
training + evaluation through the command line on folders written from the generator."""
import json
import pathlib
import shutil

import numpy as np
import PIL.Image
import pytest

from cli_helpers import error_lines, run_main
from conftest import REPO
import video_folder_helpers as helpers
from slotcurri_jax import config as config_lib
from slotcurri_jax import errors
from slotcurri_jax.data import pipeline
from slotcurri_jax.data import video_folder
from slotcurri_jax.data import video_folder_scan as scan


@pytest.fixture(scope='module')
def folders(tmp_path_factory):
  root = tmp_path_factory.mktemp('videos')
  return helpers.write_generic(root / 'generic'), helpers.write_davis(root / 'davis')


def _config(root, data_dir, **video_folder):
  c = config_lib.load(f'{REPO / "configs" / "video_folder.py"}:cnn')
  c.data.data_dir = str(data_dir)
  c.data.video_folder.root = str(root)
  c.data.video_folder.update(video_folder)
  return c


def _copy(folders, tmp_path, which=0) -> pathlib.Path:
  return pathlib.Path(shutil.copytree(folders[which], tmp_path / 'videos'))


def test_pieces_cover_every_frame():
  assert video_folder.train_pieces(50, 24) == [(0, 24), (24, 48), (26, 50)]
  assert video_folder.train_pieces(48, 24) == [(0, 24), (24, 48)]
  assert video_folder.train_pieces(9, 24) == [(0, 9)]
  assert video_folder.eval_pieces(50, 24) == [(0, 24), (24, 48), (48, 50)]


def test_generic_layout_builds_and_reads(folders, tmp_path):
  config = _config(folders[0], tmp_path, validation_fraction=0.25, segment_frames=8,
                   max_eval_frames=6)
  manifest = video_folder.read_manifest(video_folder.prepare(config))
  assert [v['name'] for v in manifest['train']] == ['a_clip', 'b_clip', 'c_frames']
  assert [(v['num_frames'], v['height'], v['width'], v['has_masks'])
          for v in manifest['train']] == [(24, 48, 64, False), (12, 40, 40, False),
                                          (16, 64, 48, True)]
  # d_frames (9 frames, held out) is cut into pieces of at most 6 frames.
  assert [(p['name'], p['num_frames']) for p in manifest['eval_pieces']] == [
      ('d_frames@0', 6), ('d_frames@6', 3)]
  batch = next(pipeline.eval_iterator(config, process_index=0, process_count=1))
  assert batch['num_frames'].tolist()[:2] == [6, 3] and batch['padding_mask'].sum() == 2
  # 36x52 frames stored with short side 64 (64x92): the centre square is 64 x 64.
  assert batch['frames'].shape[2:] == (64, 64, 3)
  _, true = helpers.synthetic_video(3, 9, 36, 52)
  objects = len(np.unique(true)) - 1  # ids 1..objects (one channel per object of the video)
  ids = np.unique(batch['segmentations'][0, :6])
  assert len(ids) > 1 and set(ids.tolist()) <= set(range(objects + 1))
  train = next(pipeline.train_iterator(config, process_index=0, process_count=1))
  assert train['frames'].shape == (config.data.batch_size, 4, 68, 68, 3)


def test_davis_layout_uses_its_split_files(folders, tmp_path):
  manifest = video_folder.read_manifest(video_folder.prepare(_config(folders[1], tmp_path)))
  assert manifest['convention'].startswith('DAVIS')
  assert [v['name'] for v in manifest['train']] == ['bear', 'car']
  assert [(p['name'], p['has_masks']) for p in manifest['eval_pieces']] == [('dog', True)]


def _one_line_error(config, match):
  with pytest.raises(errors.UserError, match=match) as info:
    video_folder.prepare(config)
  assert '\n' not in str(info.value)
  built = pathlib.Path(config.data.data_dir) / 'video_folder'
  assert not any(built.rglob('dataset_info.json'))  # nothing that reads as a dataset


def test_empty_folder(tmp_path):
  (tmp_path / 'empty').mkdir()
  (tmp_path / 'empty' / 'notes.txt').write_text('not a video')
  _one_line_error(_config(tmp_path / 'empty', tmp_path / 'tfds'), 'holds no videos')


def test_unreadable_and_zero_frame_videos_are_refused_or_skipped(folders, tmp_path):
  root = _copy(folders, tmp_path)
  (root / 'broken.mp4').write_bytes(b'not an mp4 at all')
  _one_line_error(_config(root, tmp_path / 'tfds'), r"video 'broken' .*cannot be read.*on_bad_video=skip")
  (root / 'broken.mp4').write_bytes(b'')
  _one_line_error(_config(root, tmp_path / 'tfds'), r"video 'broken' .*empty \(0 bytes\)")
  config = _config(root, tmp_path / 'tfds', on_bad_video='skip', validation_fraction=0.25)
  assert video_folder.read_manifest(video_folder.prepare(config))['skipped'] == ['broken']


def test_video_shorter_than_a_clip(folders, tmp_path):
  root = _copy(folders, tmp_path)
  helpers.write_frames(root / 'e_short', helpers.synthetic_video(4, 3, 32, 32)[0])
  _one_line_error(_config(root, tmp_path / 'tfds'),
                  r"video 'e_short' .*3 frames, fewer than one training clip")


def test_masks_whose_count_or_size_does_not_match(folders, tmp_path):
  root = _copy(folders, tmp_path)
  (root / 'masks' / 'd_frames' / '00008.png').unlink()
  _one_line_error(_config(root, tmp_path / 'tfds'), r"'d_frames' has 9 frames but 8 mask PNGs")
  helpers.write_masks(root / 'masks' / 'd_frames', np.zeros((9, 36, 50), np.uint8))
  _one_line_error(_config(root, tmp_path / 'tfds'), r'00000.png is 50x36 but the frames .* 52x36')


def test_a_changed_folder_is_refused_until_rebuilt(folders, tmp_path):
  root = _copy(folders, tmp_path, which=1)
  config = _config(root, tmp_path / 'tfds')
  video_folder.prepare(config)
  (root / 'Annotations' / '480p' / 'dog' / '00000.png').unlink()
  shutil.copy(root / 'Annotations' / '480p' / 'dog' / '00001.png',
              root / 'Annotations' / '480p' / 'dog' / '00000.png')
  with pytest.raises(errors.UserError, match=r'changed since .*rebuild=True') as info:
    video_folder.prepare(config)
  assert '\n' not in str(info.value)
  config.data.video_folder.rebuild = True
  assert video_folder.prepare(config).is_prepared()
  config.data.video_folder.rebuild = False
  assert video_folder.prepare(config).is_prepared()  # the rebuilt folder is the current one
  # A folder that is gone (not mounted) is not a changed one: refused, the build kept.
  built = video_folder.prepare(config).data_dir
  root.rename(tmp_path / 'unmounted')
  config.data.video_folder.rebuild = True
  with pytest.raises(FileNotFoundError, match='is not a folder'):
    video_folder.prepare(config)
  assert pathlib.Path(built).is_dir()


def test_a_builds_manifest_is_a_split_and_an_edit_to_it_is_a_change(folders, tmp_path):
  root = _copy(folders, tmp_path)
  first = video_folder.prepare(_config(root, tmp_path / 'a', validation_fraction=0.25))
  written = pathlib.Path(first.data_dir) / 'manifest.json'  # rows, not names: read as well
  split = tmp_path / 'split.json'
  shutil.copy(written, split)
  config = _config(root, tmp_path / 'b', manifest=str(split))
  manifest = video_folder.read_manifest(video_folder.prepare(config))
  assert [v['name'] for v in manifest['validation']] == ['d_frames']
  given = json.loads(split.read_text())
  given['train'], given['validation'] = given['train'][:2], given['train'][2:]
  split.write_text(json.dumps(given))
  with pytest.raises(errors.UserError, match=r'\(or its manifest\) changed since'):
    video_folder.prepare(config)
  for text in ('["a_clip"]', '{"train": [1], "validation": []}', '{not json'):
    split.write_text(text)
    _one_line_error(_config(root, tmp_path / 'c', manifest=str(split)), 'is not a split')


def test_files_the_scan_does_not_read_are_not_a_change(folders, tmp_path):
  root = _copy(folders, tmp_path)
  config = _config(root, tmp_path / 'tfds', validation_fraction=0.25)
  video_folder.prepare(config)
  (root / 'my_run' / 'checkpoints').mkdir(parents=True)  # a workdir inside the folder
  (root / 'my_run' / 'checkpoints' / 'state').write_bytes(b'x' * 100)
  (root / 'notes.txt').write_text('shot on a phone')
  video_folder.prepare(config)  # not refused
  helpers.write_frames(root / 'e_new', helpers.synthetic_video(5, 8, 32, 32)[0])
  with pytest.raises(errors.UserError, match='changed since'):
    video_folder.prepare(config)


def test_a_rebuild_that_fails_its_checks_keeps_the_old_build(folders, tmp_path):
  root = _copy(folders, tmp_path)
  config = _config(root, tmp_path / 'tfds', validation_fraction=0.25)
  built = pathlib.Path(video_folder.prepare(config).data_dir)
  (root / 'broken.mp4').write_bytes(b'not an mp4 at all')
  config.data.video_folder.rebuild = True
  with pytest.raises(errors.UserError, match="video 'broken' .*cannot be read"):
    video_folder.prepare(config)
  assert (built / 'dataset_info.json').is_file()


def test_skipped_videos_named_by_the_split_files_are_left_out(folders, tmp_path):
  root = _copy(folders, tmp_path, which=1)
  (root / 'JPEGImages' / '480p' / 'car' / '00003.jpg').write_bytes(b'')  # car cannot be read
  _one_line_error(_config(root, tmp_path / 'tfds'), r"video 'car' .*cannot be read")
  manifest = video_folder.read_manifest(
      video_folder.prepare(_config(root, tmp_path / 'tfds', on_bad_video='skip')))
  assert [v['name'] for v in manifest['train']] == ['bear'] and manifest['skipped'] == ['car']


def test_masks_bad_files_binary_pngs_and_too_many_objects(folders, tmp_path):
  root = _copy(folders, tmp_path)
  PIL.Image.new('RGB', (52, 36)).save(root / 'masks' / 'd_frames' / '00004.png')
  _one_line_error(_config(root, tmp_path / 'tfds'), r'mask .*00004.png is a RGB image')
  (root / 'masks' / 'd_frames' / '00004.png').write_bytes(b'garbage')
  _one_line_error(_config(root, tmp_path / 'tfds'), r'mask .*00004.png cannot be read')
  ids = np.zeros((9, 36, 52), np.uint8)
  for t, frame in enumerate(ids):  # 1-bit PNGs (saved from bool arrays): ids 0 and 1
    frame[:, :10 + t] = 1
    PIL.Image.fromarray(frame.astype(bool)).save(root / 'masks' / 'd_frames' / f'{t:05d}.png')
  config = _config(root, tmp_path / 'tfds', validation_fraction=0.25)
  manifest = video_folder.read_manifest(video_folder.prepare(config))
  assert manifest['validation'][0]['num_objects'] == 1
  helpers.write_masks(root / 'masks' / 'd_frames', np.tile(np.arange(36, dtype=np.uint8)[:, None],
                                                           (9, 1, 52)), palette=False)
  config.data.video_folder.rebuild = True
  with pytest.raises(errors.UserError, match=r"'d_frames' .*hold 35 object ids, more than "
                     r'config.data.max_instances=25; pass --config.data.max_instances=35'):
    video_folder.prepare(config)


def test_frames_are_decoded_one_at_a_time(folders):
  from slotcurri_jax.data import video_files
  frames = video_files.iter_video(folders[0] / 'a_clip.mp4')
  first = next(frames)
  assert first.shape == (48, 64, 3) and first.dtype == np.uint8
  whole, fps = video_files.read_video(folders[0] / 'a_clip.mp4')
  assert len(whole) == 24 and fps == 10.0
  np.testing.assert_array_equal(np.stack([first, *frames]), whole)


def test_bad_folder_is_one_line_on_the_command_line(capsys, tmp_path):
  (tmp_path / 'empty').mkdir()
  status, _, err = run_main(capsys, '--config=configs/video_folder.py:cnn',
                            f'--workdir={tmp_path}/w', f'--config.data.data_dir={tmp_path}/tfds',
                            f'--config.data.video_folder.root={tmp_path}/empty')
  assert status == 1
  assert len(error_lines(err)) == 1 and 'holds no videos' in error_lines(err)[0]
  assert not (tmp_path / 'w').exists()


# Shrinks configs/video_folder.py:cnn to compile and run in seconds (8 fake devices).
TINY = ('--config.data.resolution=32', '--config.data.video_folder.short_side=32',
        '--config.model.encoder.cnn_features=16', '--config.model.slot_dim=16',
        '--config.model.max_slots=4', '--config.train.steps=3', '--config.train.warmup_steps=1',
        '--config.data.batch_size=8', '--config.loss.contrast_group_size=8',
        '--config.data.eval_batch_size=8', '--config.train.active_slots_only=False',
        '--config.train.checkpoint_every_steps=3', '--config.train.log_every_steps=1')


@pytest.mark.slow  # 1-2 min on 2 cores: trains and evaluates twice through main
def test_trains_and_evaluates_from_the_command_line(folders, capsys, tmp_path):
  """No masks in the evaluated videos: figures and mask files only, said so; DAVIS with
  masks: every metric."""
  split = tmp_path / 'split.json'
  split.write_text(json.dumps({'train': ['c_frames', 'd_frames'],
                               'validation': ['a_clip', 'b_clip']}))
  status, out, err = run_main(capsys, '--config=configs/video_folder.py:cnn', *TINY,
                              f'--workdir={tmp_path}/own', f'--config.data.data_dir={tmp_path}/tfds',
                              f'--config.data.video_folder.root={folders[0]}',
                              f'--config.data.video_folder.manifest={split}')
  assert status == 0, err
  assert 'none has ground-truth masks' in err
  payload = json.loads((tmp_path / 'own' / 'eval' / 'metrics_latest.json').read_text())
  assert payload['metrics'] == {'num_videos': 2, 'scored_videos': 0}
  with np.load(tmp_path / 'own' / 'eval' / 'masks_step_3' / 'a_clip.npz') as z:
    assert z['ids'].shape == (24, 32, 32) and z['ids'].max() < 4
  with np.load(tmp_path / 'own' / 'eval' / 'masks_step_3' / 'b_clip.npz') as z:
    assert z['ids'].shape == (12, 32, 32)
  assert len(list((tmp_path / 'own' / 'eval' / 'figures_step_3').glob('clip_*.png'))) == 2

  status, out, err = run_main(capsys, '--config=configs/video_folder.py:cnn', *TINY,
                              f'--workdir={tmp_path}/davis', f'--config.data.data_dir={tmp_path}/tfds',
                              f'--config.data.video_folder.root={folders[1]}')
  assert status == 0, err
  metrics = json.loads((tmp_path / 'davis' / 'eval' / 'metrics_latest.json').read_text())['metrics']
  assert metrics['num_videos'] == metrics['scored_videos'] == 1
  for key in ('ari', 'mbo', 'image_ari', 'image_mbo', 'fragmentation'):
    assert np.isfinite(metrics[key]), key
  assert (tmp_path / 'davis' / 'eval' / 'masks_step_3' / 'dog.npz').exists()
  # tools/summarize.py on these real runs: one row of n = 1; the run without masks refused.
  from slotcurri_jax.tools import summarize
  row, = summarize.summarize([str(tmp_path / 'davis')])
  assert (row['dataset'], row['n'], row['metrics']['ari']['mean']) == ('video_folder', 1, metrics['ari'])
  with pytest.raises(errors.UserError, match='has no metrics'):
    summarize.summarize([str(tmp_path / 'own')])
