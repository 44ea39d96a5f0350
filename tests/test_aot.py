"""TPU compilation on a machine without a TPU (slotcurri_jax/aot.py, tools/aot.py, costs.py).

libtpu (installed by the README's test command, `.[aot]`) compiles for the compile-only
devices of a named slice: the demo's and MOVi-C's real train steps are compiled here for
TPU v5e with fsdp sharding, so a change that breaks TPU compilation fails the suite.
"""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from conftest import REPO

if sys.platform != 'linux':
  pytest.skip('libtpu (compile-only TPU topologies) is Linux-only', allow_module_level=True)

from slotcurri_jax import aot  # noqa: E402
from slotcurri_jax import config as config_lib  # noqa: E402
from slotcurri_jax import costs  # noqa: E402


def _aot_cli(*args, timeout=600) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)  # the tool's devices are the slice's, not fake CPU ones
  return subprocess.run([sys.executable, '-m', 'slotcurri_jax.tools.aot', *args], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=timeout)


def _error_lines(stderr: str) -> list[str]:
  return [l for l in stderr.splitlines() if l.startswith('error:')]


# --------------------------------------------------------------------------- topologies

def test_topologies_as_cloud_names_them():
  v5p = aot.topology('v5p-8')  # 8 TensorCores = 4 chips, one device per chip (megacore)
  assert (v5p.kind, len(v5p.devices), v5p.grid) == ('v5p', 4, '2x2x1')
  assert len(aot.topology('v4-16').devices) == 8
  v5e = aot.topology('v5litepod-8')  # Cloud's other name for v5e
  assert (v5e.name, len(v5e.devices)) == ('v5e-8', 8)
  assert len(aot.topology('v5p-128').devices) == 64
  for bad in ('v5e-3', 'v4-7', 'v9-8', 'gpu'):
    with pytest.raises(ValueError, match='unknown TPU topology.*v5e-8'):
      aot.topology(bad)


def test_a_batch_the_slice_does_not_split_is_refused_before_compiling():
  config = config_lib.load(f'{REPO}/configs/demo.py')
  config.data.batch_size = 6
  with pytest.raises(ValueError, match=r'batch_size=6 does not split over v5e-4.*multiple of 4'):
    aot.Program.build(config, aot.topology('v5e-4'))


# --------------------------------------------------------------------------- compiled steps

def _config(name: str, batch: int, fsdp: int = 1):
  config = config_lib.load(f'{REPO}/configs/{name}.py')
  config.data.batch_size = batch
  config.train.active_slots_only = False
  config.mesh.fsdp = fsdp
  config.mesh.fsdp_all_params = fsdp > 1
  return config


def _check_fits(report, program):
  assert report.fits and 0 < report.hbm_bytes_per_device < report.hbm_capacity_bytes
  assert report.memory['temporaries'] >= 0 and report.memory['arguments'] > 0
  assert report.unknown_trip_counts == 0
  assert report.lower_bound_step_seconds == pytest.approx(
      report.flops_per_device / program.topo.chip.peak_bf16_flops)


def test_the_demo_train_step_compiles_for_tpu_v5e():
  program = aot.Program.build(_config('demo', 16), aot.topology('v5e-4'))
  report = program.compile('train')
  _check_fits(report, program)
  # Two independent counts of one step: the compiled TPU program (loops x trip counts)
  # and the traced jaxpr (scans x length); XLA's own count sees each loop body once.
  assert report.flops_per_device == pytest.approx(report.counted_flops_per_device, rel=0.01)
  assert report.xla_cost_analysis_flops < 0.9 * report.flops_per_device


