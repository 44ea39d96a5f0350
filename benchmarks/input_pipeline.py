r"""Input pipeline throughput: training clips per second delivered by train_iterator.

  python benchmarks/input_pipeline.py [--data_dir=/tmp/slotcurri_bench_tfds]

Measures, on this machine's CPUs:
  * MOVi training resolution: 4-frame clips resized 128 -> 336, batch 64, read
    from synthetic_movi stored at 128x128 (MOVi's storage size and format);
  * the demo: configs/demo.py (64x64 stored and model resolution, batch 16);
  * how long synthetic_movi takes to generate at the demo size (1000 + 64
    videos of 24 frames at 64x64) and at 128x128 (the videos the MOVi
    measurement reads).
Prints a summary and writes benchmarks/results/input_pipeline.json. Takes a
few minutes on 2 cores, most of it generating the datasets (into a fresh
temporary directory unless --data_dir names a folder that already has them).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import shutil
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]


def _demo_config():
  from slotcurri_jax import config as config_lib
  return config_lib.load(REPO / 'configs' / 'demo.py')


def _generate(config) -> float:
  from slotcurri_jax.data import synthetic_movi
  start = time.time()
  synthetic_movi.prepare(config.data.synthetic, config.data.data_dir)
  return time.time() - start


def _throughput(config, batches: int) -> dict:
  from slotcurri_jax.data import pipeline
  iterator = pipeline.train_iterator(config)
  start = time.time()
  next(iterator)  # builds the tf.data graph and fills the shuffle buffer
  first = time.time() - start
  start, cpu = time.time(), time.process_time()
  for _ in range(batches):
    batch = next(iterator)
  seconds = time.time() - start
  clips = batches * config.data.batch_size
  return {'clips_per_s': clips / seconds, 'batches_per_s': batches / seconds,
          'batch_size': config.data.batch_size, 'clip_shape': list(batch['video'].shape[1:]),
          'stored_resolution': config.data.synthetic.resolution, 'measured_batches': batches,
          'seconds': seconds, 'first_batch_s': first,
          'process_cpu_s_per_clip': (time.process_time() - cpu) / clips}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--data_dir', default='')
  parser.add_argument('--movi_batches', type=int, default=8)
  parser.add_argument('--demo_batches', type=int, default=100)
  args = parser.parse_args()
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  import tensorflow as tf
  tf.config.set_visible_devices([], 'GPU')

  temporary = not args.data_dir
  data_dir = args.data_dir or tempfile.mkdtemp(prefix='slotcurri_bench_tfds_')
  load_before = os.getloadavg()
  try:
    demo = _demo_config()
    demo.data.data_dir = data_dir
    movi = _demo_config()  # MOVi-C's training input on synthetic_movi at 128 px
    movi.data.data_dir = data_dir
    movi.data.resolution = 336
    movi.data.batch_size = 64
    movi.data.shuffle_buffer = 512
    movi.data.synthetic.resolution = 128
    movi.data.synthetic.min_objects, movi.data.synthetic.max_objects = 3, 10
    movi.data.synthetic.num_train, movi.data.synthetic.num_validation = 192, 1

    generation = {
        'demo_64px_videos': demo.data.synthetic.num_train + demo.data.synthetic.num_validation,
        'demo_64px_s': _generate(demo),
        'movi_128px_videos': movi.data.synthetic.num_train + movi.data.synthetic.num_validation,
        'movi_128px_s': _generate(movi),
    }
    results = {
        'machine': {'cpus': len(os.sched_getaffinity(0)), 'platform': platform.platform(),
                    'load_average_before': load_before, 'load_average_after': os.getloadavg()},
        'generation': generation,
        'movi_336px': _throughput(movi, args.movi_batches),
        'demo_64px': _throughput(demo, args.demo_batches),
    }
  finally:
    if temporary:
      shutil.rmtree(data_dir, ignore_errors=True)
  out = REPO / 'benchmarks' / 'results' / 'input_pipeline.json'
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(results, indent=2) + '\n')
  g = results['generation']
  print(f"synthetic_movi generation: {g['demo_64px_videos']} videos at 64 px in "
        f"{g['demo_64px_s']:.1f} s; {g['movi_128px_videos']} videos at 128 px in "
        f"{g['movi_128px_s']:.1f} s ({results['machine']['cpus']} cpus)")
  for key in ('movi_336px', 'demo_64px'):
    r = results[key]
    print(f"{key}: {r['clips_per_s']:.1f} clips/s ({r['batches_per_s']:.2f} batches/s of "
          f"{r['batch_size']} x {r['clip_shape']}), {1000 * r['process_cpu_s_per_clip']:.1f} "
          f"ms cpu/clip")
  print(f'wrote {out}')


if __name__ == '__main__':
  main()
