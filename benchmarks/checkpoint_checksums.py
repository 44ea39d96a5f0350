r"""What the checkpoint checksums cost per save, on the MOVi-C train state.

  python benchmarks/checkpoint_checksums.py [--saves=3] [--dir=/tmp/ckpt_bench]

The MOVi-C SlotCurri TrainState (configs/movi_c.py: DINOv2 ViT-S/14 backbone, slot stack,
decoder 1024x3, Adam moments) is built abstractly (jax.eval_shape) and filled with random
arrays of its shapes on one device; nothing is trained. Each save goes through the
project's Checkpointer (orbax, asynchronous as in training) and is timed in two parts:
  save_s       Checkpointer.save until orbax has finished writing and renamed the step;
  checksums_s  writing checksums.json: reading back and hashing every file of the step
               (zlib.crc32, checksums.ALGORITHM), the cost checksums add to a save;
and on restore, verify_s (checksums.verify: the same hashing) against restore_s (orbax
restoring the whole state). Hash throughput of blake2b, sha256 and zlib.crc32 over the
largest file is reported too. The step files are freshly written, so they are read back
from the page cache: the numbers are CPU cost; on a network filesystem (GCS) the read-back
adds a second transfer of the checkpoint.

Writes benchmarks/results/checkpoint_checksums.json.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import pathlib
import shutil
import sys
import time
import zlib

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402
import numpy as np  # noqa: E402

import measure  # noqa: E402
from slotcurri_jax import checkpoint as checkpoint_lib  # noqa: E402
from slotcurri_jax import checksums  # noqa: E402
from slotcurri_jax import config as config_lib  # noqa: E402
from slotcurri_jax import parallel  # noqa: E402
from slotcurri_jax import train  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]


def random_state(config, mesh):
  """The MOVi-C TrainState with random values of the right shapes and dtypes."""
  abstract, _ = train.abstract_state(train.Run.from_config(config), mesh)
  rng = np.random.default_rng(0)

  def fill(x):
    if np.issubdtype(x.dtype, np.floating):
      value = rng.standard_normal(x.shape, dtype=np.float32).astype(x.dtype)
    else:
      value = rng.integers(0, 2**16, x.shape).astype(x.dtype)
    return jax.device_put(value, x.sharding)

  return jax.tree.map(fill, abstract)


def hash_throughput(path: pathlib.Path, repeats: int = 3) -> dict:
  """GB/s of three hashes over one file's bytes (in memory), the best of `repeats`."""
  data = path.read_bytes()
  out = {'bytes': len(data)}
  for name, fn in (('blake2b', lambda b: hashlib.blake2b(b, digest_size=16).digest()),
                   ('sha256', lambda b: hashlib.sha256(b).digest()),
                   ('crc32', zlib.crc32)):
    best = float('inf')
    for _ in range(repeats):
      start = time.perf_counter()
      fn(data)
      best = min(best, time.perf_counter() - start)
    out[f'{name}_gb_per_s'] = len(data) / best / 1e9
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--saves', type=int, default=3)
  parser.add_argument('--dir', default='/tmp/slotcurri_checksum_bench')
  args = parser.parse_args()
  load_before = os.getloadavg()
  config = config_lib.load(str(REPO / 'configs' / 'movi_c.py'))
  config.model.encoder.random_init = True  # random values anyway; no weights needed
  config.mesh.data = 1
  config.train.keep_checkpoints = args.saves + 1
  mesh = parallel.mesh_from_config(config)
  state = random_state(config, mesh)
  leaves = jax.tree.leaves(state)
  state_bytes = sum(x.size * x.dtype.itemsize for x in leaves)
  shutil.rmtree(args.dir, ignore_errors=True)
  ckpt = checkpoint_lib.Checkpointer(args.dir, config)
  rows = []
  for i in range(args.saves):
    state = state.replace(step=jax.device_put(np.int32(i + 1), state.step.sharding))
    start = time.perf_counter()
    ckpt.save(state)
    ckpt._manager.wait_until_finished()  # pylint: disable=protected-access
    save_s = time.perf_counter() - start
    start = time.perf_counter()
    ckpt._seal()  # pylint: disable=protected-access
    checksums_s = time.perf_counter() - start
    step_dir = ckpt.directory / str(i + 1)
    start = time.perf_counter()
    checksums.verify(step_dir)
    verify_s = time.perf_counter() - start
    start = time.perf_counter()
    jax.block_until_ready(ckpt.restore(checkpoint_lib.abstract_like(state), step=i + 1))
    restore_s = time.perf_counter() - start - verify_s  # restore() verifies first
    rows.append(dict(save_s=save_s, checksums_s=checksums_s, verify_s=verify_s,
                     restore_s=restore_s, ratio=checksums_s / save_s))
    print(f'save {i + 1}: save {save_s:.2f} s, checksums {checksums_s:.2f} s '
          f'({100 * checksums_s / save_s:.0f} % of the save), verify {verify_s:.2f} s, '
          f'restore {restore_s:.2f} s')
  ckpt.close()
  files = [p for p in pathlib.Path(args.dir, 'checkpoints', '1').rglob('*') if p.is_file()]
  largest = max(files, key=lambda p: p.stat().st_size)
  median = lambda k: float(np.median([r[k] for r in rows]))
  result = dict(
      config='configs/movi_c.py (SlotCurri), random values', state_leaves=len(leaves),
      state_bytes=state_bytes, step_files=len(files),
      step_bytes=sum(p.stat().st_size for p in files), hash=checksums.ALGORITHM,
      saves=rows, median_save_s=median('save_s'), median_checksums_s=median('checksums_s'),
      median_ratio=median('ratio'), median_verify_s=median('verify_s'),
      median_restore_s=median('restore_s'), hash_throughput=hash_throughput(largest),
      machine=measure.machine_info(load_before), jax=measure.jax_info())
  print(f'state {state_bytes / 1e6:.0f} MB in {len(leaves)} arrays; median save '
        f'{result["median_save_s"]:.2f} s, checksums {result["median_checksums_s"]:.2f} s '
        f'(x{result["median_ratio"]:.2f} of the save)')
  measure.write_json(REPO / 'benchmarks' / 'results' / 'checkpoint_checksums.json', result)
  shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == '__main__':
  main()
