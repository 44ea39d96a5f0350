r"""Training-step speed, memory and FLOPs of the demo and MOVi-C models; evaluation rollouts.

  python benchmarks/train_step.py                                  # demo + MOVi-C slot stack
  python benchmarks/train_step.py --configs=demo,movi_c_slots,movi_c_full --steps=5
  python benchmarks/train_step.py --configs=movi_c_slots --dtypes=float32 --batch=16
  python benchmarks/train_step.py --configs=demo_eval,movi_c_slots_eval --eval_batch=4
  python benchmarks/train_step.py --configs=movi_c_slots --dtypes=float32 --active_slots=2,5
  python benchmarks/train_step.py --configs=demo,movi_c_slots --dtypes=float32 --variant=ssync

Configurations (--configs, comma separated):
  demo               configs/demo.py: CNN encoder, 64 px, 8x8 patches, D_s 64, 7 slots,
                     decoder 256x3; batch 16.
  movi_c_slots       configs/movi_c.py's slot stack alone on precomputed backbone tokens
                     [B, 4, 576, 384] (what docs/method.md §13.5 timed for PyTorch): the
                     feature MLP, slot attention, predictor, decoder 1024x3, 11 slots; batch 8.
  movi_c_full        configs/movi_c.py with a random-init ViT-S/14 at 336 px (frozen
                     forward inside the step); batch 8.
  demo_eval, movi_c_slots_eval
                     the evaluation Predictor at 24 frames, forward against cyclic rollout
                     (cyclic = forward + a backward pass over frames T-2..0).
Every training configuration runs in float32 and bfloat16 (--dtypes): config.model.compute_dtype
(trainable Linears) and config.model.encoder.dtype (backbone); LayerNorm statistics, softmaxes
and losses stay float32 in the model.

Each (configuration, dtype) runs in a fresh subprocess, so its peak RSS is its own. The
step is the project's train.jit_train_step (movi_c_slots: the 'tokens' encoder, the slot stack
fed precomputed backbone tokens in batch['features']). Measured:
  * compile time of step.lower(...).compile() (no persistent cache);
  * s/step: median over --steps steps after --warmup steps, each ended by
    jax.block_until_ready; clips/s = batch / (s/step);
  * peak memory: CPU, ru_maxrss of the subprocess, compilation included; and the peak
    RSS while stepping (VmHWM reset after compiling: what a run from the persistent
    compilation cache holds), and the baseline after imports, before the model (jax +
    TensorFlow, which train.py imports, are ~0.75 GB of it);
    GPU, device memory_stats()['peak_bytes_in_use'];
  * model FLOPs per step: dot_general + convolution FLOPs counted on the step's jaxpr,
    scan bodies multiplied by their length (XLA's cost_analysis()['flops'], also
    reported, counts a loop body once, so it undercounts the scans over frames);
  * MFU = FLOPs/step x steps/s / peak. CPU: the peak is *measured*, the best of a
    4096^3 float32 and bfloat16 matmul under jit on this machine (stated in the output);
    GPU: the vendor's dense bf16 tensor-core peak of the detected device (table below).
--remat also times every training configuration with the decoder MLP rematerialised
(model.decoder.remat: activations recomputed in the backward pass; rows `config[remat]`).
--active_slots=K1,K2 also times steps built with train.active_slots_only for stages of
K1, K2 computed slots (table rows `config[K=..]`), against the padded step of the same row.
Results: a table on stdout, JSON in benchmarks/results/train_step_{cpu,gpu}.json (--out).
The GPU path (device detection, memory_stats, bf16 peak table) has not been run by us.
"""
from __future__ import annotations

import argparse
import ctypes
import functools
import json
import os
import pathlib
import resource
import warnings

import jax
import jax.numpy as jnp
import numpy as np

import measure  # benchmarks/measure.py
from slotcurri_jax import config as config_lib
from slotcurri_jax import costs
from slotcurri_jax import parallel
# slotcurri_jax.train and .evaluate are imported where used: they import TensorFlow (~5 s,
# ~0.75 GB), which only the measuring child needs, not the driver (this script's parent
# process).

REPO = pathlib.Path(__file__).resolve().parents[1]
TRAIN_CONFIGS = ('demo', 'movi_c_slots', 'movi_c_full')
EVAL_CONFIGS = ('demo_eval', 'movi_c_slots_eval')
DEFAULT_BATCH = {'demo': 16, 'movi_c_slots': 8, 'movi_c_full': 8}
DEFAULT_STEPS = {'demo': 10, 'movi_c_slots': 5, 'movi_c_full': 5}  # MOVi-C: ~25 s a step on 2 cores
EVAL_FRAMES = 24