def test_the_movi_c_train_step_compiles_for_tpu_v5e_with_fsdp():
  # The paper model (DINOv2 ViT-S/14 at 336 px, 11 slots, decoder 3 x 1024), one clip per
  # chip, params and moments split over the 4 chips.
  program = aot.Program.build(_config('movi_c', 4, fsdp=4), aot.topology('v5e-4'))
  assert dict(program.mesh.shape) == {'data': 1, 'fsdp': 4}
  assert program.train_batch['frames'].dtype == np.uint8  # raw frames, resized on device
  assert program.train_batch['frames'].shape == (4, 4, 128, 128, 3)
  kernel = program.state.params['decoder']['mlp']['dense_1']['kernel']
  assert 'fsdp' in kernel.sharding.spec
  report = program.compile('train')
  _check_fits(report, program)
  assert report.collective_bytes_per_device.get('all-gather', 0) > 0  # params gathered
  # The partitioner may add work (weight-gradient shards from gathered activations),
  # never drop a matmul of the traced step.
  assert report.flops_per_device >= 0.999 * report.counted_flops_per_device


def test_a_step_that_cannot_fit_ends_in_one_line():
  # The demo's eval step over 8192 whole videos per chip: far beyond 16 GiB.
  result = _aot_cli('--config=configs/demo.py', '--topology=v5e-4', '--steps=eval', '--noplan',
                    '--config.data.eval_batch_size=32768', '--json')
  assert result.returncode == 1, result.stderr[-2000:]
  errors = _error_lines(result.stderr)
  assert len(errors) == 1 and 'Traceback' not in result.stderr
  assert 'the eval step needs' in errors[0] and 'per device on v5e-4 (16.00 GiB HBM' in errors[0]
  assert '--config.model.decoder.remat=True' in errors[0]
  (report,) = [json.loads(l) for l in result.stdout.splitlines()]
  assert report['fits'] is False and report['hbm_bytes_per_device'] > report['hbm_capacity_bytes']
  assert report['topology'] == 'v5e-4' and report['devices'] == 4 and report['step'] == 'eval'


def test_bad_input_is_one_line():
  # Every ValueError of the slice and the config is one line (the launcher test below
  # shows a bad topology name through the same path).
  result = _aot_cli('--config=configs/demo.py', '--topology=v5e-4',
                    '--config.data.batch_size=6', timeout=120)
  assert result.returncode == 1
  errors = _error_lines(result.stderr)
  assert len(errors) == 1 and 'does not split over v5e-4' in errors[0], result.stderr[-2000:]
  assert 'Traceback' not in result.stderr


def test_a_mesh_that_does_not_match_the_slice_is_refused():
  config = config_lib.load(f'{REPO}/configs/demo.py')
  config.mesh.fsdp = 3
  with pytest.raises(ValueError, match=r'mesh.fsdp=3 must be >= 1 and divide the 4 devices'):
    aot.Program.build(config, aot.topology('v5e-4'))


# --------------------------------------------------------------------------- the fit planner

def _fake_report(step, options, hbm, flops, gathers=0.0, batch=32):
  return aot.StepReport(
      topology='v5e-4', devices=4, processes=1, step=step, per_device_batch=batch,
      memory={'arguments': 1, 'outputs': 0, 'aliased': 0, 'temporaries': hbm - 1,
              'generated_code': 0},
      hbm_bytes_per_device=hbm, hbm_capacity_bytes=16 * 2 ** 30, flops_per_device=flops,
      counted_flops_per_device=flops, xla_cost_analysis_flops=flops / 2,
      lower_bound_step_seconds=0.0, collective_bytes_per_device={'all-gather': gathers},
      unknown_trip_counts=0, compile_seconds=0.0, options=options)


def test_plan_fit_names_the_cheapest_option_that_fits():
  gib = 2 ** 30
  seen = []

  def compile_fn(config, step, options):  # remat and bf16 fit; bf16 is cheaper in FLOPs
    seen.append(sorted(options))
    remat, fsdp = config.model.decoder.remat, config.mesh.fsdp_all_params
    bf16 = config.model.compute_dtype == 'bfloat16'
    hbm = (20 - 6 * remat - 1 * fsdp - 7 * bf16) * gib
    return _fake_report(step, options, hbm, 1e12 * (1.3 if remat else 1.0), 1e6 * fsdp)

  config = config_lib.load(f'{REPO}/configs/movi_c.py')
  plan = aot.plan_fit(config, aot.topology('v5e-4'), 'train', compile_fn=compile_fn)
  assert len(seen) == 3  # the three single options; a pair is never tried when one fits
  names, best = plan.best
  assert names == ('remat',)  # exact arithmetic before bf16, although bf16 has fewer FLOPs
  assert best.options == {'model.decoder.remat': True}
  assert [n for n, r in plan.tried if r.fits] == [('remat',), ('bf16',)]


