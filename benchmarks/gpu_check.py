r"""The work of benchmarks/gpu_check.sh (run that): fixtures, train steps, a demo run, one JSON.

  python benchmarks/gpu_check.py --out=FILE [--cpu]

1. every golden fixture (fixtures/reference and fixtures/trajectory) through
   slotcurri_jax.tools.check_fixture with float32 matmuls at "highest" precision
   (JAX_DEFAULT_MATMUL_PRECISION=highest: no TF32 / bf16 passes on the GPU);
2. benchmarks/train_step.py's measurement of the full MOVi-C model (configs/movi_c.py, DINOv2
   ViT-S/14 with random weights at 336 px, the frozen backbone inside the step) fed uint8
   128-px frames, so the step includes the on-device resize: per-device batches 8, 32 and the
   largest that fits (estimated from XLA's compiled memory analysis of the first two, tried,
   halved on failure), in float32 and bfloat16; step times, MFU against the device's dense
   bf16 peak, device peak memory, compile times;
3. a 300-step demo run (configs/demo.py, 256 training videos, evaluation on 16) with its
   wall-clock, steps/s and metrics.
--cpu is the dry run that tests this logic on any machine: the demo model at batches 2, 4 and
at most 8 instead of MOVi-C, 2 of the 5 single-step fixtures, a 20-step demo on tiny data.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'benchmarks'))
import train_step as ts  # noqa: E402  (benchmarks/train_step.py)


def _run(cmd: list[str], log: pathlib.Path, env: dict | None = None, timeout: float = 900) -> dict:
  start = time.time()
  try:
    with log.open('w') as f:
      proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, timeout=timeout,
                            env=dict(os.environ, **(env or {})))
    rc = proc.returncode
  except subprocess.TimeoutExpired:
    rc = 'timeout'
  return {'command': ' '.join(cmd), 'returncode': rc, 'wall_s': time.time() - start,
          'log': str(log)}


def check_fixtures(work: pathlib.Path, cpu: bool) -> dict:
  files = ([str(REPO / 'fixtures' / 'reference' / f) for f in ('metrics.npz', 'spawn.npz')]
           if cpu else [])  # no arguments: every fixture
  log = work / 'fixtures.jsonl'
  out = _run([sys.executable, '-m', 'slotcurri_jax.tools.check_fixture', *files], log,
             env={'JAX_DEFAULT_MATMUL_PRECISION': 'highest'})
  lines = [json.loads(l) for l in log.read_text().splitlines() if l.startswith('{')]
  out.update(outputs_checked=len(lines), outputs_failed=[l for l in lines if not l.get('ok')],
             files=sorted({l.get('file') for l in lines}), ok=out['returncode'] == 0,
             precision='highest')
  return out


def _fits(result: dict) -> bool:
  return 'error' not in result


def train_steps(cpu: bool, steps: int) -> dict:
  name = 'demo' if cpu else 'movi_c_full'
  peak = ts.run_child({'kind': 'peak'}, 600)
  if 'error' in peak:
    return {'error': peak['error']}
  results = []
  for dtype in ('float32', 'bfloat16'):
    per_dtype = []
    for batch in ((2, 4) if cpu else (8, 32)):
      spec = {'kind': 'train', 'name': name, 'dtype': dtype, 'batch': batch, 'steps': steps,
              'warmup': 1 if cpu else 2, 'raw_input': True}
      print(f'train step {name} {dtype} batch {batch} ...', flush=True)
      per_dtype.append(dict(ts.run_child(spec, 900), role=f'batch {batch}'))
    batch = largest_batch(per_dtype, cap=8 if cpu else 4096)
    while batch and batch > per_dtype[-1].get('batch', 0):
      print(f'train step {name} {dtype} batch {batch} (largest estimate) ...', flush=True)
      spec = dict(spec, batch=batch, steps=max(steps // 2, 1))
      result = dict(ts.run_child(spec, 900), role='largest that fits')
      if _fits(result):
        per_dtype.append(result)
        break
      per_dtype.append(dict(result, role='did not fit', error=result['error'][-300:]))
      batch //= 2
    results += per_dtype
  ts.summarise(results, peak)
  ts.print_table([r for r in results if 'error' not in r], peak)
  return {'config': name, 'peak': peak, 'results': results}


def largest_batch(results: list[dict], cap: int) -> int | None:
  """Per-device batch that fills ~90 % of device memory, from the linear fit of XLA's
  compiled temp + argument bytes of the measured batches (CPU: `cap`)."""
  ok = [r for r in results if _fits(r) and r.get('xla_temp_bytes')]
  if len(ok) < 2:
    return None
  limit = ok[-1].get('device_bytes_limit')
  if not limit:
    return cap
  (b0, m0), (b1, m1) = [(r['batch'], r['xla_temp_bytes'] + r['xla_argument_bytes']) for r in ok[-2:]]
  per_clip = (m1 - m0) / (b1 - b0)
  fixed = m0 - per_clip * b0
  batch = int((0.9 * limit - fixed) / per_clip) if per_clip > 0 else cap
  return min(cap, max(batch // 8 * 8, b1))


def demo_run(work: pathlib.Path, cpu: bool) -> dict:
  workdir, data_dir = work / 'demo', work / 'tfds'
  steps = 20 if cpu else 300
  flags = [f'--config.train.steps={steps}', f'--config.data.data_dir={data_dir}',
           '--config.data.num_eval_videos=16', '--config.train.eval_every_steps=0',
           '--config.train.checkpoint_every_steps=100000', '--config.data.synthetic.num_train=256',
           '--config.data.synthetic.num_validation=16']
  if cpu:
    flags += ['--config.data.batch_size=4', '--config.data.eval_batch_size=4',
              '--config.data.synthetic.num_train=16', '--config.data.synthetic.num_validation=4',
              '--config.data.num_eval_videos=4', '--config.train.warmup_steps=2',
              '--config.loss.contrast_group_size=4', '--config.data.shuffle_buffer=16']
  # Generate the data first, so the run's wall-clock is training + evaluation.
  gen = _run([sys.executable, '-c', (
      'import sys; from slotcurri_jax.data import pipeline; '
      'from absl import flags; from ml_collections import config_flags; '
      'cfg = config_flags.DEFINE_config_file("config", "configs/demo.py"); '
      'flags.FLAGS(sys.argv); pipeline.check_available(cfg.value)'),
      '--config=configs/demo.py', *flags], work / 'demo_data.log')
  out = _run([sys.executable, '-m', 'slotcurri_jax.main', '--config=configs/demo.py',
              f'--workdir={workdir}', *flags], work / 'demo.log')
  out['data_generation'] = gen
  out['steps'] = steps
  metrics = workdir / 'eval' / 'metrics_latest.json'
  if metrics.exists():
    out['eval'] = json.loads(metrics.read_text())['metrics']
  history = workdir / 'train_history.jsonl'
  if history.exists():
    lines = history.read_text().splitlines()
    out['last_logged'] = json.loads(lines[-1]) if lines else None
  out['ok'] = out['returncode'] == 0 and 'eval' in out
  return out


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--out', required=True)
  p.add_argument('--cpu', action='store_true')
  p.add_argument('--steps', type=int, default=None)
  p.add_argument('--skip', default='', help='comma-separated: fixtures, train_steps, demo')
  args = p.parse_args()
  skip = set(filter(None, args.skip.split(',')))
  work = pathlib.Path(tempfile.mkdtemp(prefix='slotcurri_gpu_check_'))
  start = time.time()
  report = {'mode': 'cpu dry run' if args.cpu else 'gpu', 'started': time.strftime('%F %T'),
            'work_dir': str(work), 'python': sys.version.split()[0]}
  if 'fixtures' not in skip:
    print('golden fixtures at float32 "highest" ...', flush=True)
    report['fixtures'] = check_fixtures(work, args.cpu)
  if 'train_steps' not in skip:
    report['train_steps'] = train_steps(args.cpu, args.steps or (2 if args.cpu else 5))
  if 'demo' not in skip:
    print('demo run ...', flush=True)
    report['demo_run'] = demo_run(work, args.cpu)
  report['wall_s'] = time.time() - start
  ok = [report[k].get('ok', 'error' not in report[k]) for k in ('fixtures', 'demo_run')
        if k in report]
  steps = report.get('train_steps', {})
  ok.append('error' not in steps and not any(
      'error' in r and r.get('role') != 'did not fit' for r in steps.get('results', [])))
  report['ok'] = all(ok)
  pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  pathlib.Path(args.out).write_text(json.dumps(report, indent=1) + '\n')
  print(f"wrote {args.out}: ok={report['ok']} in {report['wall_s']:.0f} s")
  sys.exit(0 if report['ok'] else 1)


if __name__ == '__main__':
  main()