# Dense bf16 tensor-core peaks (FLOP/s, no sparsity) by device_kind substring, vendor data sheets.
GPU_BF16_PEAK = (
    ('H200', 989e12), ('H100 PCIe', 756e12), ('H100', 989e12), ('GH200', 989e12),
    ('A100', 312e12), ('L40S', 362e12), ('L4', 121e12), ('A10G', 70e12), ('V100', 125e12),
)

# docs/method.md §13.5, PyTorch 2.13 CPU, 2 threads, float32, same machine kind.
# Speed: the faster of the two allocator settings; memory: the smaller.
PYTORCH_ANCHORS = {
    ('demo', 16): {'s_per_step': 0.50, 'clips_per_s': 32.0, 'peak_gb': 0.9},
    ('movi_c_slots', 8): {'s_per_step': 29.0, 'clips_per_s': 0.28, 'peak_gb': 6.9},
    ('movi_c_slots', 16): {'s_per_step': 86.0, 'clips_per_s': 0.16, 'peak_gb': 13.2},
}


# --------------------------------------------------------------------------- configs and models

def _config_file(name: str, variant: str | None = None):
  return config_lib.load(f"{REPO / 'configs' / f'{name}.py'}:{variant or ''}")


def _tuples(value):
  """JSON's lists back to the tuples config fields hold."""
  return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def build_config(name: str, dtype: str, batch: int, remat: bool = False,
                 overrides: dict | None = None, variant: str | None = None):
  """The config of a benchmark configuration (name without the _eval suffix) for a method
  variant of its config file (None: the file's default, SlotCurri); `overrides`
  {'model.slot_dim': 16, ...} are set first (gpu_check.py --cpu shrinks the demo with them)."""
  c = _config_file('demo' if name == 'demo' else 'movi_c', variant)
  for key, value in (overrides or {}).items():
    *parents, field = key.split('.')
    setattr(functools.reduce(getattr, parents, c), field, _tuples(value))
  if name.startswith('movi_c'):
    c.model.encoder.random_init = True  # no weights needed: speed does not depend on them
  c.data.batch_size = batch
  c.loss.contrast_group_size = min(c.loss.contrast_group_size, batch)
  c.model.compute_dtype = dtype
  c.model.encoder.dtype = dtype
  c.model.decoder.remat = remat
  if name == 'movi_c_slots':  # the frozen ViT-S/14's tokens at 336 px, precomputed
    c.model.encoder.kind = 'tokens'
    c.model.encoder.token_dim = 384
    c.model.encoder.token_grid = c.data.resolution // 14
  return c


def build_run(name: str, config):
  """(train.Run, input shape [B, T, ...] of one training batch of `config`).

  movi_c_slots feeds the slot stack precomputed backbone tokens through the 'tokens'
  encoder (batch['features'] [B, T, 576, 384], as DINOv2 ViT-S/14 gives at 336 px)."""
  from slotcurri_jax import train  # TensorFlow: see the imports at the top
  b, t, r = config.data.batch_size, config.data.train_clip_len, config.data.resolution
  run = train.Run.from_config(config)
  if run.spec.input_key == 'features':
    return run, (b, t, run.spec.num_patches, run.spec.input_dim)
  return run, (b, t, r, r, 3)


# --------------------------------------------------------------------------- device facts

def device_facts() -> dict:
  dev = jax.devices()[0]
  facts = {'platform': dev.platform, 'device_kind': dev.device_kind,
           'local_devices': jax.local_device_count(), 'jax': jax.__version__}
  if dev.platform == 'gpu':
    peak = next((p for k, p in GPU_BF16_PEAK if k in dev.device_kind), None)
    facts.update(peak_flops=peak, peak_source=(
        f'vendor dense bf16 peak of {dev.device_kind}' if peak else
        f'unknown device {dev.device_kind!r}: add it to GPU_BF16_PEAK'))
  return facts


