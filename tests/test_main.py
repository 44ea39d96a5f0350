"""The main job end to end on a tiny synthetic dataset: train, preempt, resume, evaluate."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, tiny_config
from slotcurri_jax import checkpoint as checkpoint_lib
from slotcurri_jax import train


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


def _config(data_dir, **overrides):
  config = tiny_config()
  config.data.data_dir = data_dir
  config.data.batch_size = 8  # one clip per fake device
  for key, value in overrides.items():
    section, name = key.split('__')
    config[section][name] = value
  return config


def _losses(workdir):
  rows = [json.loads(l) for l in (workdir / 'train_history.jsonl').read_text().splitlines()]
  return {r['step']: r['loss_total'] for r in rows}


class _PreemptAfter(checkpoint_lib.PreemptionGuard):
  """Behaves as if SIGTERM arrived during step `n`."""
  n = 4

  def reached(self, step):
    return step >= self.n


def test_resume_after_preemption_reproduces_the_uninterrupted_run(data_dir, tmp_path, monkeypatch):
  config = _config(data_dir)
  full = train.train_and_evaluate(config, str(tmp_path / 'full'), evaluate_at_end=False)
  assert full == {}
  monkeypatch.setattr(checkpoint_lib, 'PreemptionGuard', _PreemptAfter)
  out = train.train_and_evaluate(config, str(tmp_path / 'resumed'), evaluate_at_end=False)
  assert out == {'preempted_at_step': 4}
  monkeypatch.undo()
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path / 'resumed'), config)
  assert ckpt.latest_step() == 4  # the SIGTERM save, between the periodic ones (3, 6)
  ckpt.close()
  train.train_and_evaluate(config, str(tmp_path / 'resumed'), evaluate_at_end=False)
  full_losses, resumed_losses = _losses(tmp_path / 'full'), _losses(tmp_path / 'resumed')
  assert sorted(full_losses) == sorted(resumed_losses) == list(range(1, 7))
  for step in full_losses:
    assert resumed_losses[step] == pytest.approx(full_losses[step], rel=1e-5, abs=1e-6), step


def test_incompatible_workdir_fails_early_and_keeps_its_checkpoints(data_dir, tmp_path):
  config = _config(data_dir, train__steps=3)
  train.train_and_evaluate(config, str(tmp_path), evaluate_at_end=False)
  before = sorted(p.name for p in (tmp_path / 'checkpoints').iterdir())
  other = _config(data_dir, train__steps=3)
  other.model.slot_dim = 32
  with pytest.raises(ValueError, match=r'(?s)of another method.*model\.slot_dim'):
    train.train_and_evaluate(other, str(tmp_path), evaluate_at_end=False)
  assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir()) == before


def test_train_and_eval_writes_metrics_figures_and_logs(data_dir, tmp_path):
  config = _config(data_dir, train__steps=2)
  results = train.train_and_evaluate(config, str(tmp_path), evaluate_at_end=True)
  for key in ('ari', 'mbo', 'image_ari', 'image_mbo', 'fragmentation'):
    assert key in results
  assert 0.0 <= results['ari'] <= 100.0 or results['ari'] != results['ari']
  payload = json.loads((tmp_path / 'eval' / 'metrics_latest.json').read_text())
  assert payload['metrics'] == results  # one convention: printed = written (x 100)
  assert payload['units']['ari'] == 'video FG-ARI x 100'
  assert payload['settings']['rollout'] == 'cyclic'
  assert payload['settings']['num_videos'] == config.data.synthetic.num_validation
  assert list((tmp_path / 'eval').glob('figures_step_2/clip_0.png'))
  assert list((tmp_path / 'tensorboard').glob('events.out.tfevents.*'))
  assert (tmp_path / 'training_curves.png').exists()


def _run_main(*args, timeout=300):
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='')
  return subprocess.run([sys.executable, '-m', 'slotcurri_jax.main', *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


def test_unknown_config_key_is_an_error(tmp_path):
  proc = _run_main('--config=configs/demo.py', f'--workdir={tmp_path}', '--config.train.stepz=5')
  assert proc.returncode != 0
  assert 'stepz' in proc.stderr


def test_missing_movi_data_fails_before_compiling(tmp_path):
  proc = _run_main('--config=configs/movi_c.py', f'--workdir={tmp_path}',
                   f'--config.data.data_dir={tmp_path}/nowhere')
  assert proc.returncode != 0
  assert 'nowhere' in proc.stderr and 'gsutil' in proc.stderr
  assert not (tmp_path / 'checkpoints').exists()
