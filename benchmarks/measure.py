"""What every script in benchmarks/ measures the same way: timed calls, machine facts, the JSON.

  compile_s, compiled = measure.compile_timed(jax.jit(f), *args)  # lower + compile, timed
  timing = measure.time_calls(lambda: compiled(*args), steps=5, warmup=1)
  timing.median_s, timing.min_s, timing.times_s, timing.warmup_s, timing.last
  measure.machine_info(load_before)    # cpus, platform, load average before / now
  measure.jax_info()                   # jax version, backend, devices
  measure.write_json(path, result)     # + the command line that produced it; prints the path

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
import sys
import time
from typing import Any, Callable

import jax


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