def nominal_cpu_peak() -> dict | None:
  """Nominal float32 FMA peak of this machine's cores from /proc/cpuinfo (Linux x86):
  cores x clock x FLOP/cycle, assuming two FMA units per core (AVX-512: 2 x 16 lanes x 2,
  AVX2: 2 x 8 x 2). An assumption, not a measurement: turbo clocks, one-FMA-unit parts
  and hypervisor limits all move it."""
  try:
    text = pathlib.Path('/proc/cpuinfo').read_text()
  except OSError:
    return None
  mhz = [float(l.split(':')[1]) for l in text.splitlines() if l.startswith('cpu MHz')]
  flags = next((l.split(':')[1].split() for l in text.splitlines() if l.startswith('flags')), [])
  if not mhz:
    return None
  per_cycle = 64 if 'avx512f' in flags else 32 if 'fma' in flags else 8
  cores = os.cpu_count() or 1
  return {'flops_per_s': cores * mhz[0] * 1e6 * per_cycle, 'cores': cores, 'mhz': mhz[0],
          'flops_per_cycle_per_core': per_cycle}


def measured_matmul_peak(n: int = 4096, repeats: int = 8) -> dict:
  """Best FLOP/s of an n^3 matmul under jit, float32 and bfloat16 (the CPU 'peak')."""
  out = {}
  for dtype in ('float32', 'bfloat16'):
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x, y: x @ y)
    best = measure.time_calls(lambda: f(a, a), steps=repeats, warmup=1).min_s
    out[dtype] = 2.0 * n ** 3 / best
  return out


def _peak_rss_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kilobytes


def _reset_peak_rss() -> bool:
  """Linux: hand freed heap (compilation's) back to the OS and reset VmHWM to the current
  RSS, so that the next read shows the peak of what follows (the training steps)."""
  try:
    ctypes.CDLL('libc.so.6').malloc_trim(0)
  except (OSError, AttributeError):
    pass
  try:
    with open('/proc/self/clear_refs', 'w') as f:
      f.write('5')
    return True
  except OSError:
    return False


def _vm_hwm_bytes() -> int | None:
  try:
    with open('/proc/self/status') as f:
      for line in f:
        if line.startswith('VmHWM:'):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def _device_peak_bytes() -> int | None:
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get('peak_bytes_in_use')


# --------------------------------------------------------------------------- measurements

STORED_SIDE = {'demo': None, 'movi_c': 128}  # None: the config's data.synthetic.resolution


def raw_batch(name: str, config, shape, seed: int = 0) -> dict:
  """A device-path batch (data/device_preprocess.py) for a video input of `shape`
  [B, T, R, R, 3] of benchmark configuration `name`: uint8 frames at the stored size
  (MOVi 128 px, the demo its synthetic resolution), random flips; the step resizes them."""
  rng = np.random.default_rng(seed)
  b, t, r = shape[0], shape[1], shape[2]
  stored = STORED_SIDE.get(name, 128) or config.data.synthetic.resolution
  return {'frames': rng.integers(0, 256, (b, t, stored, stored, 3), dtype=np.uint8),
          'size': np.tile(np.asarray([stored, stored, r, r], np.int32), (b, 1)),
          'crop': np.zeros((b, 4), np.int32), 'flip': rng.uniform(size=b) < 0.5}


