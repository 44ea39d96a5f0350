"""benchmarks/gpu_check.sh: argument handling, the largest-batch estimate, the --cpu dry run."""
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

from conftest import _CACHE, REPO

SCRIPT = REPO / 'benchmarks' / 'gpu_check.sh'


def _module():
  sys.path.insert(0, str(REPO / 'benchmarks'))
  spec = importlib.util.spec_from_file_location('gpu_check', REPO / 'benchmarks' / 'gpu_check.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_script_parses_and_rejects_unknown_arguments():
  assert subprocess.run(['bash', '-n', str(SCRIPT)]).returncode == 0
  proc = subprocess.run(['bash', str(SCRIPT), '--bogus'], capture_output=True, text=True)
  assert proc.returncode == 2 and 'unknown argument --bogus' in proc.stderr
  assert 'jax[cuda12]' in subprocess.run(['bash', str(SCRIPT), '--help'], capture_output=True,
                                         text=True).stdout


def test_largest_batch_from_the_memory_fit():
  gpu_check = _module()
  gb = 1e9
  results = [{'batch': 8, 'xla_temp_bytes': 10 * gb, 'xla_argument_bytes': 2 * gb,
              'device_bytes_limit': 80 * gb},
             {'batch': 32, 'xla_temp_bytes': 34 * gb, 'xla_argument_bytes': 2 * gb,
              'device_bytes_limit': 80 * gb}]
  # 1 GB per clip + 4 GB fixed: 0.9 x 80 GB holds 68 clips, rounded down to a multiple of 8.
  assert gpu_check.largest_batch(results, cap=4096) == 64
  assert gpu_check.largest_batch(results, cap=48) == 48
  cpu = [dict(r, device_bytes_limit=None) for r in results]
  assert gpu_check.largest_batch(cpu, cap=8) == 8
  assert gpu_check.largest_batch(results[:1], cap=8) is None


def test_largest_batch_halves_until_it_fits(monkeypatch):
  gpu_check = _module()
  gb = 1e9
  tried = []

  def fake_child(spec, timeout):
    if spec['kind'] == 'peak':
      return {'device': {'platform': 'gpu', 'device_kind': 'H100', 'jax': '0',
                         'peak_flops': 989e12, 'peak_source': 'test'},
              'matmul_flops_per_s': {}}
    b = spec['batch']
    tried.append((spec['dtype'], b))
    if b > 40:  # the fit says 64 clips fit; only 40 do
      return {'error': 'RESOURCE_EXHAUSTED: out of memory', **spec}
    return dict(spec, config=spec['name'], xla_temp_bytes=(2 + b) * gb, xla_argument_bytes=2 * gb,
                device_bytes_limit=80 * gb, s_per_step=0.01 * b, steps_per_s=100 / b,
                clips_per_s=100.0, compile_s=1.0, device_peak_bytes=b * gb,
                model_flops_per_step=1e12 * b, xla_cost_analysis_flops=1e12 * b)

  monkeypatch.setattr(gpu_check, 'train_step_child', fake_child)
  out = gpu_check.train_steps(cpu=False, steps=2)
  # 1 GB per clip + 4 GB fixed: the estimate is 64, which fails; its half, 32, was measured.
  assert tried == [('float32', 8), ('float32', 32), ('float32', 64),
                   ('bfloat16', 8), ('bfloat16', 32), ('bfloat16', 64)]
  assert [r['role'] for r in out['results']] == ['batch 8', 'batch 32', 'did not fit'] * 2
  assert out['results'][0]['mfu'] > 0

  tried.clear()
  monkeypatch.setattr(gpu_check, 'largest_batch', lambda results, cap: 128)
  out = gpu_check.train_steps(cpu=False, steps=2)
  # 128 fails, 64 fails, 32 is no larger than what was measured: stop.
  assert tried[:4] == [('float32', 8), ('float32', 32), ('float32', 128), ('float32', 64)]
  assert [r['role'] for r in out['results']][:4] == ['batch 8', 'batch 32'] + ['did not fit'] * 2
  monkeypatch.setattr(gpu_check, 'largest_batch', lambda results, cap: 80)
  out = gpu_check.train_steps(cpu=False, steps=1)
  # 80 fails, 40 fits.
  assert [(r['batch'], r['role']) for r in out['results']][2:4] == [
      (80, 'did not fit'), (40, 'largest that fits')]
  assert out['results'][3]['steps'] == 1


@pytest.mark.slow  # 2 min on 2 cores; the GPU benchmark at tiny sizes
def test_cpu_dry_run_writes_one_json(tmp_path):
  """Every stage of the script at tiny sizes (about 1-2 minutes on 2 cores, less on a rerun
  from the compilation cache): what the GPU run does, with each branch taken."""
  out = tmp_path / 'gpu_check.json'
  proc = subprocess.run(['bash', str(SCRIPT), '--cpu', '--out', str(out)], cwd=REPO,
                        capture_output=True, text=True, timeout=900,
                        # the tests' own compilation cache, not the script's default in ~
                        env=dict(os.environ, XLA_FLAGS='',
                                 JAX_COMPILATION_CACHE_DIR=str(_CACHE / 'gpu_check_cpu')))
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  report = json.loads(out.read_text())
  assert report['ok'] and report['mode'] == 'cpu dry run'
  assert '--cpu' in report['command'] and report['machine']['cpus'] >= 1
  assert len(report['machine']['load_average_before']) == 3

  fixtures = report['fixtures']
  assert fixtures['ok'] and fixtures['returncode'] == 0 and not fixtures['outputs_failed']
  assert [pathlib.Path(f).name for f in fixtures['files']] == ['metrics.npz', 'spawn.npz']
  assert fixtures['outputs_checked'] >= 20

  steps = report['train_steps']
  assert steps['peak']['matmul_n'] == 256
  assert all(v > 0 for v in steps['peak']['matmul_flops_per_s'].values())
  # float32: two batches, then the largest-batch estimate (the CPU cap); bfloat16: one batch.
  assert [(r['dtype'], r['batch'], r['role']) for r in steps['results']] == [
      ('float32', 1, 'batch 1'), ('float32', 2, 'batch 2'), ('float32', 4, 'largest that fits'),
      ('bfloat16', 1, 'batch 1')]
  for r in steps['results']:
    assert 'error' not in r, r
    assert r['raw_input'] and r['input_shape'][2:] == [16, 16, 3]
    assert r['compile_s'] > 0 and r['s_per_step'] > 0 and len(r['step_times_s']) == r['steps_timed']
    assert r['model_flops_per_step'] > 0 and r['mfu'] > 0 and r['xla_temp_bytes'] > 0
    assert r['final_loss'] == r['final_loss']  # finite (the child raises otherwise)
  assert steps['results'][2]['steps_timed'] == 1  # the estimate runs half the steps

  demo = report['demo_run']
  assert demo['ok'] and demo['returncode'] == 0 and demo['data_generation']['returncode'] == 0
  assert demo['steps'] == 4 and demo['last_logged']['step'] == 4
  assert demo['eval']['num_videos'] == 4 and 0 <= demo['eval']['ari'] <= 100
