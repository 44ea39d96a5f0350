"""Ctrl-C (SIGINT) saves like SIGTERM, within a step of the signal; a second Ctrl-C exits at once."""
import json
import os
import signal

from cli_helpers import error_lines, run_main, tiny_data_dir  # noqa: F401  (a fixture)

from slotcurri_jax import train


def _signal_at(monkeypatch, at_step: int, signals: int):
  """Send `signals` real SIGINTs to this process just before host step `at_step` is dispatched."""
  real = train.stage_train_steps

  def patched(*args, **kwargs):
    for_step = real(*args, **kwargs)

    def step_fn(step):
      if step == at_step:
        for _ in range(signals):
          os.kill(os.getpid(), signal.SIGINT)
      return for_step(step)

    return step_fn

  monkeypatch.setattr(train, 'stage_train_steps', patched)


def _args(tmp_path, data_dir):
  return ('--config=tests/tiny_cli_config.py', f'--workdir={tmp_path}/w',
          f'--config.data.data_dir={data_dir}', '--mode=train')


def test_ctrl_c_saves_within_a_step_and_the_same_command_resumes(capsys, tmp_path, monkeypatch, tiny_data_dir):
  _signal_at(monkeypatch, at_step=1, signals=1)  # periodic checkpoints at 3 and 6
  status, out, err = run_main(capsys, *_args(tmp_path, tiny_data_dir))
  assert status == 75, err  # interrupted and saved: not a finished run (main.py's docstring)
  assert json.loads(out[out.index("{"):]) == {"preempted_at_step": 2}, out
  assert 'SIGINT received: saving a checkpoint after this step, then exiting' in err
  assert f'SIGINT: saved step 2 in {tmp_path}/w/checkpoints; run the same command to resume' in err
  assert sorted(p.name for p in (tmp_path / 'w' / 'checkpoints').iterdir()) == ['2']
  monkeypatch.undo()
  status, out, err = run_main(capsys, *_args(tmp_path, tiny_data_dir))
  assert status == 0, err  # finished
  assert "resumed from step 2" in err
  steps = [json.loads(l)['step'] for l in (tmp_path / 'w' / 'train_history.jsonl').read_text().splitlines()]
  assert steps == list(range(1, 7))


def test_second_ctrl_c_exits_at_once_without_saving(capsys, tmp_path, monkeypatch, tiny_data_dir):
  _signal_at(monkeypatch, at_step=1, signals=2)
  status, _, err = run_main(capsys, *_args(tmp_path, tiny_data_dir))
  assert status == 130
  assert error_lines(err) == ['error: interrupted (a second Ctrl-C): exited at once, without saving']
  assert 'Traceback' not in err
  assert not list((tmp_path / 'w' / 'checkpoints').glob('[0-9]*'))
