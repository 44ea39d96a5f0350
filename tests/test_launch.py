"""The launch scripts resume an interrupted run: exit status 75 (main.py) means "saved, run
again". Fake `python`, `srun` and `scontrol` on PATH record what the scripts do."""
import os
import signal
import subprocess
import time

from conftest import REPO


def _fake(bin_dir, name, body):
  path = bin_dir / name
  path.write_text('#!/usr/bin/env bash\n' + body)
  path.chmod(0o755)


def _env(tmp_path, statuses):
  """`python -m slotcurri_jax.main` exits with `statuses` in turn (a counter in a file)."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir(parents=True)
  log = tmp_path / 'calls.log'
  _fake(bin_dir, 'python', f'n=$(wc -l < {log} 2>/dev/null || echo 0); echo "python $*" >> {log}\n'
        f'codes=({" ".join(map(str, statuses))}); exit ${{codes[$n]}}\n')
  _fake(bin_dir, 'srun', 'shift; exec "$@"\n')  # drop --kill-on-bad-exit=1, run the task here
  _fake(bin_dir, 'scontrol', f'echo "scontrol $*" >> {tmp_path}/scontrol.log\n')
  env = dict(os.environ, PATH=f'{bin_dir}:{os.environ["PATH"]}', SKIP_INSTALL='1',
             SKIP_AOT_CHECK='1', SLURM_JOB_ID='42', VENV=str(tmp_path / 'venv'))
  (tmp_path / 'venv' / 'bin').mkdir(parents=True)
  (tmp_path / 'venv' / 'bin' / 'python').symlink_to(bin_dir / 'python')
  return env, log


def test_tpu_pod_reruns_after_an_interruption_until_the_run_finishes(tmp_path):
  env, log = _env(tmp_path, [75, 75, 0])
  result = subprocess.run(['bash', 'launch/tpu_pod.sh', 'configs/demo.py', 'gs://b/run'],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stderr
  assert len(log.read_text().splitlines()) == 3
  assert 'resuming (restart 2)' in result.stderr
  env, log = _env(tmp_path / 'user_error', [1, 0])
  result = subprocess.run(['bash', 'launch/tpu_pod.sh', 'configs/demo.py', 'gs://b/run'],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
  assert result.returncode == 1 and len(log.read_text().splitlines()) == 1  # no rerun


def test_slurm_requeues_an_interrupted_job_only(tmp_path):
  for statuses, requeued in (([75], True), ([0], False), ([1], False)):
    case = tmp_path / str(statuses[0])
    case.mkdir()
    env, _ = _env(case, statuses)
    result = subprocess.run(['bash', 'launch/slurm_gpu.sh', 'configs/demo.py', str(case / 'w')],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == statuses[0], result.stderr
    scontrol = case / 'scontrol.log'
    assert (scontrol.read_text() == 'scontrol requeue 42\n') if requeued else not scontrol.exists()


def _slow_python(tmp_path):
  """A `python` that runs until SIGTERM, then exits 75 as main does after saving."""
  env, log = _env(tmp_path, [0])
  ready = tmp_path / 'ready'
  _fake(tmp_path / 'bin', 'python', f'echo "python $*" >> {log}\ntrap "exit 75" TERM\n'
        f'touch {ready}\nwhile true; do sleep 0.05; done\n')
  return env, log, ready


def _started(process, ready):
  for _ in range(400):
    if ready.exists():
      return
    assert process.poll() is None, process.communicate()
    time.sleep(0.05)
  raise AssertionError('the fake run never started')


def test_a_sigterm_to_the_tpu_script_reaches_the_run_and_ends_the_loop(tmp_path):
  env, log, ready = _slow_python(tmp_path)
  process = subprocess.Popen(['bash', 'launch/tpu_pod.sh', 'configs/demo.py', 'gs://b/run'],
                             cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
  _started(process, ready)
  process.send_signal(signal.SIGTERM)  # to the script alone, as a supervisor does
  assert process.wait(timeout=30) == 75
  assert len(log.read_text().splitlines()) == 1  # passed on, saved, not run again


def test_a_preempted_slurm_job_outlives_the_signal_and_requeues(tmp_path):
  env, _, ready = _slow_python(tmp_path)
  process = subprocess.Popen(['bash', 'launch/slurm_gpu.sh', 'configs/demo.py', str(tmp_path / 'w')],
                             cwd=REPO, env=env, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
  _started(process, ready)
  os.killpg(process.pid, signal.SIGTERM)  # a preemption signals every process of the job
  assert process.wait(timeout=30) == 75
  assert (tmp_path / 'scontrol.log').read_text() == 'scontrol requeue 42\n'
