r"""Counted numbers for docs/scaling.md: FLOPs per training step by component, bytes per step.

  python benchmarks/capacity.py [--memory] [--out=benchmarks/results/capacity.json]

For each paper config (configs/movi_c.py, movi_e.py, ytvis.py; SlotCurri, and SlotCurri +
SSync) at its paper global batch, the train step (train.make_train_step, the step that
trains, fed a raw uint8 batch so the on-device resize is in it) is traced to a jaxpr,
abstractly (nothing runs), and every dot_general / convolution is counted with
the jaxpr counter of slotcurri_jax/costs.py (2 FLOPs per multiply-add, scans x their length)
and attributed to a component by the Flax module path in its name stack:
  vit              the frozen DINOv2 backbone (forward only: its output is stop_gradient-ed)
  feature_mlp      the feature MLP on the backbone tokens
  slot_attention   the corrector (slot attention + GRU + MLP)
  predictor        the transformer predictor
  decoder          the MLP broadcast decoder
  ssync            the SSync pseudo-labels and losses (when enabled)
  losses           everything else: feature MSE, slot-slot contrast, SSIM, slot-wise error
  preprocess       the on-device resize of the uint8 frames
forward and backward together (the backward's matmuls carry the same module names).
Also counted: bytes per step sent host -> device on both input paths, the trainable and
frozen parameter bytes (float32; the gradient all-reduce moves the trainable ones), and with
--memory XLA's compiled memory analysis of the step on this machine's CPU backend at
per-device batches (the estimate of per-device memory; it compiles, several minutes).
"""
from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import os
import pathlib
import sys
import time

# Read when jax and TensorFlow are imported.
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from slotcurri_jax import costs  # noqa: E402
from slotcurri_jax import train  # noqa: E402
from slotcurri_jax import train_state as train_state_lib  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'benchmarks'))
import measure  # noqa: E402  (benchmarks/measure.py)

COMPONENTS = ('vit', 'feature_mlp', 'slot_attention', 'predictor', 'decoder', 'ssync', 'losses',
              'preprocess')
STORED = {'movi_c': (128, 128), 'movi_e': (128, 128), 'ytvis': (324, 324)}  # raw frames / window
PAPER = (('movi_c', 'slotcurri'), ('movi_c', 'slotcurri_ssync'), ('movi_e', 'slotcurri'),
         ('ytvis', 'slotcurri'), ('ytvis', 'slotcurri_ssync'))