def test_plan_fit_finds_the_largest_batch_that_fits_when_no_option_does():
  gib = 2 ** 30

  def compile_fn(config, step, options):  # 0.6 GiB per clip per chip whatever the options
    per_device = config.data.batch_size // 4
    return _fake_report(step, options, int((1 + 0.6 * per_device) * gib), 1e12,
                        batch=per_device)

  config = config_lib.load(f'{REPO}/configs/movi_c.py')  # 32 clips per chip: 20.2 GiB
  plan = aot.plan_fit(config, aot.topology('v5e-4'), 'train', compile_fn=compile_fn)
  assert plan.best is None and len(plan.tried) == 7
  assert plan.max_per_device_batch == 25  # 1 + 0.6 x 25 = 16 GiB


# --------------------------------------------------------------------------- FLOP counting

def test_compiled_flops_count_every_trip_of_a_loop():
  w = jnp.ones((64, 64), jnp.float32)

  def f(x):
    def body(carry, _):
      return jnp.tanh(carry @ w), None
    out, _ = jax.lax.scan(body, x, None, length=7)
    return jax.lax.cond(out.sum() > 0, lambda y: y @ w @ w, lambda y: y @ w, out)

  x = jax.ShapeDtypeStruct((16, 64), jnp.float32)
  compiled = jax.jit(f).lower(x).compile()
  stats = costs.stats(compiled.as_text())
  matmul = 2 * 16 * 64 * 64
  assert stats.loops and all(n == 7 for _, n in stats.loops)
  assert stats.flops == 7 * matmul + 2 * matmul  # the scan's 7 trips, the larger branch
  traced, _ = costs.jaxpr_flops(jax.make_jaxpr(f)(x).jaxpr)
  assert traced == stats.flops


def test_the_tpu_pod_launcher_checks_the_slice_before_training(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS='cpu', SKIP_INSTALL='1', TPU_TYPE='v5e-3',
             PATH=f'{os.path.dirname(sys.executable)}:{os.environ["PATH"]}')
  env.pop('XLA_FLAGS', None)
  result = subprocess.run(['bash', 'launch/tpu_pod.sh', 'configs/demo.py', str(tmp_path / 'run'),
                           '--config.train.steps=1'], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 1
  assert 'error: unknown TPU topology' in result.stderr
  assert 'the AOT check failed for v5e-3' in result.stderr
  assert not (tmp_path / 'run').exists()  # training never started


def test_convolution_flops_count_only_taps_on_real_input():
  # Padding and the holes of a dilated input do no work: the TPU compiler writes batched
  # matmuls as convolutions whose padded windows hit one real element each.
  hlo = '''HloModule m

ENTRY %main (p0: f32[2,5,3], p1: f32[3,3,4], p2: f32[1,3,1], p3: f32[2,1,1]) -> f32[2,5,4] {
  %p0 = f32[2,5,3]{2,1,0} parameter(0)
  %p1 = f32[3,3,4]{2,1,0} parameter(1)
  %p2 = f32[1,3,1]{2,1,0} parameter(2)
  %p3 = f32[2,1,1]{2,1,0} parameter(3)
  %padded = f32[2,5,4]{2,1,0} convolution(%p0, %p1), window={size=3 pad=1_1}, dim_labels=b0f_0io->b0f
  %dilated = f32[1,4,1]{2,1,0} convolution(%p2, %p3), window={size=2 lhs_dilate=2}, dim_labels=b0f_0io->b0f
  ROOT %out = f32[2,5,4]{2,1,0} copy(%padded)
}
'''
  # padded: outputs 0 and 4 see 2 of their 3 taps, outputs 1-3 all 3: 13 (output, tap)
  # pairs x batch 2 x 4 output x 3 input features. dilated: inputs at 0, 2, 4 of 5
  # positions, each window of 2 covers one: 4 pairs.
  assert costs.stats(hlo).flops == 2 * (13 * 2 * 4 * 3) + 2 * 4
