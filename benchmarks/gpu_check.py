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
--cpu is the dry run that tests this logic on any machine (tests/test_gpu_check.py, in CI):
every stage with the least work that still runs each of its branches. Train steps of the demo
model shrunk to 16 px frames (CPU_TINY) instead of MOVi-C: float32 at batches 1 and 2 and the
largest-batch estimate (4, the CPU cap), bfloat16 at batch 1 (one batch: no estimate), 2 steps
each; the matmul peak at 256^3; a 4-step demo of the same tiny model on 8 videos, evaluated on
4; of the fixtures only metrics.npz and spawn.npz (6-9 s; all seven took 99 s on 2 shared cores,
most of the dry run's budget). gpu_check.sh --cpu also compiles with LLVM's optimisations off and
through JAX's persistent compilation cache, so CI's reruns load the compiled steps.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import shlex
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'benchmarks'))
import measure  # noqa: E402  (benchmarks/measure.py)

# One measurement of benchmarks/train_step.py (run as a script, in its own process).
train_step_child = functools.partial(measure.run_child, REPO / 'benchmarks' / 'train_step.py')

# Per-device batches timed per dtype, and the cap of the largest-batch estimate.
BATCHES = {'gpu': {'float32': (8, 32), 'bfloat16': (8, 32)},
           'cpu': {'float32': (1, 2), 'bfloat16': (1,)}}
LARGEST_CAP = {'gpu': 4096, 'cpu': 4}
# --cpu: configs/demo.py shrunk as tests/conftest.py's tiny_config (16 px, 4x4 patches, 5 slots),
# for the train steps (train_step.py overrides) and the demo run (--config flags).
CPU_TINY = {'data.resolution': 16, 'data.synthetic.resolution': 16,
            'data.synthetic.num_frames': 8, 'data.synthetic.min_objects': 2,
            'data.synthetic.max_objects': 3, 'model.encoder.cnn_patch_size': 4,
            'model.encoder.cnn_features': 16, 'model.slot_dim': 16, 'model.max_slots': 5,
            'model.decoder.hidden': (32, 32), 'curriculum.schedule': ((0, 2), (2, 3), (4, 5))}


def _run(cmd: list[str], log: pathlib.Path, env: dict | None = None, timeout: float = 900) -> dict:
  start = time.time()
  try:
    with log.open('w') as f:
      proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, timeout=timeout,
                            env=dict(os.environ, **(env or {})))
    rc = proc.returncode
  except subprocess.TimeoutExpired:
    rc = 'timeout'
  return {'command': shlex.join(cmd), 'returncode': rc, 'wall_s': time.time() - start,
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
  name, mode = ('demo', 'cpu') if cpu else ('movi_c_full', 'gpu')
  peak = train_step_child({'kind': 'peak', 'matmul_n': 256 if cpu else 4096}, 600)
  if 'error' in peak:
    return {'error': peak['error']}
  results = []
  for dtype, batches in BATCHES[mode].items():
    per_dtype = []
    for batch in batches:
      spec = {'kind': 'train', 'name': name, 'dtype': dtype, 'batch': batch, 'steps': steps,
              'warmup': 1 if cpu else 2, 'raw_input': True}
      if cpu:
        spec['overrides'] = CPU_TINY
      print(f'train step {name} {dtype} batch {batch} ...', flush=True)
      per_dtype.append(dict(train_step_child(spec, 900), role=f'batch {batch}'))
    measured = max((r['batch'] for r in per_dtype if _fits(r)), default=0)
    batch = largest_batch(per_dtype, cap=LARGEST_CAP[mode])
    while batch and batch > measured:
      print(f'train step {name} {dtype} batch {batch} (largest estimate) ...', flush=True)
      spec = dict(spec, batch=batch, steps=max(steps // 2, 1))
      result = dict(train_step_child(spec, 900), role='largest that fits')
      if _fits(result):
        per_dtype.append(result)
        break
      per_dtype.append(dict(result, role='did not fit', error=result['error'][-300:]))
      batch //= 2
    results += per_dtype
  measure.summarise(results, peak)
  measure.print_table([r for r in results if 'error' not in r], peak)
  return {'config': name + (' (CPU_TINY)' if cpu else ''), 'peak': peak, 'results': results}


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
  steps = 4 if cpu else 300
  flags = [f'--config.train.steps={steps}', f'--config.data.data_dir={data_dir}',
           '--config.data.num_eval_videos=16', '--config.train.eval_every_steps=0',
           '--config.train.checkpoint_every_steps=100000', '--config.data.synthetic.num_train=256',
           '--config.data.synthetic.num_validation=16']
  if cpu:  # one compilation of the step (no active_slots_only stages)
    flags += [f'--config.{k}={v}' for k, v in CPU_TINY.items()]
    flags += ['--config.data.batch_size=4', '--config.data.eval_batch_size=4',
              '--config.data.synthetic.num_train=8', '--config.data.synthetic.num_validation=4',
              '--config.data.num_eval_videos=4', '--config.train.warmup_steps=2',
              '--config.loss.contrast_group_size=4', '--config.data.shuffle_buffer=8',
              '--config.train.active_slots_only=False']
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
  start, load_before = time.time(), os.getloadavg()
  report = {'mode': 'cpu dry run' if args.cpu else 'gpu', 'started': time.strftime('%F %T'),
            'work_dir': str(work)}
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
  report['machine'] = measure.machine_info(load_before)
  measure.write_json(args.out, report)
  print(f"ok={report['ok']} in {report['wall_s']:.0f} s")
  sys.exit(0 if report['ok'] else 1)


if __name__ == '__main__':
  main()
