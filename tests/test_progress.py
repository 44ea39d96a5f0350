"""Training and evaluation show progress bars; the libraries' INFO chatter is off unless asked."""
import pytest

from cli_helpers import run_main, tiny_data_dir  # noqa: F401  (a fixture)


@pytest.mark.slow  # 30 s on 2 cores: a short run through main
def test_progress_bars_and_quiet_libraries(capsys, tmp_path, tiny_data_dir):
  args = ('--config=tests/tiny_cli_config.py', f'--config.data.data_dir={tiny_data_dir}',
          '--config.train.steps=2', '--config.train.log_every_steps=2')
  status, _, err = run_main(capsys, *args, f'--workdir={tmp_path}/a')
  assert status == 0, err
  assert 'train: 100%' in err and '2/2 [' in err and ('step/s' in err or 's/step' in err)
  assert 'loss=' in err and 'slots=' in err
  assert 'eval (step 2): 100%' in err and '1/1 [' in err
  assert '] [2] active_slots=' in err  # the metrics line (clu's LoggingWriter)
  for chatter in ('CheckpointManager', 'Load dataset info', 'oneDNN', 'is deprecated'):
    assert chatter not in err, chatter
  status, _, err = run_main(capsys, *args, f'--workdir={tmp_path}/b', '--verbosity=1',
                            '--mode=train')
  assert status == 0, err
  assert 'CheckpointManager' in err
