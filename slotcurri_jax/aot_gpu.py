"""Compile for NVIDIA H100 GPUs on a machine without a GPU: aot.py's 'h100-N' topologies.

jax's CUDA plugin (`pip install "jax[cuda12]==0.10.2"`, about 5 GB with the CUDA libraries
it pulls in) compiles for compile-only GPUs described by a `GpuTargetConfigProto`: the GPU's
properties (SMs, shared memory, memory size and bandwidth, compute capability) and the
CUDA runtime and cuDNN versions the program will run with. No GPU, no driver: with
JAX_PLATFORMS=cpu (the aot tool's default) jax never starts a CUDA backend, and the plugin
only compiles. XLA's GPU compiler then runs on this machine's CPU, as it would on a GPU
host, minus autotuning (which times candidate kernels on the GPU): every GEMM and fusion
gets the compiler's default choice, so the compiled program is close to, not identical
with, the one a GPU host would build; its memory analysis and HLO are what aot.py reads.
"""
from __future__ import annotations

import os
import re

GPUS_PER_HOST = 8  # an HGX/DGX H100 host; h100-16 is two of them
# The XLA flags that compilation without a GPU needs, as per-compile options (nothing
# global: a TPU compile in the same process is untouched). Without a GPU there is no
# autotuning, and XLA's Triton GEMM emitter then fails on the frozen ViT's attention output
# projection, in float32 and bfloat16 alike ("Couldn't find output tile sizes that satisfy
# hlo"); with Triton GEMMs off every matmul is a cuBLAS call, which needs no tiling
# search. Whether a GPU host (which autotunes) needs the flag is not known here.
COMPILER_OPTIONS = {'xla_gpu_enable_triton_gemm': False}

# H100 SXM5 80 GB. Sources: [DS] the NVIDIA H100 Tensor Core GPU data sheet; [WP] the
# NVIDIA H100 Tensor Core GPU Architecture white paper (GH100, SXM5 product);
# [CG] the CUDA C++ Programming Guide, compute capability 9.0 limits; [XS] what an H100
# SXM reports to CUDA, as XLA publishes it (openxla/xla, xla/tools/hlo_opt/gpu_specs/).
_H100_DEVICE_INFO = """
  core_count: 132                       # SMs [WP]
  fpus_per_core: 128                    # FP32 cores per SM [WP]
  cuda_compute_capability {{ major: 9 minor: 0 }}  # sm_90 [CG]
  clock_rate_ghz: 1.98                  # max SM clock, 1980 MHz [XS]
  memory_bandwidth: 3350000000000       # 3.35 TB/s HBM3 [DS]
  device_memory_size: {memory}          # 80 GB HBM3 [DS] (aot.GPU_CHIPS, the same number)
  l2_cache_size: 52428800               # 50 MB L2 [WP]
  shared_memory_per_core: 233472        # 228 KB shared memory per SM [CG]
  shared_memory_per_block_optin: 232448 # 227 KB per block, opted in [CG]
  shared_memory_per_block: 49152        # 48 KB per block without opt-in [CG]
  threads_per_warp: 32                  # [CG]
  threads_per_block_limit: 1024         # [CG]
  threads_per_core_limit: 2048          # resident threads per SM [CG]
  registers_per_core_limit: 65536       # 32-bit registers per SM [CG]
  registers_per_block_limit: 65536      # [CG]
  block_dim_limit_x: 2147483647         # grid size limits [CG]
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
"""


def _library_versions() -> tuple[tuple[int, int, int], tuple[int, int, int]]:
  """(CUDA runtime, cuDNN) versions of the libraries the installed plugin loads (those of
  the `jax[cuda12]` wheels, which a GPU host installing the same wheels runs with)."""
  from jax_cuda12_plugin import _versions  # pylint: disable=g-import-not-at-top
  cuda = _versions.cuda_runtime_get_version()  # 1000 * major + 10 * minor
  cudnn = _versions.cudnn_get_version()  # 10000 * major + 100 * minor + patch (cuDNN 9)
  return (cuda // 1000, cuda % 1000 // 10, 0), (cudnn // 10000, cudnn % 10000 // 100,
                                                 cudnn % 100)


def target_config(memory_bytes: int) -> str:
  """The H100 SXM's GpuTargetConfigProto, text format (comments stripped)."""
  (cu_major, cu_minor, _), (dnn_major, dnn_minor, dnn_patch) = _library_versions()
  info = re.sub(r'#.*', '', _H100_DEVICE_INFO.format(memory=memory_bytes))
  return (f'gpu_device_info {{{info}}}\nplatform_name: "CUDA"\n'
          f'runtime_version {{ major: {cu_major} minor: {cu_minor} }}\n'
          f'dnn_version_info {{ major: {dnn_major} minor: {dnn_minor} patch: {dnn_patch} }}\n'
          'device_description_str: "NVIDIA H100 80GB HBM3"\n')


def check_count(name: str, count: int) -> str:
  """The plugin's topology string ('slices x hosts x GPUs per host') for `count` GPUs:
  up to 8 on one host, else whole hosts of 8. Raises ValueError otherwise."""
  if 1 <= count <= GPUS_PER_HOST:
    return f'1x1x{count}'
  if count > 0 and count % GPUS_PER_HOST == 0:
    return f'1x{count // GPUS_PER_HOST}x{GPUS_PER_HOST}'
  raise ValueError(f'unknown GPU topology {name!r}: h100-N names N H100 GPUs, 1 to '
                   f'{GPUS_PER_HOST} on one host or hosts of {GPUS_PER_HOST} (h100-16, '
                   'h100-32, ...)')


def compile_only_devices(name: str, count: int, memory_bytes: int) -> tuple[str, list]:
  """(topology string, compile-only devices) of `count` H100s. Raises ValueError naming
  what to install when jax's CUDA plugin is missing."""
  grid = check_count(name, count)
  try:
    import jax_plugins.xla_cuda12  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    import jax_cuda12_plugin  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    import jax  # pylint: disable=g-import-not-at-top
    raise ValueError(
        f'compiling for {name} needs jax\'s CUDA plugin, which is not installed here ({e}): '
        f'pip install "jax[cuda12]=={jax.__version__}" (about 5 GB; no GPU or driver '
        'needed), preferably in a separate virtualenv') from None
  # Should the plugin start as a backend (JAX_PLATFORMS not 'cpu'), its check of the
  # driver's and libraries' versions would fail on a machine without a GPU driver.
  os.environ.setdefault('JAX_SKIP_CUDA_CONSTRAINTS_CHECK', '1')
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  desc = topologies.get_topology_desc('h100', 'cuda', target_config=target_config(memory_bytes),
                                      topology=grid)
  return grid, list(desc.devices)
