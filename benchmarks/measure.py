"""What every script in benchmarks/ measures the same way: timed calls, machine facts, the JSON.

  compile_s, compiled = measure.compile_timed(jax.jit(f), *args)  # lower + compile, timed
  timing = measure.time_calls(lambda: compiled(*args), steps=5, warmup=1)
  timing.median_s, timing.min_s, timing.times_s, timing.warmup_s, timing.last
  measure.machine_info(load_before)    # cpus, platform, load average before / now
  measure.jax_info()                   # jax version, backend, devices
  measure.write_json(path, result)     # + the command line that produced it; prints the path
  measure.run_child(script, spec, t)   # one measurement in a fresh process (own peak memory)
  measure.summarise(results, peak)     # MFU of train-step results; measure.print_table

Every timed call ends with jax.block_until_ready on what it returned, so a time is the
work's, not its dispatch's. Warm-up calls (the first one of a jax.jit function compiles)
are timed apart from the steady-state ones the median and minimum are taken over.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import platform
import shlex
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

import jax

REPO = pathlib.Path(__file__).resolve().parents[1]


@dataclasses.dataclass
class Timing:
  times_s: list[float]  # the timed (steady-state) calls
  warmup_s: list[float]  # the warm-up calls before them; a jit's first call compiles
  last: Any  # what the last call returned

  @property
  def median_s(self) -> float:
    return statistics.median(self.times_s)

  @property
  def min_s(self) -> float:
    return min(self.times_s)


def time_calls(call: Callable[[], Any], steps: int, warmup: int = 1,
               budget_s: float | None = None, min_steps: int = 3) -> Timing:
  """Time `warmup` + `steps` calls of call(), each until jax.block_until_ready of its result.

  budget_s: stop timing once at least `min_steps` calls are timed and the timed calls have
  taken this long (the slowest cases get fewer repeats)."""
  warm, times, out = [], [], None
  for _ in range(warmup):
    start = time.perf_counter()
    out = jax.block_until_ready(call())
    warm.append(time.perf_counter() - start)
  end = None if budget_s is None else time.perf_counter() + budget_s
  for i in range(steps):
    start = time.perf_counter()
    out = jax.block_until_ready(call())
    times.append(time.perf_counter() - start)
    if end is not None and i + 1 >= min_steps and time.perf_counter() > end:
      break
  return Timing(times_s=times, warmup_s=warm, last=out)


def compile_timed(jitted, *args, **kwargs):
  """(seconds, executable) of jitted.lower(*args, **kwargs).compile()."""
  start = time.perf_counter()
  compiled = jitted.lower(*args, **kwargs).compile()
  return time.perf_counter() - start, compiled


def machine_info(load_before=None) -> dict:
  """This machine's CPUs and platform, and the 1/5/15-minute load average now (and before,
  if given: os.getloadavg() taken when the measurement started)."""
  info = {'cpu_count': os.cpu_count(), 'cpus': len(os.sched_getaffinity(0)),
          'platform': platform.platform(), 'processor': platform.processor(),
          'machine': platform.machine(), 'python': sys.version.split()[0]}
  if load_before is not None:
    info['load_average_before'] = list(load_before)
  info['load_average_after'] = list(os.getloadavg())
  return info


def jax_info() -> dict:
  """The jax version, backend and devices this process sees (initialises the backend)."""
  devices = jax.devices()
  return {'jax': jax.__version__, 'backend': jax.default_backend(), 'devices': str(devices),
          'device_kind': devices[0].device_kind, 'device_count': len(devices)}


def command_line(argv=None) -> str:
  """The command that runs this script with `argv` (default: this process's arguments)."""
  script = pathlib.Path(sys.argv[0]).resolve()
  repo = pathlib.Path(__file__).resolve().parents[1]
  name = script.relative_to(repo) if script.is_relative_to(repo) else script
  return shlex.join(['python', str(name), *(sys.argv[1:] if argv is None else argv)])


def write_json(path, result: dict, argv=None) -> pathlib.Path:
  """Write `result` with the command line that produced it first; print where it went."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps({'command': command_line(argv), **result}, indent=1) + '\n')
  print(f'wrote {path}', flush=True)
  return path


# --------------------------------------------------------------------------- child processes

def run_child(script, spec: dict, timeout: float) -> dict:
  """`python script --_child JSON(spec)` in a fresh process (its peak memory is its own):
  the JSON of its last 'RESULT ' stdout line, with wall_s and the load averages; or
  {'error': ..., **spec} when it timed out or failed."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  start = time.time()
  load_before = os.getloadavg()
  try:
    proc = subprocess.run([sys.executable, str(script), '--_child', json.dumps(spec)],
                          capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=str(REPO))
  except subprocess.TimeoutExpired:
    return {'error': f'timed out after {timeout:.0f}s', **spec}
  lines = [l for l in proc.stdout.splitlines() if l.startswith('RESULT ')]
  if proc.returncode or not lines:
    return {'error': f'exit {proc.returncode}: {proc.stderr[-2000:]}', **spec}
  result = json.loads(lines[-1][len('RESULT '):])
  result.update(wall_s=time.time() - start, load_before=load_before, load_after=os.getloadavg())
  return result


def _gb(x):
  return f'{x / 1e9:.2f}' if x else '-'


def summarise(results: list[dict], peak: dict, anchors: dict | None = None) -> list[dict]:
  """Add MFU to every training-step result of benchmarks/train_step.py's child, and the
  comparison with `anchors` {(config, batch): PyTorch's numbers} on CPU."""
  facts = peak['device']
  for r in results:
    if 'error' in r or 'model_flops_per_step' not in r:
      continue
    achieved = r['model_flops_per_step'] * r['steps_per_s']
    r['achieved_flops_per_s'] = achieved
    if facts['platform'] == 'gpu':
      device_peak = facts.get('peak_flops')
      r['mfu_peak_basis'] = facts.get('peak_source')
    else:
      device_peak = max(peak['matmul_flops_per_s'].values())
      n = peak.get('matmul_n', 4096)
      r['mfu_peak_basis'] = (f'measured best {n}^3 jit matmul on this CPU: '
                             + ', '.join(f'{k} {v / 1e9:.0f} GFLOP/s'
                                         for k, v in peak['matmul_flops_per_s'].items()))
    r['mfu'] = achieved / device_peak if device_peak else None
    nominal = peak.get('nominal_cpu_peak')
    if facts['platform'] == 'cpu' and nominal:
      r['mfu_vs_nominal_cpu_peak'] = achieved / nominal['flops_per_s']
    # The PyTorch anchors time SlotCurri, the files' default variant.
    anchor = (None if r.get('active_slots_only') or r.get('variant', 'default') != 'default'
              else (anchors or {}).get((r['config'], r['batch'])))
    if anchor and facts['platform'] == 'cpu':
      steps_peak = r.get('steps_peak_rss_bytes')
      r['vs_pytorch'] = {
          'anchor': anchor, 'clips_per_s_ratio': r['clips_per_s'] / anchor['clips_per_s'],
          'peak_memory_ratio': r['peak_rss_bytes'] / 1e9 / anchor['peak_gb'],
          'steps_peak_memory_ratio': steps_peak / 1e9 / anchor['peak_gb'] if steps_peak else None}
  return results


def print_table(results: list[dict], peak: dict) -> None:
  """The training-step (and evaluation) results of `summarise` as a table on stdout."""
  facts = peak['device']
  print(f"\ndevice: {facts['platform']} {facts['device_kind']} (jax {facts['jax']}); "
        f"MFU peak basis: {next((r['mfu_peak_basis'] for r in results if 'mfu_peak_basis' in r), '-')}")
  nominal = peak.get('nominal_cpu_peak')
  if facts['platform'] == 'cpu' and nominal:
    print(f"'nom %': against the nominal {nominal['flops_per_s'] / 1e9:.0f} GFLOP/s "
          f"({nominal['cores']} cores x {nominal['mhz']:.0f} MHz x "
          f"{nominal['flops_per_cycle_per_core']} FLOP/cycle, assumed)")
  mem_col = 'RSS GB (steps)' if facts['platform'] == 'cpu' else 'dev peak GB'
  print('RSS: whole process incl. compilation (in brackets: while stepping, as when the '
        'executable comes from the persistent compilation cache)')
  header = (f"{'config':<14}{'dtype':<10}{'B':>4}{'s/step':>9}{'steps/s':>9}{'clips/s':>9}"
            f"{'compile s':>10}{mem_col:>16}{'TFLOP/step':>11}{'xla TFLOP':>10}{'TFLOP/s':>9}"
            f"{'MFU %':>7}{'nom %':>7}  vs PyTorch (clips/s x, memory x)")
  print(header)
  print('-' * len(header))
  for r in results:
    if 'error' in r:
      print(f"{r.get('config', r.get('name', '?')):<14}{r.get('dtype', ''):<10} ERROR {r['error'][:200]}")
      continue
    if 'forward' in r:  # evaluation
      f, c = r['forward'], r['cyclic']
      print(f"{r['config']:<14}{r['dtype']:<10}{r['batch']:>4}  {r['frames']} frames: forward "
            f"{f['s_per_step']:.3f} s, cyclic {c['s_per_step']:.3f} s -> cyclic/forward "
            f"{r['cyclic_over_forward']:.2f}x (matmul FLOPs {c['model_flops_per_step'] / f['model_flops_per_step']:.2f}x)")
      continue
    if facts['platform'] == 'cpu':
      mem = f"{_gb(r['peak_rss_bytes'])} ({_gb(r.get('steps_peak_rss_bytes'))})"
    else:
      mem = _gb(r['device_peak_bytes'])
    vs = r.get('vs_pytorch')
    vs_text = ''
    if vs:
      steps_ratio = vs['steps_peak_memory_ratio']
      vs_text = (f"{vs['clips_per_s_ratio']:.2f}x, {vs['peak_memory_ratio']:.2f}x"
                 + (f" ({steps_ratio:.2f}x)" if steps_ratio else ''))
    mfu = f"{100 * r['mfu']:.1f}" if r.get('mfu') is not None else '-'
    nom = (f"{100 * r['mfu_vs_nominal_cpu_peak']:.1f}"
           if r.get('mfu_vs_nominal_cpu_peak') is not None else '-')
    label = (r['config'] + (f"[K={r['computed_slots']}]" if r.get('active_slots_only') else '')
             + ('[remat]' if r.get('decoder_remat') else ''))
    print(f"{label:<14}{r['dtype']:<10}{r['batch']:>4}{r['s_per_step']:>9.3f}"
          f"{r['steps_per_s']:>9.3f}{r['clips_per_s']:>9.2f}{r['compile_s']:>10.1f}"
          f"{mem:>16}{r['model_flops_per_step'] / 1e12:>11.3f}"
          f"{r['xla_cost_analysis_flops'] / 1e12:>10.3f}{r['achieved_flops_per_s'] / 1e12:>9.3f}"
          f"{mfu:>7}{nom:>7}  {vs_text}")
