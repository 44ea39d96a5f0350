"""User errors end with one `error:` message and status 1, no traceback (--debug shows it)."""
import os

import pytest

from cli_helpers import error_lines, run_main, snapshot, tiny_data_dir  # noqa: F401  (a fixture)

TINY = '--config=tests/tiny_cli_config.py'


@pytest.mark.parametrize('args, expected', [
    (('--config.train.stepz=5',), "error: unknown config key 'stepz' in --config.train.stepz=5: "
                                   "did you mean 'steps'?"),
    (('--config.train.steps=abc',), "error: flag --config.train.steps=abc: invalid literal"),
    (('--config=configs/nope.py',), 'error: config file configs/nope.py cannot be loaded: '
                                    '[Errno 2] No such file'),
    (('--config=configs/demo.py:bad',), "unknown variant 'bad'; choose one of"),
    (('--mode=eval',), 'error: --mode=eval needs --checkpoint=PATH'),
])
def test_bad_command_line_is_one_message(capsys, tmp_path, args, expected):
  config = () if any(a.startswith('--config=') for a in args) else ('--config=configs/demo.py',)
  status, _, err = run_main(capsys, *config, f'--workdir={tmp_path}/w', *args)
  assert status == 1
  assert expected in error_lines(err)[0]
  assert 'Traceback' not in err
  assert snapshot(tmp_path) == {}


def test_a_removed_config_key_names_its_replacement(capsys, tmp_path):
  """On the command line and in a config file: one line naming the key that replaced it."""
  config_file = tmp_path / 'old.py'
  config_file.write_text('from slotcurri_jax import config as config_lib\n\n\n'
                         'def get_config(variant=None):\n'
                         '  c = config_lib.default_config()\n'
                         '  c.data.ytvis.shuffle_buffer = 100\n'
                         '  return c\n')
  for args, key, replacement in [
      (('--config=configs/ytvis.py', '--config.eval.ytvis_num_videos=300'),
       'eval.ytvis_num_videos', 'data.num_eval_videos'),
      ((f'--config={config_file}',), 'data.ytvis.shuffle_buffer', 'data.shuffle_buffer')]:
    status, _, err = run_main(capsys, *args, f'--workdir={tmp_path}/w')
    assert status == 1 and 'Traceback' not in err
    assert error_lines(err) == [f'error: config key {key} was removed: use {replacement} '
                                '(every key is declared in slotcurri_jax/config.py)']
  assert 'w' not in snapshot(tmp_path)


def test_missing_data_and_weights_are_one_message_and_write_nothing(capsys, tmp_path,
                                                                    tiny_data_dir, monkeypatch):
  monkeypatch.setenv('HF_HUB_OFFLINE', '1')  # no download attempt (test_dinov2_download has one)
  status, _, err = run_main(capsys, '--config=configs/movi_c.py', f'--workdir={tmp_path}/w',
                            f'--config.data.data_dir={tmp_path}/nowhere')
  assert status == 1 and 'Traceback' not in err
  message = error_lines(err)
  assert message[0] == f'error: config.data.data_dir={tmp_path}/nowhere does not exist.'
  assert any('mkdir -p' in l and 'gsutil -m cp -r' in l for l in message)
  status, _, err = run_main(
      capsys, TINY, f'--workdir={tmp_path}/w', f'--config.data.data_dir={tiny_data_dir}',
      '--config.model.encoder.kind=dinov2', f'--config.model.encoder.weights={tmp_path}/no.npz',
      '--config.data.resolution=14')
  assert status == 1 and 'Traceback' not in err
  assert error_lines(err)[0].startswith(f'error: DINOv2 weights not found at {tmp_path}/no.npz')
  assert 'w' not in snapshot(tmp_path)  # nothing written into the workdir


def test_debug_shows_the_traceback(capsys, tmp_path, monkeypatch):
  args = ('--config=configs/movi_c.py', f'--workdir={tmp_path}/w',
          f'--config.data.data_dir={tmp_path}/nowhere')
  with pytest.raises(FileNotFoundError, match='does not exist'):
    run_main(capsys, *args, '--debug')
  monkeypatch.setenv('SLOTCURRI_DEBUG', '1')
  with pytest.raises(FileNotFoundError, match='does not exist'):
    run_main(capsys, *args)


def test_internal_errors_keep_their_traceback(capsys, tmp_path, monkeypatch):
  from slotcurri_jax import train

  def broken(*args, **kwargs):
    raise ValueError('an internal bug')

  monkeypatch.setattr(train, 'train_and_evaluate', broken)
  with pytest.raises(ValueError, match='an internal bug'):
    run_main(capsys, TINY, f'--workdir={tmp_path}/w')


def test_infer_bad_video_is_one_message(tmp_path):
  import os
  import subprocess
  import sys
  from conftest import REPO
  video = tmp_path / 'clip.mp4'
  video.write_text('not a video')
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='')
  proc = subprocess.run(
      [sys.executable, '-m', 'slotcurri_jax.infer', '--config=configs/demo.py',
       f'--checkpoint={tmp_path}/ckpt', f'--video={video}', f'--output_dir={tmp_path}/out'],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 1 and 'Traceback' not in proc.stderr
  assert error_lines(proc.stderr)[0].startswith(f'error: cannot decode video {video}: it is corrupt')
  assert not (tmp_path / 'out').exists()


def test_one_step_smoke_run_with_the_default_curriculum(capsys, tmp_path, tiny_data_dir):
  status, out, err = run_main(capsys, TINY, f'--workdir={tmp_path}/w', '--mode=train',
                              '--config.train.steps=1', '--config.curriculum.schedule=()',
                              f'--config.data.data_dir={tiny_data_dir}')
  assert status == 0, err
  assert ('curriculum: train.steps=1 leaves stages of 0 steps in the default schedule '
          '((0, 2), (0, 2), (0, 5)); training with ((0, 5),) instead') in err
  assert sorted(p.name for p in (tmp_path / 'w' / 'checkpoints').iterdir()) == ['1']


@pytest.mark.parametrize('config, expected', [
    ((), 'configs/demo.py[:slotcurri|slotcontrast|ssync|slotcurri_ssync]'),
    (('--config=configs/demo.py:slotcontrast',), "--config.method='slotcontrast'"),
])
def test_help_lists_variants_and_keys_and_exits_0(capsys, config, expected):
  status, out, _ = run_main(capsys, *config, '--help')
  assert status == 0
  assert '--config.KEY=VALUE overrides any key' in out and '--workdir' in out
  assert expected in out
  if config:
    assert "--config.eval.rollout='forward'" in out and '--config.train.steps=1200' in out


def test_unwritable_workdir_or_output_dir_is_one_line(capsys, tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_text('')
  status, _, err = run_main(capsys, TINY, f'--workdir={blocker}/w')
  assert status == 1 and 'Traceback' not in err
  assert error_lines(err) == [f'error: workdir {blocker}/w is not writable: {blocker} is a file, '
                              f'not a directory (tried {blocker})']
  from slotcurri_jax import cli, errors  # a directory this process cannot write (not as root)
  readonly = tmp_path / 'readonly'
  readonly.mkdir(mode=0o555)
  if not os.access(readonly, os.W_OK):
    with pytest.raises(errors.UserError, match=f'--output_dir {readonly}/out is not writable: '
                                                'Permission denied'):
      cli.check_writable(f'{readonly}/out', '--output_dir')
