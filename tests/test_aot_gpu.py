"""H100 compilation on a machine without a GPU (slotcurri_jax/aot_gpu.py, aot.py's 'h100-N').

The normal test environment has libtpu but not jax's CUDA plugin: there, `--topology=h100-8`
must end in one error line naming what to install, and costs.py's reading of the GPU
compiler's library calls is checked on a module text the CUDA compiler printed. The tests
marked `cuda_plugin` compile for compile-only H100s and run only where the plugin is
installed (docs/scaling_gpu_section.md: a separate virtualenv with `jax[cuda12]`).
"""
import importlib.util
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from conftest import REPO
from slotcurri_jax import aot
from slotcurri_jax import config as config_lib
from slotcurri_jax import costs

HAS_CUDA_PLUGIN = importlib.util.find_spec('jax_cuda12_plugin') is not None
cuda_plugin = pytest.mark.skipif(
    not HAS_CUDA_PLUGIN, reason='jax\'s CUDA plugin is not installed (pip install '
    '"jax[cuda12]==0.10.2" in a separate virtualenv; no GPU needed)')


def test_h100_topology_names():
  assert {'h100-1', 'h100-8', 'h100-16'} <= set(aot.topology_names())
  for bad in ('h100-0', 'h100-12'):  # neither one host's GPUs nor whole hosts of 8
    with pytest.raises(ValueError, match='unknown GPU topology.*hosts of 8'):
      aot.topology(bad)