def measure_train(name: str, dtype: str, batch: int, steps: int, warmup: int,
                  num_slots: int | None = None, remat: bool = False,
                  raw_input: bool = False, overrides: dict | None = None,
                  variant: str | None = None) -> dict:
  from slotcurri_jax import train  # TensorFlow: see the imports at the top
  rss_base = _peak_rss_bytes()
  config = build_config(name, dtype, batch, remat, overrides, variant)
  run, shape = build_run(name, config)
  mesh = parallel.create_mesh(devices=jax.devices()[:1])
  state, shardings = train.create_state(run, mesh, jax.random.PRNGKey(0))
  step = train.jit_train_step(run, mesh, shardings, num_slots=num_slots)
  if raw_input and run.spec.input_key == 'video':  # the step starts with the device resize
    host_data = raw_batch(name, config, shape)
  else:
    host_data = {run.spec.input_key: np.random.default_rng(0).normal(size=shape).astype(np.float32)}
  data = parallel.host_to_global(host_data, mesh)

  compile_s, compiled = measure.compile_timed(step, state, data)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  memory = compiled.memory_analysis()
  flops, saw_while = costs.jaxpr_flops(
      jax.make_jaxpr(train.make_train_step(run, num_slots))(state, data).jaxpr)

  peak_rss_after_compile = _peak_rss_bytes()
  reset = _reset_peak_rss()

  def one_step():
    nonlocal state
    state, metrics = compiled(state, data)
    return state, metrics
  timing = measure.time_calls(one_step, steps=steps, warmup=warmup)
  times, (_, metrics) = timing.times_s, timing.last
  loss = float(metrics['loss_total'])
  if not np.isfinite(loss):
    raise FloatingPointError(f'{name} {dtype}: loss {loss} is not finite')
  s_per_step = timing.median_s
  return {
      'config': name, 'variant': variant or 'default', 'dtype': dtype, 'batch': batch,
      'frames': config.data.train_clip_len, 'computed_slots': num_slots or config.model.max_slots, 'active_slots_only': bool(num_slots),
      'decoder_remat': remat, 'config_overrides': overrides or {},
      'input_shape': list(shape), 'steps_timed': steps, 'warmup': warmup,
      'step_times_s': times, 's_per_step': s_per_step, 'steps_per_s': 1.0 / s_per_step,
      'clips_per_s': batch / s_per_step, 'compile_s': compile_s,
      'model_flops_per_step': flops, 'flops_count_has_while_loops': saw_while,
      'xla_cost_analysis_flops': float(cost.get('flops', float('nan'))),
      'xla_temp_bytes': int(memory.temp_size_in_bytes) if memory else None,
      'xla_argument_bytes': int(memory.argument_size_in_bytes) if memory else None,
      'peak_rss_bytes': max(_peak_rss_bytes(), peak_rss_after_compile),
      'steps_peak_rss_bytes': _vm_hwm_bytes() if reset else None,
      'baseline_rss_bytes': rss_base,
      'device_peak_bytes': _device_peak_bytes(), 'final_loss': loss,
      'device_bytes_limit': (jax.devices()[0].memory_stats() or {}).get('bytes_limit'),
      'raw_input': bool(raw_input and run.spec.input_key == 'video'),
      'bytes_per_step_to_device': sum(int(np.asarray(v).nbytes) for v in host_data.values()),
  }


def measure_eval(name: str, dtype: str, batch: int, steps: int, warmup: int,
                 frames: int = EVAL_FRAMES) -> dict:
  # TensorFlow: see the imports at the top
  from slotcurri_jax import evaluate, train
  base = name[:-len('_eval')]
  config = build_config(base, dtype, batch)
  run, shape = build_run(base, config)
  shape = (batch, frames) + tuple(shape[2:])
  mesh = parallel.create_mesh(devices=jax.devices()[:1])
  state, _ = train.create_state(run, mesh, jax.random.PRNGKey(0))
  video = jnp.asarray(np.random.default_rng(0).normal(size=shape).astype(np.float32))
  active = jnp.ones((config.model.max_slots,), bool)
  num_frames = jnp.full((batch,), frames, jnp.int32)
  result = {'config': name, 'dtype': dtype, 'batch': batch, 'frames': frames,
            'input_shape': list(shape)}
  for rollout in ('forward', 'cyclic'):
    config.eval.rollout = rollout
    predictor = evaluate.make_predictor(config, run)
    args = (state.params, video, active, num_frames)
    compile_s, compiled = measure.compile_timed(jax.jit(predictor.predict), *args)
    flops, _ = costs.jaxpr_flops(jax.make_jaxpr(predictor.predict)(*args).jaxpr)
    timing = measure.time_calls(lambda: compiled(*args), steps=steps, warmup=warmup)
    result[rollout] = {'step_times_s': timing.times_s, 's_per_step': timing.median_s,
                       'videos_per_s': batch / timing.median_s,
                       'compile_s': compile_s, 'model_flops_per_step': flops}
  result['cyclic_over_forward'] = result['cyclic']['s_per_step'] / result['forward']['s_per_step']
  result['peak_rss_bytes'] = _peak_rss_bytes()
  result['device_peak_bytes'] = _device_peak_bytes()
  return result


def child_main(spec: dict) -> None:
  """Run one measurement and print its JSON as the last stdout line."""
  warnings.filterwarnings('ignore', message='Some donated buffers were not usable')
  kind = spec.pop('kind')
  if kind == 'peak':  # optional: {'matmul_n': N}, the side of the timed matmul
    n = spec.get('matmul_n', 4096)
    result = {'device': device_facts(), 'matmul_n': n,
              'matmul_flops_per_s': measured_matmul_peak(n),
              'nominal_cpu_peak': nominal_cpu_peak()}
  elif kind == 'train':
    result = measure_train(**spec)
  else:
    result = measure_eval(**spec)
  print('RESULT ' + json.dumps(result), flush=True)


# --------------------------------------------------------------------------- driver

