"""benchmarks/gpu_check.sh: argument handling, the largest-batch estimate, the --cpu dry run."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

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


@pytest.mark.slow  # several minutes on 2 cores: compiles the demo model six times
def test_cpu_dry_run_writes_one_json(tmp_path):
  out = tmp_path / 'gpu_check.json'
  proc = subprocess.run(['bash', str(SCRIPT), '--cpu', '--out', str(out)], cwd=REPO,
                        capture_output=True, text=True, timeout=1800,
                        env=dict(os.environ, XLA_FLAGS=''))
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  report = json.loads(out.read_text())
  assert report['ok'] and report['mode'] == 'cpu dry run'
  assert report['fixtures']['ok'] and report['fixtures']['outputs_checked'] > 0
  steps = [r for r in report['train_steps']['results'] if 'error' not in r]
  assert {(r['dtype'], r['batch']) for r in steps} >= {('float32', 2), ('bfloat16', 4)}
  assert all(r['raw_input'] and r['compile_s'] > 0 and r['s_per_step'] > 0 for r in steps)
  assert report['demo_run']['ok'] and 'ari' in report['demo_run']['eval']
