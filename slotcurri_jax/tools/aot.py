r"""Compile a config's train and eval steps for a TPU slice, on any machine, and say if they fit.

  python -m slotcurri_jax.tools.aot --config=configs/movi_c.py --topology=v5p-8
  python -m slotcurri_jax.tools.aot --config=configs/ytvis.py:ssync --topology=v5e-8 --json
  python -m slotcurri_jax.tools.aot --config=configs/movi_e.py --topology=v5e-64 \
      --config.data.eval_batch_size=64 --config.model.decoder.remat=True
  python -m slotcurri_jax.tools.aot --config=configs/movi_c.py --topology=h100-8

Needs libtpu (`pip install -e ".[aot]"`, or `pip install "jax[tpu]==0.10.2"`); no TPU:
XLA's TPU compiler runs on this machine's CPU, for compile-only devices of the slice.
Topologies are Cloud's accelerator types: v4-N and v5p-N name N TensorCores (N/2 chips),
v5e-N (v5litepod-N) and v6e-N name N chips; `--topology=list` prints them.
h100-N: N NVIDIA H100 SXM 80 GB GPUs (up to 8 on one host, else hosts of 8), compiled by
jax's CUDA plugin (`pip install "jax[cuda12]==0.10.2"`, about 5 GB; no GPU or driver needed;
slotcurri_jax/aot_gpu.py); without the plugin, one `error:` line says so.

For each step that training runs (the train step, one per curriculum stage with
train.active_slots_only, and the evaluation step) it prints per-device HBM against the
chip's, whether it fits, FLOPs per device and step (from the compiled program, loops
counted by their trip counts, beside the traced step's count), the step time those FLOPs
take at the chip's bf16 peak (a lower bound), collective bytes and the compile time;
--json prints one JSON object per step instead.

Exit status 0 when every step fits. A step that does not fit: the memory options are
compiled (decoder remat, fsdp over every chip, bfloat16; alone, then in pairs, then all
three), and one `error:` line names the cheapest that fits, or the largest per-device
batch that fits with all of them; exit status 1 (--noplan skips the search). A bad
topology name, a batch the devices do not divide, a bad config: one `error:` line, status 1.
"""
from __future__ import annotations

import json
import os

# The compile-only TPU devices need no TPU backend: keep jax on the CPU (no TPU start-up).
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from slotcurri_jax import cli  # noqa: E402
from slotcurri_jax import errors  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py[:variant]).',
                                          lock_config=True)
_TOPOLOGY = flags.DEFINE_string('topology', None, "TPU slice, e.g. v5e-8, v5p-128, or GPUs, "
                                'h100-8 (\'list\').')
_JSON = flags.DEFINE_bool('json', False, 'One JSON object per step on stdout.')
_PLAN = flags.DEFINE_bool('plan', True, 'When a step does not fit, compile the memory '
                          'options and name the cheapest that fits.')
_STEPS = flags.DEFINE_list('steps', None, "Compile only these steps ('train', 'eval'; "
                           'default all).')


def _gib(n: float) -> str:
  """Bytes in GiB, or MiB below one GiB."""
  return f'{n / 2 ** 30:.2f} GiB' if abs(n) >= 2 ** 30 else f'{n / 2 ** 20:.1f} MiB'


def _print_table(config_name: str, program, reports: list) -> None:
  topo = program.topo
  print(f'{config_name} on {topo.name}: {len(topo.devices)} chips ({topo.kind}, '
        f'{_gib(topo.chip.hbm_bytes)} HBM, {topo.chip.peak_bf16_flops / 1e12:.0f} TFLOP/s bf16 '
        f'each), {topo.processes} host(s), mesh {dict(program.mesh.shape)}')
  for r in reports:
    m = r.memory
    extra = ' + '.join(f'{k.replace("_", " ")} {_gib(v)}' for k, v in m.items()
                       if k in ('prefetched_batches', 'resident_train_state'))
    coll = sum(r.collective_bytes_per_device.values())
    print(f'  {r.step}: {r.per_device_batch} clips/device, '
          f'{_gib(r.hbm_bytes_per_device)} of {_gib(r.hbm_capacity_bytes)} HBM per device '
          f'({100 * r.hbm_bytes_per_device / r.hbm_capacity_bytes:.0f} %): '
          f'{"fits" if r.fits else "DOES NOT FIT"}')
    if r.flops_per_device is None:  # the compiler ran out of HBM: no program to read
      print(f'    memory: arguments {_gib(m["arguments"])} + temporaries {_gib(m["temporaries"])} '
            f'(the compiler stopped: its temporaries alone exceed the HBM); traced step '
            f'{r.counted_flops_per_device / 1e12:.3f} TFLOP per device')
      continue
    print(f'    memory: arguments {_gib(m["arguments"])} + outputs {_gib(m["outputs"])} - '
          f'aliased {_gib(m["aliased"])} + temporaries {_gib(m["temporaries"])} + code '
          f'{_gib(m["generated_code"])}' + (f' + {extra}' if extra else ''))
    xla = (f'; XLA cost analysis, loop bodies once, {r.xla_cost_analysis_flops / 1e12:.3f}'
           if r.xla_cost_analysis_flops else '')  # the GPU compiler gives none
    print(f'    {r.flops_per_device / 1e12:.3f} TFLOP per device and step (compiled, loops x '
          f'trip counts; traced step {r.counted_flops_per_device / 1e12:.3f}{xla}) -> at least '
          f'{1e3 * r.lower_bound_step_seconds:.1f} ms per step at the bf16 peak')
    print(f'    collectives {coll / 1e6:.2f} MB per device and step '
          f'({", ".join(f"{k} {v / 1e6:.2f}" for k, v in r.collective_bytes_per_device.items()) or "none"}); '
          f'compiled in {r.compile_seconds:.0f} s'
          + (f'; {r.unknown_trip_counts} loop(s) of unknown trip count counted once'
             if r.unknown_trip_counts else ''))