def paper_config(dataset: str, variant: str):
  spec = importlib.util.spec_from_file_location(f'{dataset}_cfg', REPO / 'configs' / f'{dataset}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config(variant)
  c.model.encoder.random_init = True  # shapes only
  return c


def component(stack: str) -> str:
  s = stack.lower()
  for key, name in (('device_preprocess', 'preprocess'), ('resize', 'preprocess'),
                    ('ssync', 'ssync'), ('encoder', 'vit'), ('dinov2', 'vit'), ('vit', 'vit'),
                    ('feature_mlp', 'feature_mlp'), ('corrector', 'slot_attention'),
                    ('slot_attention', 'slot_attention'), ('predictor', 'predictor'),
                    ('decoder', 'decoder')):
    if key in s:
      return name
  return 'losses'


def count_by_component(jaxpr, prefix: str = '', out=None) -> dict:
  out = collections.Counter() if out is None else out
  for eqn in jaxpr.eqns:
    stack = f'{prefix}/{eqn.source_info.name_stack}'
    name = eqn.primitive.name
    if name in ('dot_general', 'conv_general_dilated'):
      flops, _ = costs.jaxpr_flops(_OneEqn(eqn))
      out[component(stack)] += flops
      continue
    subs = {k: costs.sub_jaxprs(v) for k, v in eqn.params.items()}
    subs = {k: v for k, v in subs.items() if v}
    if not subs:
      continue
    if name == 'cond':  # the larger branch, as the counter does
      counts = [count_by_component(j, stack) for j in subs['branches']]
      out.update(max(counts, key=lambda c: sum(c.values())))
      continue
    scale = float(eqn.params['length']) if name == 'scan' else 1.0
    for jaxprs in subs.values():
      for j in jaxprs:
        for k, v in count_by_component(j, stack).items():
          out[k] += scale * v
  return out


class _OneEqn:
  def __init__(self, eqn):
    self.eqns = [eqn]


def _raw_batch(config, stored):
  b, t = config.data.batch_size, config.data.train_clip_len
  return {'frames': jax.ShapeDtypeStruct((b, t, *stored, 3), np.uint8),
          'size': jax.ShapeDtypeStruct((b, 4), np.int32),
          'crop': jax.ShapeDtypeStruct((b, 4), np.int32),
          'flip': jax.ShapeDtypeStruct((b,), bool)}


def count(dataset: str, variant: str, memory_batches=()) -> dict:
  config = paper_config(dataset, variant)
  run = train.Run.from_config(config)
  state = jax.eval_shape(lambda: _abstract_state(run))
  batch = _raw_batch(config, STORED[dataset])
  start = time.time()
  jaxpr = jax.make_jaxpr(train.make_train_step(run))(state, batch).jaxpr
  flops = count_by_component(jaxpr)
  labels = train_state_lib.param_labels(state.params, run.spec.frozen)
  sizes = collections.Counter()
  for leaf, label in zip(jax.tree.leaves(state.params), jax.tree.leaves(labels)):
    sizes[label] += int(np.prod(leaf.shape)) * 4
  b, t, r = config.data.batch_size, config.data.train_clip_len, config.data.resolution
  raw_bytes = sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in batch.values())
  out = {
      'config': f'configs/{dataset}.py:{variant}', 'global_batch': b, 'frames': t,
      'resolution': r, 'grid': run.spec.grid, 'max_slots': config.model.max_slots,
      'encoder': config.model.encoder.variant, 'train_steps': config.train.steps,
      'flops_per_step': {k: flops.get(k, 0.0) for k in COMPONENTS},
      'flops_per_step_total': sum(flops.values()),
      'bytes_per_step_host_to_device': {'device_path_uint8': raw_bytes,
                                        'host_path_float32': b * t * r * r * 3 * 4},
      'param_bytes_float32': dict(sizes),
      'trace_s': time.time() - start,
  }
  out['flops_per_clip'] = out['flops_per_step_total'] / b
  if memory_batches:
    out['xla_memory_cpu'] = {}
    for per_device in memory_batches:
      out['xla_memory_cpu'][per_device] = compiled_memory(config, dataset, variant, per_device)
  return out


def _abstract_state(run):
  config = run.config
  params = run.model.init(jax.random.PRNGKey(0), run.spec.example_input(config),
                          jnp.ones((config.model.max_slots,), bool))['params']
  tx = train_state_lib.make_optimizer(config, run.spec.frozen)
  return train.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=tx.init(params), slot_error=run.curriculum.init_error_record(),
                          rng=jax.random.PRNGKey(0), tx=tx)


def compiled_memory(config, dataset: str, variant: str, per_device: int) -> dict:
  """XLA's memory analysis of the step compiled for one device at `per_device` clips."""
  c = config.copy_and_resolve_references()
  c.data.batch_size = per_device
  c.loss.contrast_group_size = min(c.loss.contrast_group_size, per_device)
  run = train.Run.from_config(c)
  state = jax.eval_shape(lambda: _abstract_state(run))
  compile_s, compiled = measure.compile_timed(
      jax.jit(train.make_train_step(run), donate_argnums=(0,)), state,
      _raw_batch(c, STORED[dataset]))
  m = compiled.memory_analysis()
  return {'per_device_batch': per_device, 'temp_bytes': int(m.temp_size_in_bytes),
          'argument_bytes': int(m.argument_size_in_bytes),
          'output_bytes': int(m.output_size_in_bytes),
          'total_bytes': int(m.temp_size_in_bytes + m.argument_size_in_bytes),
          'compile_s': compile_s, 'backend': jax.devices()[0].platform}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--out', default=str(REPO / 'benchmarks' / 'results' / 'capacity.json'))
  p.add_argument('--memory', default='', help='per-device batches to compile, e.g. "16"')
  p.add_argument('--only', default='', help='e.g. movi_c:slotcurri')
  p.add_argument('--tables', action='store_true',
                 help='only print docs/scaling.md\'s derived tables from the saved results')
  args = p.parse_args()
  if args.tables:
    print(tables(args.out, str(REPO / 'benchmarks' / 'results' / 'input_pipeline.json')))
    return
  memory = tuple(int(b) for b in args.memory.split(',') if b)
  results = []
  for dataset, variant in PAPER:
    if args.only and args.only != f'{dataset}:{variant}':
      continue
    r = count(dataset, variant, memory if variant == 'slotcurri' else ())
    results.append(r)
    f = r['flops_per_step']
    print(f"{r['config']:<36} B={r['global_batch']:<4} {r['flops_per_step_total'] / 1e12:8.2f} "
          f"TFLOP/step = " + ', '.join(f'{k} {v / 1e12:.2f}' for k, v in f.items() if v)
          + f"; {r['bytes_per_step_host_to_device']['device_path_uint8'] / 1e6:.1f} MB/step in "
          f"(host path {r['bytes_per_step_host_to_device']['host_path_float32'] / 1e6:.0f} MB); "
          f"trainable {r['param_bytes_float32'].get('trainable', 0) / 1e6:.1f} MB", flush=True)
    for m in r.get('xla_memory_cpu', {}).values():
      print(f"   per-device batch {m['per_device_batch']}: XLA temp {m['temp_bytes'] / 1e9:.2f} GB "
            f"+ arguments {m['argument_bytes'] / 1e9:.2f} GB (compiled in {m['compile_s']:.0f} s)")
  existing = {}
  out = pathlib.Path(args.out)
  if out.exists() and args.only:
    existing = {r['config']: r for r in json.loads(out.read_text())['results']}
  for r in results:
    existing[r['config']] = r
  measure.write_json(out, {'results': list(existing.values())})


