r"""Input pipeline, host path against device path, side by side in one run.

  python benchmarks/input_pipeline.py [--data_dir=/tmp/slotcurri_bench_tfds] [--demo]

For each dataset shape, both settings of config.data.preprocess_on_device read the same
stream (same seed, same clips) through pipeline.train_iterator:
  * host path (False): decode, bicubic resize, clamp, normalise, flip on the host in
    float32 (TensorFlow); the device receives float32 clips at the model resolution;
  * device path (True, the default): the host decodes and ships uint8 frames at the
    stored size (YT-VIS: the stored window the crop reads) plus the per-clip choices;
    data/device_preprocess.py does the rest inside the jitted step.
Measured per path: clips/s delivered by the iterator on this machine's CPUs, host CPU
seconds per clip (time.process_time of the whole process, tf.data's threads included,
divided by the clips delivered), bytes per clip sent to the device; for the device path
also the jitted preprocess's time per batch on this CPU (what moves to the accelerator)
and the largest difference between the two paths' first batch (normalised units).
Datasets:
  * movi_336px: synthetic_movi stored at 128x128 (MOVi's storage size and format), 4-frame
    clips resized to 336, batch 64;
  * ytvis_518px: a fake YouTube-VIS folder of 640x360 JPEGs, pre-passed by the builder to
    568x320 (the 320-px short side of the real pre-pass), 4-frame clips resized to 518 and
    cropped, batch 16;
  * demo_64px (--demo): configs/demo.py, 64 px stored and model resolution, batch 16.
Writes benchmarks/results/input_pipeline.json. About 5 minutes on 2 cores, most of it
generating the data (into a fresh temporary directory unless --data_dir has it).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import tempfile
import time

# Read when jax and TensorFlow are imported.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402
import numpy as np  # noqa: E402
import PIL.Image  # noqa: E402
import tensorflow as tf  # noqa: E402

import measure  # noqa: E402  (benchmarks/measure.py)
from slotcurri_jax import config as config_lib  # noqa: E402
from slotcurri_jax import costs  # noqa: E402
from slotcurri_jax.data import device_preprocess  # noqa: E402
from slotcurri_jax.data import pipeline  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]


def _demo_config():
  return config_lib.load(REPO / 'configs' / 'demo.py')


def _generate(config) -> float:
  start = time.time()
  pipeline.check_available(config, splits=('train',))
  return time.time() - start


def _fake_ytvis(root: pathlib.Path, videos: int, frames: int) -> None:
  """A YouTube-VIS 2021 style folder of smooth textured 640x360 JPEGs, no annotations."""
  rng = np.random.default_rng(0)
  meta = []
  for v in range(videos):
    name = f'video_{v:03d}'
    (root / 'train' / 'JPEGImages' / name).mkdir(parents=True, exist_ok=True)
    coarse = rng.integers(0, 256, (frames, 24, 40, 3)).astype(np.uint8)
    names = []
    for t in range(frames):
      image = PIL.Image.fromarray(coarse[t]).resize((640, 360), PIL.Image.BICUBIC)
      pixels = np.asarray(image).astype(np.int16) + rng.integers(-12, 13, (360, 640, 3))
      file = f'{name}/{5 * t:05d}.jpg'
      PIL.Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
          root / 'train' / 'JPEGImages' / file, quality=90)
      names.append(file)
    meta.append({'id': v + 1, 'height': 360, 'width': 640, 'length': frames,
                 'file_names': names})
  (root / 'train' / 'instances.json').write_text(json.dumps(
      {'videos': meta, 'annotations': [], 'categories': []}))


def _throughput(config, batches: int) -> tuple[dict, dict]:
  """(numbers, first batch) of pipeline.train_iterator(config)."""
  iterator = pipeline.train_iterator(config)
  start = time.time()
  first = next(iterator)  # builds the tf.data graph and fills the shuffle buffer
  first_s = time.time() - start
  start, cpu = time.time(), time.process_time()
  for _ in range(batches):
    batch = next(iterator)
  seconds, cpu_s = time.time() - start, time.process_time() - cpu
  clips = batches * config.data.batch_size
  shapes = {k: [list(np.shape(v)[1:]), str(np.asarray(v).dtype)] for k, v in batch.items()}
  return {'clips_per_s': clips / seconds, 'batches_per_s': batches / seconds,
          'batch_size': config.data.batch_size, 'per_clip_arrays': shapes,
          'measured_batches': batches, 'seconds': seconds, 'first_batch_s': first_s,
          'host_cpu_s_per_clip': cpu_s / clips,
          'bytes_per_clip_to_device': device_preprocess.raw_nbytes(batch) / config.data.batch_size,
          }, first


def _device_preprocess(config, batch: dict, repeats: int = 5) -> dict:
  step = jax.jit(lambda b: device_preprocess.preprocess(b, config)['video'])
  device_batch = jax.device_put(batch)
  timing = measure.time_calls(lambda: step(device_batch), steps=repeats, warmup=1)
  flops, _ = costs.jaxpr_flops(jax.make_jaxpr(step)(device_batch).jaxpr)
  s = timing.median_s
  return {'s_per_batch_this_cpu': s, 's_per_clip_this_cpu': s / config.data.batch_size,
          'compile_s': timing.warmup_s[0],  # the first call: compiles, then runs
          'matmul_flops_per_clip': flops / config.data.batch_size if flops else None}


def _both_paths(config, batches: int) -> dict:
  host, device = config.copy_and_resolve_references(), config.copy_and_resolve_references()
  host.data.preprocess_on_device, device.data.preprocess_on_device = False, True
  host_numbers, host_first = _throughput(host, batches)
  device_numbers, device_first = _throughput(device, batches)
  device_numbers['device_preprocess'] = _device_preprocess(device, device_first)
  video = np.asarray(device_preprocess.preprocess(device_first, device)['video'])
  out = {'host_path': host_numbers, 'device_path': device_numbers,
         'max_abs_difference_first_batch': float(np.abs(video - host_first['video']).max()),
         'resolution': config.data.resolution}
  out['host_cpu_ratio'] = host_numbers['host_cpu_s_per_clip'] / device_numbers['host_cpu_s_per_clip']
  out['bytes_ratio'] = (host_numbers['bytes_per_clip_to_device']
                        / device_numbers['bytes_per_clip_to_device'])
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--data_dir', default='')
  parser.add_argument('--movi_batches', type=int, default=6)
  parser.add_argument('--ytvis_batches', type=int, default=6)
  parser.add_argument('--demo', action='store_true', help='also the demo at 64 px')
  parser.add_argument('--demo_batches', type=int, default=60)
  parser.add_argument('--out', default=str(REPO / 'benchmarks' / 'results' / 'input_pipeline.json'))
  args = parser.parse_args()
  tf.config.set_visible_devices([], 'GPU')

  temporary = not args.data_dir
  data_dir = pathlib.Path(args.data_dir or tempfile.mkdtemp(prefix='slotcurri_bench_tfds_'))
  load_before = os.getloadavg()
  results = {'machine': {}, 'generation': {}}
  try:
    movi = _demo_config()  # MOVi-C's training input on synthetic_movi at 128 px
    movi.data.data_dir = str(data_dir)
    movi.data.resolution = 336
    movi.data.batch_size = 64
    movi.data.shuffle_buffer = 512
    movi.data.synthetic.resolution = 128
    movi.data.synthetic.min_objects, movi.data.synthetic.max_objects = 3, 10
    movi.data.synthetic.num_train, movi.data.synthetic.num_validation = 192, 1
    results['generation']['movi_128px_videos'] = 193
    results['generation']['movi_128px_s'] = _generate(movi)

    ytvis = _demo_config()
    ytvis.data.name = 'ytvis'
    ytvis.data.data_dir = str(data_dir)
    ytvis.data.resolution = 518
    ytvis.data.flip_prob = 0.0  # configs/ytvis.py
    ytvis.data.batch_size = 16
    ytvis.data.shuffle_buffer = 32
    ytvis.data.ytvis.num_heldout = 2
    ytvis.data.ytvis.manual_dir = str(data_dir / 'ytvis_raw')
    start = time.time()
    if not (data_dir / 'ytvis_raw').exists():
      _fake_ytvis(data_dir / 'ytvis_raw', videos=34, frames=8)
    results['generation']['ytvis_fake_jpeg_s'] = time.time() - start
    results['generation']['ytvis_videos'] = 34
    results['generation']['ytvis_build_s'] = _generate(ytvis)

    results['movi_336px'] = _both_paths(movi, args.movi_batches)
    results['ytvis_518px'] = _both_paths(ytvis, args.ytvis_batches)
    if args.demo:
      demo = _demo_config()
      demo.data.data_dir = str(data_dir)
      results['generation']['demo_64px_s'] = _generate(demo)
      results['demo_64px'] = _both_paths(demo, args.demo_batches)
  finally:
    if temporary:
      shutil.rmtree(data_dir, ignore_errors=True)
  results['machine'] = measure.machine_info(load_before)
  measure.write_json(args.out, results)
  for key in ('movi_336px', 'ytvis_518px', 'demo_64px'):
    if key not in results:
      continue
    r = results[key]
    for path in ('host_path', 'device_path'):
      p = r[path]
      print(f"{key} {path:<12}: {p['clips_per_s']:7.1f} clips/s, "
            f"{1000 * p['host_cpu_s_per_clip']:6.2f} ms host CPU/clip, "
            f"{p['bytes_per_clip_to_device'] / 1e6:6.3f} MB/clip to the device")
    d = r['device_path']['device_preprocess']
    print(f"{key}: host CPU {r['host_cpu_ratio']:.1f}x less, bytes {r['bytes_ratio']:.1f}x fewer; "
          f"device preprocess {1000 * d['s_per_clip_this_cpu']:.1f} ms/clip on this CPU; "
          f"max |difference| {r['max_abs_difference_first_batch']:.2e}")


if __name__ == '__main__':
  main()