@pytest.mark.skipif(HAS_CUDA_PLUGIN, reason='the CUDA plugin is installed here')
def test_h100_without_the_cuda_plugin_is_one_error_line():
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  result = subprocess.run([sys.executable, '-m', 'slotcurri_jax.tools.aot',
                           '--config=configs/demo.py', '--topology=h100-8'], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 1
  errors = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1 and 'Traceback' not in result.stderr, result.stderr[-2000:]
  assert "compiling for h100-8 needs jax's CUDA plugin" in errors[0]
  assert 'pip install "jax[cuda12]==0.10.2"' in errors[0]


# --------------------------------------------------------------------------- FLOP counting

# Trimmed from what the CUDA plugin printed (Triton GEMMs off) for a loop of 7 matmuls, a
# batched matmul, and a 3 x 3 convolution with its gradients for the input and the kernel:
# cuBLAS and cuDNN custom-calls whose outputs are (result, workspace), operand types by
# name, and a while loop whose bound lives in a fusion its condition calls.
_GPU_HLO = """HloModule jit_f, entry_computation_layout={()->f32[]}

%fused_compare (param_0: s32[]) -> pred[] {
  %param_0 = s32[] parameter(0)
  %constant_6_clone_2 = s32[] constant(7)
  ROOT %lt.2.1 = pred[] compare(%param_0, %constant_6_clone_2), direction=LT
}

%cond (p: (s32[], f32[16,64])) -> pred[] {
  %p = (s32[], f32[16,64]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  ROOT %loop_compare_fusion = pred[] fusion(%i), kind=kLoop, calls=%fused_compare
}

%body (p.1: (s32[], f32[16,64])) -> (s32[], f32[16,64]) {
  %p.1 = (s32[], f32[16,64]{1,0}) parameter(0)
  %i.1 = s32[] get-tuple-element(%p.1), index=0
  %x = f32[16,64]{1,0} get-tuple-element(%p.1), index=1
  %w = f32[64,64]{1,0} constant({...})
  %gemm = (f32[16,64]{1,0}, s8[4194304]{0}) custom-call(%x, %w), custom_call_target="__cublas$gemm", backend_config={"operation_queue_id":"0","gemm_backend_config":{"alpha_real":1,"beta":0,"dot_dimension_numbers":{"lhs_contracting_dimensions":["1"],"rhs_contracting_dimensions":["0"],"lhs_batch_dimensions":[],"rhs_batch_dimensions":[]}}}
  %y = f32[16,64]{1,0} get-tuple-element(%gemm), index=0
  ROOT %t = (s32[], f32[16,64]{1,0}) tuple(%i.1, %y)
}

ENTRY %main (x.1: f32[16,64], a.1: f32[4,32,48], b.1: f32[4,48,24], img.1: f32[4,20,20,16], k.1: f32[32,3,3,16], dy.1: f32[4,20,20,32], bias.1: f32[32]) -> f32[] {
  %x.1 = f32[16,64]{1,0} parameter(0)
  %a.1 = f32[4,32,48]{2,1,0} parameter(1)
  %b.1 = f32[4,48,24]{2,1,0} parameter(2)
  %img.1 = f32[4,20,20,16]{3,2,1,0} parameter(3)
  %k.1 = f32[32,3,3,16]{3,2,1,0} parameter(4)
  %dy.1 = f32[4,20,20,32]{3,2,1,0} parameter(5)
  %bias.1 = f32[32]{0} parameter(6)
  %zero = s32[] constant(0)
  %init = (s32[], f32[16,64]{1,0}) tuple(%zero, %x.1)
  %while.14 = (s32[], f32[16,64]{1,0}) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"7"},"known_init_step":{"init":"0","step":"1"}}
  %custom-call.3 = (f32[4,32,24]{2,1,0}, s8[4194304]{0}) custom-call(%a.1, %b.1), custom_call_target="__cublas$lt$matmul", backend_config={"operation_queue_id":"0","gemm_backend_config":{"selected_algorithm":"0","alpha_real":1,"beta":0,"dot_dimension_numbers":{"lhs_contracting_dimensions":["2"],"rhs_contracting_dimensions":["1"],"lhs_batch_dimensions":["0"],"rhs_batch_dimensions":["0"]}}}
  %cudnn-conv-bias-activation.1 = (f32[4,20,20,32]{3,2,1,0}, u8[0]{0}) custom-call(%img.1, %k.1, %bias.1), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convBiasActivationForward"
  %cudnn-conv-bw-input.1 = (f32[4,20,20,16]{3,2,1,0}, u8[0]{0}) custom-call(%dy.1, %k.1), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convBackwardInput"
  %cudnn-conv-bw-filter.1 = (f32[32,3,3,16]{3,2,1,0}, u8[0]{0}) custom-call(%img.1, %dy.1), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convBackwardFilter"
  ROOT %r = f32[] constant(0)
}
"""


def test_gpu_library_calls_and_known_trip_counts_are_counted():
  stats = costs.stats(_GPU_HLO)
  scan = 7 * 2 * 16 * 64 * 64  # the loop's bound is in a fusion: known_trip_count says 7
  bmm = 2 * 4 * 32 * 24 * 48
  # Forward, and each gradient the same: 3 x 3 taps with padding 1 over 20 x 20, of which
  # (20 x 3 - 2)^2 (output, tap) pairs land on real pixels, x batch 4 x 32 out x 16 in.
  conv = 2 * 4 * 32 * 16 * (20 * 3 - 2) ** 2
  assert stats.loops == [('body', 7)]
  assert stats.flops == scan + bmm + 3 * conv
  # Without the compiler's trip count the condition's fusion is not read: counted once.
  unknown = costs.stats(re.sub(r'"known_trip_count":\{"n":"7"\},', '', _GPU_HLO))
  assert unknown.loops == [('body', None)] and unknown.flops == stats.flops - 6 * scan / 7


def test_known_trip_counts_agree_with_the_loop_condition_on_cpu():
  w = jnp.ones((32, 32), jnp.float32)

  def f(x):
    return jax.lax.fori_loop(0, 5, lambda i, c: jnp.tanh(c @ w), x)

  text = jax.jit(f).lower(jax.ShapeDtypeStruct((8, 32), jnp.float32)).compile().as_text()
  assert '"known_trip_count":{"n":"5"}' in text
  without = costs.stats(re.sub(r'"known_trip_count":\{"n":"5"\},?', '', text))
  assert costs.stats(text).loops == without.loops and without.loops[0][1] == 5
  assert costs.stats(text).flops == without.flops == 5 * 2 * 8 * 32 * 32


# --------------------------------------------------------------------------- with the plugin

@cuda_plugin
def test_a_small_function_compiles_for_h100_and_its_flops_are_counted():
  topo = aot.topology('h100-2')
  assert (len(topo.devices), topo.processes, topo.grid) == (2, 1, '1x1x2')
  assert topo.devices[0].device_kind == 'NVIDIA H100 80GB HBM3'
  assert len(aot.topology('h100-16').devices) == 16 and aot.topology('h100-16').processes == 2
  device = jax.sharding.SingleDeviceSharding(topo.devices[0])

  def f(x, img, kernel):
    x = jax.lax.fori_loop(0, 7, lambda i, c: jnp.tanh(c @ jnp.ones((64, 64))), x)

    def loss(kernel, img):
      y = jax.lax.conv_general_dilated(img, kernel, (1, 1), 'SAME',
                                       dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
      return (y ** 2).sum()
    dkernel, dimg = jax.grad(loss, argnums=(0, 1))(kernel, img)
    return x.sum() + dkernel.sum() + dimg.sum()

  args = [jax.ShapeDtypeStruct(s, jnp.float32, sharding=device)
          for s in ((16, 64), (4, 20, 20, 16), (3, 3, 16, 32))]
  compiled = jax.jit(f).lower(*args).compile(compiler_options=topo.compiler_options)
  text = compiled.as_text()
  assert '__cublas' in text and '__cudnn$convBackwardInput' in text
  assert '__cudnn$convBackwardFilter' in text
  stats = costs.stats(text)
  assert stats.loops[0][1] == 7 and stats.unknown_trip_counts == 0
  # Forward, and each gradient the same: 3 x 3 taps with padding 1 over 20 x 20, of which
  # (20 x 3 - 2)^2 (output, tap) pairs land on real pixels, x batch 4 x 32 out x 16 in.
  conv = 2 * 4 * 32 * 16 * (20 * 3 - 2) ** 2
  assert stats.flops == 7 * 2 * 16 * 64 * 64 + 3 * conv
  assert compiled.memory_analysis().argument_size_in_bytes == 4 * (16 * 64 + 4 * 20 * 20 * 16 +
                                                                   3 * 3 * 16 * 32)


@cuda_plugin
def test_the_demo_train_step_compiles_for_h100():
  # The demo's CNN encoder is trained: its gradients are cuDNN backward convolutions.
  config = config_lib.load(f'{REPO}/configs/demo.py')
  config.data.batch_size = 16
  config.train.active_slots_only = False
  topo = aot.topology('h100-2')
  program = aot.Program.build(config, topo)
  report = program.compile('train')
  assert report.fits and 0 < report.hbm_bytes_per_device < 80 * 10 ** 9
  assert report.unknown_trip_counts == 0
  assert report.flops_per_device == pytest.approx(report.counted_flops_per_device, rel=0.05)
  assert report.collective_bytes_per_device.get('all-reduce', 0) > 0  # the gradients' mean