# --------------------------------------------------------------------------- derived tables

# Dense bf16 peaks and memory per device, from the vendors' data sheets (docs/scaling.md).
DEVICES = {
    'H100 SXM': {'bf16_flops': 989e12, 'memory_gb': 80},
    'A100 SXM': {'bf16_flops': 312e12, 'memory_gb': 80},
    'TPU v5e': {'bf16_flops': 197e12, 'memory_gb': 16},
    'TPU v5p': {'bf16_flops': 459e12, 'memory_gb': 95},
}
INTERCONNECT_GB_S = {  # per device, one direction, for the gradient all-reduce (data sheets)
    'H100 SXM': (450, 50), 'A100 SXM': (300, 25), 'TPU v5e': (200, 200), 'TPU v5p': (600, 600)}


def tables(capacity_json: str, input_json: str) -> str:
  """docs/scaling.md's derived tables (markdown) from the two result files."""
  cap = {r['config']: r for r in json.loads(pathlib.Path(capacity_json).read_text())['results']}
  inp = json.loads(pathlib.Path(input_json).read_text())
  host = {'movi': inp['movi_336px'], 'ytvis': inp['ytvis_518px']}
  runs = [('MOVi-C', 'configs/movi_c.py:slotcurri', 'movi'),
          ('MOVi-E', 'configs/movi_e.py:slotcurri', 'movi'),
          ('YouTube-VIS', 'configs/ytvis.py:slotcurri', 'ytvis')]
  lines = ['| run | device | MFU | s/step (1 dev) | clips/s per device | host cores per device, '
           'old / new path | H2D MB/s per device, old / new | wall-clock 1 / 8 / 64 devices | '
           'limit at 64 |', '|' + '---|' * 9]
  for label, key, kind in runs:
    r = cap[key]
    flops, batch, steps = r['flops_per_step_total'], r['global_batch'], r['train_steps']
    h = host[kind]
    old_cpu, new_cpu = h['host_path']['host_cpu_s_per_clip'], h['device_path']['host_cpu_s_per_clip']
    old_b, new_b = (h['host_path']['bytes_per_clip_to_device'],
                    h['device_path']['bytes_per_clip_to_device'])
    grad_bytes = r['param_bytes_float32'].get('trainable', 0)
    for device, d in DEVICES.items():
      for mfu in (0.4, 0.6):
        step1 = flops / (d['bf16_flops'] * mfu)
        clips = batch / step1
        walls, limit = [], 'compute'
        for n in (1, 8, 64):
          step = step1 / n
          intra, inter = INTERCONNECT_GB_S[device]
          bw = (intra if n <= 8 else inter) * 1e9
          allreduce = 2 * (n - 1) / n * grad_bytes / bw if n > 1 else 0.0
          total = step + allreduce
          walls.append(steps * total / 3600)
          if n == 64 and allreduce > 0.5 * step:
            limit = 'all-reduce'
        lines.append(
            f'| {label} | {device} | {int(mfu * 100)} % | {step1:.3f} | {clips:.0f} | '
            f'{clips * old_cpu:.1f} / {clips * new_cpu:.1f} | '
            f'{clips * old_b / 1e6:.0f} / {clips * new_b / 1e6:.0f} | '
            + ' / '.join(f'{w:.1f} h' for w in walls) + f' | {limit} |')
  return '\n'.join(lines)


if __name__ == '__main__':
  main()