def _flags_for(overrides: dict) -> str:
  return ' '.join(f'--config.{k}={v}' for k, v in overrides.items())


def _no_fit_line(report, plan) -> str:
  """One line: what the step needs, what the chip has, what makes it fit."""
  at_least = 'at least ' if report.flops_per_device is None else ''  # the compile stopped
  head = (f'the {report.step} step needs {at_least}{_gib(report.hbm_bytes_per_device)} per '
          f'device on {report.topology} ({_gib(report.hbm_capacity_bytes)} HBM per chip)')
  if plan is None:
    return (head + '; options that save memory: --config.model.decoder.remat=True, '
            '--config.mesh.fsdp=N --config.mesh.fsdp_all_params=True, bfloat16 '
            '(--config.model.compute_dtype=bfloat16 --config.model.encoder.dtype=bfloat16), '
            'a smaller per-device batch (more chips); rerun without --noplan to try them')
  if plan.best is not None:
    names, best = plan.best
    others = [f'{"+".join(n)} ({_gib(r.hbm_bytes_per_device)})' for n, r in plan.tried
              if r.fits and n != names]
    # Compiled FLOPs where both compiled; the traced counts also see remat's recomputation.
    ratio = (best.flops_per_device / report.flops_per_device if report.flops_per_device
             else best.counted_flops_per_device / report.counted_flops_per_device)
    return (head + f'; cheapest that fits: {_flags_for(best.options)} '
            f'({_gib(best.hbm_bytes_per_device)}, {ratio:.2f}x the FLOPs)'
            + (f'; also fit: {", ".join(others)}' if others else ''))
  key = 'eval_batch_size' if report.step == 'eval' else 'batch_size'
  if plan.max_per_device_batch:
    b = plan.max_per_device_batch
    global_batch = report.per_device_batch * report.devices
    chips = -(-global_batch // b)
    return (head + f'; no memory option fits (tried remat, fsdp, bf16 and their '
            f'combinations); with all three at most {b} clips per device fit: '
            f'--config.data.{key}={b * report.devices} on this slice, or {chips}+ chips for '
            f'the global batch of {global_batch}')
  return head + '; nothing fits, not even one clip per device with remat, fsdp and bf16'


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  from slotcurri_jax import aot  # pylint: disable=import-outside-toplevel  (jax after flags)
  if _TOPOLOGY.value == 'list':
    print('\n'.join(aot.topology_names()))
    return
  if not _TOPOLOGY.value:
    raise app.UsageError('--topology is required (e.g. v5e-8, v5p-128; --topology=list)')
  config = cli.config_value(_CONFIG)
  with errors.user_errors(ValueError):
    topo = aot.topology(_TOPOLOGY.value)
    program = aot.Program.build(config, topo)
  steps = program.step_names()
  if _STEPS.value:
    unknown = set(_STEPS.value) - {'train', 'eval'}
    if unknown:
      raise errors.UserError(f'--steps: unknown {sorted(unknown)}; use train, eval')
    steps = [s for s in steps if s.split(' ')[0] in _STEPS.value]
  reports = [program.compile(s) for s in steps]
  config_name = config_flags.get_config_filename(flags.FLAGS['config'])
  if _JSON.value:
    for r in reports:
      print(json.dumps(dict(r.as_json(), config=config_name)), flush=True)
  else:
    _print_table(config_name, program, reports)
  failing = [r for r in reports if not r.fits]
  if failing:
    lines = []
    for r in failing:
      plan = aot.plan_fit(config, topo, r.step) if _PLAN.value else None
      if plan is not None and _JSON.value:
        print(json.dumps({'plan_for': r.step, 'tried': [dict(rep.as_json(), options_named=n)
                                                         for n, rep in plan.tried],
                          'max_per_device_batch': plan.max_per_device_batch}), flush=True)
      lines.append(_no_fit_line(r, plan))
    raise errors.UserError('; and '.join(lines))


if __name__ == '__main__':
  cli.run(main)