def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--configs', default='demo,movi_c_slots,demo_eval,movi_c_slots_eval',
                 help=f'comma-separated subset of {TRAIN_CONFIGS + EVAL_CONFIGS}')
  p.add_argument('--dtypes', default='float32,bfloat16')
  p.add_argument('--steps', type=int, default=None,
                 help=f'timed training steps, median reported (default {DEFAULT_STEPS})')
  p.add_argument('--warmup', type=int, default=2)
  p.add_argument('--batch', type=int, default=None,
                 help='training batch (default: demo 16, MOVi-C 8)')
  p.add_argument('--active_slots', default='',
                 help='also time train.active_slots_only steps that compute only K slots, '
                      'e.g. "2,5" (the curriculum stages of MOVi-C: 2 -> 5 -> 11)')
  p.add_argument('--raw_input', action='store_true',
                 help='video configs: feed uint8 frames at the stored size (128 px MOVi) so the '
                      'step includes the on-device resize (data.preprocess_on_device)')
  p.add_argument('--variant', default=None,
                 help='training configurations: the method variant of configs/demo.py or '
                      'configs/movi_c.py (slotcurri, slotcontrast, ssync, slotcurri_ssync; '
                      'default: the file\'s default, slotcurri)')
  p.add_argument('--remat', action='store_true',
                 help='also time each training configuration with model.decoder.remat=True')
  p.add_argument('--eval_batch', type=int, default=4, help='videos per evaluation step')
  p.add_argument('--eval_steps', type=int, default=3)
  p.add_argument('--eval_dtypes', default='float32')
  p.add_argument('--timeout', type=float, default=1800, help='seconds per configuration')
  p.add_argument('--out', default=None, help='default benchmarks/results/train_step_{cpu,gpu}.json')
  p.add_argument('--_child', default=None, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args._child:
    child_main(json.loads(args._child))
    return

  names = [n for n in args.configs.split(',') if n]
  unknown = [n for n in names if n not in TRAIN_CONFIGS + EVAL_CONFIGS]
  if unknown:
    raise SystemExit(f'unknown --configs {unknown}; choose from {TRAIN_CONFIGS + EVAL_CONFIGS}')
  load_start = os.getloadavg()
  peak = measure.run_child(__file__, {'kind': 'peak'}, args.timeout)
  if 'error' in peak:
    raise SystemExit(f'device probe failed: {peak["error"]}')
  results = []
  for name in names:
    if name in TRAIN_CONFIGS:
      for dtype in args.dtypes.split(','):
        spec = {'kind': 'train', 'name': name, 'dtype': dtype,
                'batch': args.batch or DEFAULT_BATCH[name], 'steps': args.steps or DEFAULT_STEPS[name],
                'warmup': args.warmup, 'raw_input': args.raw_input, 'variant': args.variant}
        print(f'running {name} {dtype} batch {spec["batch"]} ...', flush=True)
        results.append(measure.run_child(__file__, spec, args.timeout))
        for k in [int(k) for k in args.active_slots.split(',') if k]:
          print(f'running {name} {dtype} batch {spec["batch"]}, {k} slots computed ...', flush=True)
          results.append(measure.run_child(__file__, dict(spec, num_slots=k), args.timeout))
        if args.remat:
          print(f'running {name} {dtype} batch {spec["batch"]}, decoder remat ...', flush=True)
          results.append(measure.run_child(__file__, dict(spec, remat=True), args.timeout))
    else:
      for dtype in args.eval_dtypes.split(','):
        spec = {'kind': 'eval', 'name': name, 'dtype': dtype, 'batch': args.eval_batch,
                'steps': args.eval_steps, 'warmup': 1}
        print(f'running {name} {dtype} batch {args.eval_batch} ...', flush=True)
        results.append(measure.run_child(__file__, spec, args.timeout))
  measure.summarise(results, peak, PYTORCH_ANCHORS)
  measure.print_table(results, peak)
  platform_name = peak['device']['platform']
  out = args.out or (REPO / 'benchmarks' / 'results' /
                     f'train_step_{"gpu" if platform_name == "gpu" else "cpu"}.json')
  print()
  measure.write_json(out, {
      'machine': measure.machine_info(load_start),
      'device': peak['device'], 'matmul_peak_flops_per_s': peak['matmul_flops_per_s'],
      'nominal_cpu_peak': peak.get('nominal_cpu_peak'),
      'pytorch_anchors': {f'{k[0]}@{k[1]}': v for k, v in PYTORCH_ANCHORS.items()},
      'results': results}, argv)


if __name__ == '__main__':
  main()
