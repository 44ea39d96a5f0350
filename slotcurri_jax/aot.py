"""Compile a run's steps for a TPU slice this machine does not have, and read what they need.

libtpu compiles for TPU without a TPU: `jax.experimental.topologies` gives the devices of a
named slice, and a jitted step lowered with jax.ShapeDtypeStructs sharded over a Mesh of
those devices compiles with the real TPU compiler, allocating nothing. The steps compiled
here are the ones `main` trains and evaluates with, built through the same code:
`train.Run` (encoder, model, curriculum, objective), the state's shardings from
`config.mesh` (`train.abstract_state`), the global batches the input pipeline yields
(`pipeline.batch_shapes`), `train.jit_train_step` (one per curriculum stage with
`train.active_slots_only`) and the evaluation `Predictor`.

Per step: per-device HBM from the compiler's memory analysis, plus what lives beside the
step during training (the train state the eval step does not take, the prefetched
batches), against the chip's HBM; FLOPs per device counted from the compiled HLO with
loop trip counts (costs.stats), beside the jaxpr count of the same step; the step time
those FLOPs take at the chip's bf16 peak (a lower bound); collective bytes; compile time.
`plan_fit` tries the memory options on a step that does not fit and names the cheapest
that fits.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import math
import os
import re
import time
import warnings
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from slotcurri_jax import costs
from slotcurri_jax import evaluate as evaluate_lib
from slotcurri_jax import parallel
from slotcurri_jax import train
from slotcurri_jax.data import device_preprocess
from slotcurri_jax.data import pipeline

GiB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Chip:
  """A TPU generation as its data sheet gives it. `named_by_cores`: Cloud names a slice by
  TensorCores (2 per chip: v4-8 is 4 chips), else by chips (v5e-8 is 8 chips)."""
  hbm_bytes: int
  peak_bf16_flops: float
  named_by_cores: bool
  torus_3d: bool
  source: str


CHIPS = {
    'v4': Chip(32 * GiB, 275e12, True, True, 'https://cloud.google.com/tpu/docs/v4'),
    'v5e': Chip(16 * GiB, 197e12, False, False, 'https://cloud.google.com/tpu/docs/v5e'),
    'v5p': Chip(95 * GiB, 459e12, True, True, 'https://cloud.google.com/tpu/docs/v5p'),
    'v6e': Chip(32 * GiB, 918e12, False, False, 'https://cloud.google.com/tpu/docs/v6e'),
}
# NVIDIA GPUs, compiled by jax's CUDA plugin (aot_gpu.py): 'h100-N' is N GPUs. H100 SXM:
# 80 GB HBM3, 989 TFLOP/s dense bf16 (the data sheet's 1,979 is with sparsity).
GPU_CHIPS = {
    'h100': Chip(80 * 10 ** 9, 989e12, False, False,
                 'https://www.nvidia.com/en-us/data-center/h100/ (data sheet, H100 SXM)'),
}
# Chip grids of the slices Cloud offers (the docs' topology tables), by chip count.
_GRID_2D = {1: '1x1', 4: '2x2', 8: '2x4', 16: '4x4', 32: '4x8', 64: '8x8', 128: '8x16',
            256: '16x16'}
_GRID_3D = {4: '2x2x1', 8: '2x2x2', 16: '2x2x4', 32: '2x4x4', 64: '4x4x4', 128: '4x4x8',
            256: '4x8x8', 512: '8x8x8', 1024: '8x8x16', 2048: '8x16x16', 4096: '16x16x16'}


def topology_names() -> list[str]:
  """Every slice name `topology` accepts, e.g. 'v5e-8', 'v5p-128'."""
  names = []
  for kind, chip in CHIPS.items():
    grid = _GRID_3D if chip.torus_3d else _GRID_2D
    names += [f'{kind}-{n * 2 if chip.named_by_cores else n}' for n in grid]
  return names + [f'{kind}-{n}' for kind in GPU_CHIPS for n in (1, 2, 4, 8, 16, 32, 64, 128)]


@dataclasses.dataclass(frozen=True)
class Topology:
  """A TPU slice: its name ('v5p-8'), chip, chip grid, and compile-only devices (one per
  chip: the v4 and v5p megacore, as jax sees them on the hardware); or GPUs ('h100-8',
  grid '1x1x8': slices x hosts x GPUs per host) with the options their compile needs."""
  name: str
  kind: str
  grid: str
  devices: tuple
  chip: Chip
  compiler_options: dict = dataclasses.field(default_factory=dict, hash=False)

  @property
  def processes(self) -> int:
    return len({d.process_index for d in self.devices})


def topology(name: str) -> Topology:
  """'v5p-8' (Cloud's accelerator type; 'v5litepod-8' is 'v5e-8') -> the slice's
  compile-only devices; 'h100-8' -> 8 compile-only H100s (aot_gpu.py, jax's CUDA plugin).

  Raises ValueError naming the accepted names for anything else."""
  gpu = re.fullmatch(r'(h100)-(\d+)', name.strip().lower())
  if gpu:
    from slotcurri_jax import aot_gpu  # pylint: disable=g-import-not-at-top
    kind, count = gpu.group(1), int(gpu.group(2))
    grid, devices = aot_gpu.compile_only_devices(name, count, GPU_CHIPS[kind].hbm_bytes)
    return Topology(name=f'{kind}-{count}', kind=kind, grid=grid, devices=tuple(devices),
                    chip=GPU_CHIPS[kind], compiler_options=dict(aot_gpu.COMPILER_OPTIONS))
  m = re.fullmatch(r'(v4|v5e|v5litepod|v5p|v6e)-(\d+)', name.strip().lower())
  grid = None
  if m:
    kind, count = m.group(1).replace('v5litepod', 'v5e'), int(m.group(2))
    chip = CHIPS[kind]
    chips = count // 2 if chip.named_by_cores else count
    if not chip.named_by_cores or count % 2 == 0:
      grid = (_GRID_3D if chip.torus_3d else _GRID_2D).get(chips)
  if grid is None:
    raise ValueError(
        f'unknown TPU topology {name!r}; use a Cloud accelerator type: v4-N and v5p-N name '
        f'N TensorCores (N/2 chips), v5e-N (v5litepod-N) and v6e-N name N chips (or h100-N, '
        f'N NVIDIA H100 GPUs); one of {", ".join(topology_names())}')
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  # libtpu takes a lock file for the chips of this host; compiling touches no chip, so
  # several compiling processes (and one training beside them) may load it at once.
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  with _quiet_stderr():  # libtpu's start-up warnings about the absent TPU host
    desc = topologies.get_topology_desc(f'{kind}:{grid}', 'tpu',
                                        **({'chip_config_name': 'megacore'}
                                           if chip.named_by_cores else {}))
  return Topology(name=f'{kind}-{count}', kind=kind, grid=grid, devices=tuple(desc.devices),
                  chip=chip)


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
  """Silence the C++ libraries' writes to file descriptor 2 (kept with SLOTCURRI_DEBUG)."""
  if os.environ.get('SLOTCURRI_DEBUG'):
    yield
    return
  saved = os.dup(2)
  try:
    with open(os.devnull, 'w') as devnull:
      os.dup2(devnull.fileno(), 2)
      yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)


# --------------------------------------------------------------------------- one step


@dataclasses.dataclass
class StepReport:
  """What one compiled step needs on one device of `topology`."""
  topology: str
  devices: int
  processes: int
  step: str  # 'train', 'train (K=3)', 'eval'
  per_device_batch: int
  memory: dict  # bytes per device by kind (compiler's memory analysis + resident)
  hbm_bytes_per_device: int
  hbm_capacity_bytes: int
  flops_per_device: float | None  # compiled HLO, loops x trip counts (None: did not compile)
  counted_flops_per_device: float  # the traced jaxpr's count / devices
  xla_cost_analysis_flops: float | None  # XLA's own count (loop bodies once)
  lower_bound_step_seconds: float | None  # flops_per_device at the chip's bf16 peak
  collective_bytes_per_device: dict
  unknown_trip_counts: int
  compile_seconds: float
  options: dict = dataclasses.field(default_factory=dict)  # config overrides compiled with

  @property
  def fits(self) -> bool:
    return self.hbm_bytes_per_device <= self.hbm_capacity_bytes

  def as_json(self) -> dict:
    return dict(dataclasses.asdict(self), fits=self.fits)


def _with_sharding(tree: Any, sharding) -> Any:
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def _bytes_per_device(tree: Any) -> int:
  """Bytes of one device's shards of a tree of sharded ShapeDtypeStructs."""
  total = 0
  for x in jax.tree.leaves(tree):
    shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
    total += math.prod(shape) * np.dtype(x.dtype).itemsize
  return total


def check_batch_split(batch: int, key: str, topo: Topology) -> None:
  """The pipeline's split of a global batch: over processes, then their local devices."""
  n, local = topo.processes, len(topo.devices) // topo.processes
  if batch % n or (batch // n) % local:
    raise ValueError(
        f'config.data.{key}={batch} does not split over {topo.name} ({len(topo.devices)} '
        f'devices, {n} hosts of {local}); set --config.data.{key} to a multiple of '
        f'{len(topo.devices)}')


@dataclasses.dataclass
class Program:
  """The run's steps on a topology, ready to lower (nothing allocated)."""
  config: Any
  topo: Topology
  mesh: Any
  run: train.Run
  state: Any  # TrainState of sharded ShapeDtypeStructs
  train_batch: dict
  eval_batch: dict

  @classmethod
  def build(cls, config, topo: Topology) -> 'Program':
    check_batch_split(config.data.batch_size, 'batch_size', topo)
    check_batch_split(config.data.eval_batch_size, 'eval_batch_size', topo)
    mesh = parallel.create_mesh(config.mesh.data, config.mesh.fsdp, devices=topo.devices)
    run = train.Run.from_config(config)
    if run.spec.input_key != 'video':
      raise ValueError(f'model.encoder.kind={config.model.encoder.kind!r} reads precomputed '
                       'tokens; compile a config whose encoder reads frames')
    state, _ = train.abstract_state(run, mesh)
    train_batch, eval_batch = pipeline.batch_shapes(config, data=run.data)
    sharding = parallel.batch_sharding(mesh)
    return cls(config=config, topo=topo, mesh=mesh, run=run, state=state,
               train_batch=_with_sharding(train_batch, sharding),
               eval_batch=_with_sharding(eval_batch, sharding))

  def step_names(self) -> list[str]:
    """'train' (or one 'train (K=k)' per curriculum stage), then 'eval'."""
    if not self.config.train.active_slots_only:
      return ['train', 'eval']
    counts = sorted({k for _, k in self.run.curriculum.schedule})
    return [f'train (K={k})' for k in counts] + ['eval']

  def _lowerable(self, step: str) -> tuple[Callable, Callable, tuple]:
    """(jitted step, the same step unjitted, its abstract arguments) of one step."""
    if step == 'eval':
      predictor = evaluate_lib.make_predictor(self.config, self.run, self.mesh)
      replicated = parallel.replicated(self.mesh)
      args = (self.state.params, device_preprocess.model_input(self.eval_batch),
              jax.ShapeDtypeStruct((self.config.model.max_slots,), jnp.bool_,
                                   sharding=replicated),
              self.eval_batch['num_frames'])
      return predictor, predictor.predict, args
    k = re.search(r'K=(\d+)', step)  # 'train (K=3)': a curriculum stage's step
    num_slots = int(k.group(1)) if k else None
    shardings = jax.tree.map(lambda x: x.sharding, self.state)
    jitted = train.jit_train_step(self.run, self.mesh, shardings, num_slots=num_slots)
    return (jitted, train.make_train_step(self.run, num_slots),
            (self.state, self.train_batch))

  def lower(self, step: str) -> jax.stages.Lowered:
    """`step` lowered for the topology (seconds; its text identifies the program)."""
    fn, _, args = self._lowerable(step)
    return fn.lower(*args)

  def compile(self, step: str, options: dict | None = None,
              lowered: jax.stages.Lowered | None = None) -> StepReport:
    """Compile `step` for the topology and report what it needs per device. A step whose
    temporaries alone exceed the chip's HBM does not compile (the TPU compiler says so): its
    report takes the compiler's figure, with the arguments, and no compiled FLOPs."""
    fn, traced, args = self._lowerable(step)
    counted, _ = costs.jaxpr_flops(jax.make_jaxpr(traced)(*args).jaxpr)
    devices = len(self.topo.devices)
    batch = self.config.data.eval_batch_size if step == 'eval' else self.config.data.batch_size
    report = functools.partial(
        StepReport, topology=self.topo.name, devices=devices, processes=self.topo.processes,
        step=step, per_device_batch=batch // devices, hbm_capacity_bytes=self.topo.chip.hbm_bytes,
        counted_flops_per_device=counted / devices, options=dict(options or {}))
    start = time.perf_counter()
    try:
      with _quiet_stderr(), warnings.catch_warnings():
        # A persistent compilation cache (the tests') stores compile-only executables but
        # cannot load them without a device client; the compile goes on without it.
        warnings.filterwarnings('ignore', message='Error reading persistent compilation cache')
        compiled = (lowered or fn.lower(*args)).compile(
            compiler_options=self.topo.compiler_options or None)
    except jax.errors.JaxRuntimeError as e:
      needed = _out_of_memory(str(e))
      if needed is None:
        raise
      memory = {'arguments': _bytes_per_device(args), 'temporaries': needed}
      return report(memory=memory, hbm_bytes_per_device=sum(memory.values()),
                    flops_per_device=None, xla_cost_analysis_flops=None,
                    lower_bound_step_seconds=None, collective_bytes_per_device={},
                    unknown_trip_counts=0, compile_seconds=time.perf_counter() - start)
    seconds = time.perf_counter() - start
    stats = costs.stats(compiled.as_text())
    xla = compiled.cost_analysis()
    xla = xla[0] if isinstance(xla, (list, tuple)) else (xla or {})
    memory = self._memory(step, compiled.memory_analysis())
    return report(
        memory=memory,
        hbm_bytes_per_device=sum(v for k, v in memory.items() if k != 'aliased') -
        memory['aliased'], flops_per_device=stats.flops,
        xla_cost_analysis_flops=float(xla.get('flops', 0.0)),
        lower_bound_step_seconds=stats.flops / self.topo.chip.peak_bf16_flops,
        collective_bytes_per_device=stats.collective_bytes,
        unknown_trip_counts=stats.unknown_trip_counts, compile_seconds=seconds)

  def _memory(self, step: str, analysis) -> dict:
    """Bytes per device: the compiler's arguments, outputs, aliased (outputs written into
    donated arguments, counted once), temporaries and code, plus what stays in HBM beside
    the step during training: the prefetched batches (data.prefetch) beside a train step;
    the train state's other parts (optimizer moments, ...) beside the eval step."""
    out = {'arguments': analysis.argument_size_in_bytes,
           'outputs': analysis.output_size_in_bytes,
           'aliased': analysis.alias_size_in_bytes,
           'temporaries': analysis.temp_size_in_bytes,
           'generated_code': analysis.generated_code_size_in_bytes}
    if step == 'eval':
      out['resident_train_state'] = (_bytes_per_device(self.state) -
                                     _bytes_per_device(self.state.params))
    else:
      out['prefetched_batches'] = self.config.data.prefetch * _bytes_per_device(self.train_batch)
    return out


_UNITS = {'': 1, 'K': 2 ** 10, 'M': 2 ** 20, 'G': 2 ** 30, 'T': 2 ** 40}


def _out_of_memory(message: str) -> int | None:
  """Bytes of temporaries in the TPU compiler's 'RESOURCE_EXHAUSTED: ... HLO temporaries
  (123.77G) exceeds available HBM (15.75G)', else None."""
  m = re.search(r'RESOURCE_EXHAUSTED.*?temporaries \(([\d.]+)([KMGT]?)\)', message, re.S)
  return int(float(m.group(1)) * _UNITS[m.group(2)]) if m else None


# --------------------------------------------------------------------------- what fits

def memory_options(topo: Topology) -> dict[str, dict]:
  """The options that trade speed (or, bf16, float32 rounding) for memory, as config
  overrides: decoder remat, params and moments sharded over every device (fsdp), bf16."""
  devices = len(topo.devices)
  return {
      'remat': {'model.decoder.remat': True},
      'fsdp': {'mesh.fsdp': devices, 'mesh.fsdp_all_params': True},
      'bf16': {'model.compute_dtype': 'bfloat16', 'model.encoder.dtype': 'bfloat16'},
  }


def apply_overrides(config, overrides: dict):
  """A copy of `config` with dotted-key overrides applied."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    for key, value in overrides.items():
      *parents, leaf = key.split('.')
      node = config
      for p in parents:
        node = node[p]
      node[leaf] = value
  return config


@dataclasses.dataclass
class FitPlan:
  """What was tried for a step that did not fit, and the cheapest that fits (if any)."""
  tried: list  # [(option names, StepReport)]
  best: tuple | None  # (option names, StepReport) of the cheapest that fits
  max_per_device_batch: int | None  # with every option, when none fits at this batch


def _cost(entry) -> tuple:
  """Order of cheapness: exact options before bf16 (which changes float32 rounding), then
  the step's FLOPs (remat recomputes), its collective bytes (fsdp gathers), fewer options."""
  names, report = entry
  return ('bf16' in names, report.flops_per_device,
          sum(report.collective_bytes_per_device.values()), len(names))


def plan_fit(config, topo: Topology, step: str,
             compile_fn: Callable[[Any, str, dict], StepReport] | None = None) -> FitPlan:
  """Try the memory options (alone, in pairs, all three) on `step`; stop at the first
  group in which something fits and keep its cheapest. When nothing fits, find the
  largest per-device batch that fits with all of them (compiled, not extrapolated)."""
  compile_fn = compile_fn or (lambda c, s, o: Program.build(c, topo).compile(s, o))
  options = memory_options(topo)
  tried = []
  for size in (1, 2, 3):
    group = []
    for names in itertools.combinations(options, size):
      overrides = {k: v for n in names for k, v in options[n].items()}
      report = compile_fn(apply_overrides(config, overrides), step, overrides)
      group.append((names, report))
    tried += group
    fitting = [e for e in group if e[1].fits]
    if fitting:
      return FitPlan(tried=tried, best=min(fitting, key=_cost), max_per_device_batch=None)
  names, report = tried[-1]  # all three options
  key = 'eval_batch_size' if step == 'eval' else 'batch_size'
  devices = len(topo.devices)
  per_device = report.per_device_batch
  # Memory grows about linearly with the batch: start from that estimate, then halve.
  fixed = report.memory.get('arguments', 0) - report.memory.get('aliased', 0)
  estimate = int(per_device * (report.hbm_capacity_bytes - fixed) /
                 max(report.hbm_bytes_per_device - fixed, 1))
  candidate = min(max(estimate, 1), per_device - 1)
  overrides = {k: v for n in names for k, v in options[n].items()}
  while candidate >= 1:
    smaller = dict(overrides, **{f'data.{key}': candidate * devices})
    if compile_fn(apply_overrides(config, smaller), step, smaller).fits:
      return FitPlan(tried=tried, best=None, max_per_device_batch=candidate)
    candidate //= 2
  return FitPlan(tried=tried, best=None, max_per_device_batch=0)
