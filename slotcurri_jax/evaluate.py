"""Evaluation: rollout (forward or cyclic) -> upsampled decoder masks -> metrics -> JSON.

The protocol of docs/method.md §12: whole videos, decoder alpha masks bilinearly upsampled
to the ground-truth resolution before the argmax, video FG-ARI and video mBO as
the headline numbers, per-frame variants and a fragmentation score beside them.
FG-ARI and mBO are reported x 100 everywhere (as in the papers' tables); the JSON
names each metric's unit.
Padded examples (filling the last batch) and padded frames (YouTube-VIS videos
of different lengths) never count.
"""
from __future__ import annotations

import functools
import json
from typing import Iterator

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from slotcurri_jax import progress
from slotcurri_jax import metrics as metrics_lib
from slotcurri_jax import parallel
from slotcurri_jax import predict as predict_lib
from slotcurri_jax import visualize
from slotcurri_jax.data import device_preprocess
from slotcurri_jax.data import datasets
from slotcurri_jax.data import pipeline
from slotcurri_jax.data import transforms

# One convention everywhere (printed, logged, JSON, TensorBoard), the papers' and the
# README's: FG-ARI and mBO x 100; `UNITS` is written next to the metrics in the JSON.
PERCENT = ('ari', 'mbo', 'image_ari', 'image_mbo')
UNITS = {
    'ari': 'video FG-ARI x 100', 'mbo': 'video mBO x 100',
    'image_ari': 'per-frame FG-ARI x 100', 'image_mbo': 'per-frame mBO x 100',
    'fragmentation': 'slots per ground-truth object (mean; not x 100)',
    'num_videos': 'videos',
    'scored_videos': 'videos with ground-truth masks (the metrics average over these)',
}


def make_predictor(config, run, mesh=None) -> predict_lib.Predictor:
  """The run's Predictor with the configured evaluation rollout and resolution (built
  once per run: every periodic evaluation reuses its compiled rollout). Raw batches
  (data.preprocess_on_device) are resized and normalised inside the same jit.

  Quirk 7: all max_slots rows are evaluated in every curriculum stage; with
  eval.all_slots off, the curriculum's active slots at the evaluated step."""
  return predict_lib.Predictor(
      run.model, rollout=config.eval.rollout, resolution=config.data.resolution, mesh=mesh,
      prepare=functools.partial(device_preprocess.model_video, config=config),
      active_at=None if config.eval.all_slots else run.curriculum.active_mask)


def evaluate(config, predictor: predict_lib.Predictor, state, mesh, *, workdir: str,
             writer=None, max_batches: int = -1, batches: Iterator[dict] | None = None,
             data: datasets.Dataset | None = None) -> dict:
  """Evaluate `state.params` on the validation split; write JSON (+ figures) under workdir/eval.

  predictor: `make_predictor(config, run, mesh)`, built once per run; data: the run's
  Dataset (`run.data`; made from config when None)."""
  data = data if data is not None else datasets.Dataset.from_config(config)
  step = int(jax.device_get(state.step))
  active = predictor.active_mask(state.step)
  total, videos = None, None
  if batches is None:
    batches = pipeline.eval_iterator(config, data=data)
    total = pipeline.num_eval_batches(config, data=data)
    total = min(total, max_batches) if max_batches >= 0 else total
    videos = _named_rows(config, data)
  masks_dir = epath.Path(workdir) / 'eval' / f'masks_step_{step}'
  scores: dict[str, list[float]] = {}
  figures: list[np.ndarray] = []
  num_videos = 0
  with progress.progress_bar(total, desc=f'eval (step {step})', unit='batch',
                        enabled=jax.process_index() == 0) as bar:
    for i, host_batch in enumerate(batches):
      if 0 <= max_batches <= i:
        break
      rows = None if videos is None else videos[i]
      num_videos += _score_batch(host_batch, predictor, state.params, active, mesh, config,
                                 data.spec.metric_convention, scores, figures, rows, masks_dir)
      bar.update(1)
  if num_videos == 0:
    raise ValueError('evaluation saw no video: the validation split is empty or all padding')
  results = {k: float(np.nanmean(v)) * (100.0 if k in PERCENT else 1.0)
             if np.any(np.isfinite(v)) else float('nan') for k, v in scores.items()}
  results['num_videos'] = num_videos
  if videos is not None:
    results['scored_videos'] = len(scores.get('ari', []))
  settings = {
      'dataset': config.data.name, 'step': step, 'resolution': config.data.resolution,
      'ignore_background': bool(config.eval.ignore_background), 'rollout': config.eval.rollout,
      'num_videos': num_videos, 'all_slots': bool(config.eval.all_slots),
      'active_slots': int(np.sum(jax.device_get(active))), 'max_slots': config.model.max_slots,
      'method': config.method, 'ssync': bool(config.ssync.enabled),
      'frames': 'whole videos' if videos is None else (  # video_folder: the manifest's pieces
          f'videos cut into pieces of at most {config.data.video_folder.max_eval_frames} '
          'frames, each scored as a video'),
      'config': json.loads(config.to_json_best_effort()),  # all of it (tools/summarize.py)
  }
  if videos is not None:
    settings['masks_dir'] = str(masks_dir)
  _write(workdir, step, results, settings, figures, writer)
  if 'ari' not in results:
    logging.warning('eval step %d, %d videos: none has ground-truth masks, so there are no '
                    'metrics; wrote the figures and each video\'s predicted masks to %s', step,
                    num_videos, masks_dir)
    return results
  logging.info('eval step %d, %d scored videos: video FG-ARI %.1f, video mBO %.1f, image FG-ARI '
               '%.1f, image mBO %.1f (x 100), fragmentation %.3f', step,
               results.get('scored_videos', num_videos), results['ari'],
               results['mbo'], results['image_ari'], results['image_mbo'],
               results['fragmentation'])
  return results


def _named_rows(config, data: datasets.Dataset) -> list[list] | None:
  """Per evaluation batch, the dataset's entry ({'name', 'has_masks'}) of each row of the
  global batch (None for fillers); None for datasets without `eval_videos`."""
  if data.spec.eval_videos is None:
    return None
  videos = data.spec.eval_videos(data.builder)
  return [[videos[p] if p >= 0 else None for p in rows]
          for rows in pipeline.eval_positions(config, data=data)]


def _score_batch(host_batch: dict, predictor, params, active, mesh, config, convention: str,
                 scores: dict, figures: list, rows: list | None = None, masks_dir=None) -> int:
  """Score one evaluation batch into `scores` (and `figures`); returns its real videos.

  rows: the dataset's entry of each row (`_named_rows`): each video's predicted ids are
  written to masks_dir/<name>.npz, and only those with masks are scored."""
  batch = parallel.host_to_global(host_batch, mesh)
  out = jax.device_get(predictor(params, device_preprocess.model_input(batch), active,
                                 batch['num_frames']))
  full = parallel.global_to_host(batch) if jax.process_count() > 1 else host_batch
  count = 0
  for b in range(full['num_frames'].shape[0]):
    if not full['padding_mask'][b]:
      continue
    t = int(full['num_frames'][b])
    pred = out['ids'][b:b + 1, :t]
    true = full['segmentations'][b:b + 1, :t]
    if rows is None or rows[b]['has_masks']:
      _add_video_scores(scores, pred, true, config, convention)
    if rows is not None and jax.process_index() == 0:
      masks_dir.mkdir(parents=True, exist_ok=True)
      # ids uint8 [T, R, R]: the slot of each pixel of the centre square the model saw.
      np.savez_compressed(str(masks_dir / f'{rows[b]["name"]}.npz'), ids=pred[0].astype(np.uint8))
    count += 1
    if len(figures) < config.train.image_summaries:
      figures.append(_clip_figure(device_preprocess.host_video(full, b, config)[:t], pred[0],
                                  true[0], out['masks'][b, :t], out['error'][b, :t]))
  return count


def _add_video_scores(scores: dict, pred: np.ndarray, true: np.ndarray, config,
                      convention: str) -> None:
  """pred, true: [1, T, H, W] int ids of one video; convention: the dataset spec's
  metric_convention."""
  v = metrics_lib.video_scores(pred, true, ignore_background=bool(config.eval.ignore_background),
                               convention=convention)
  for k in ('ari', 'mbo', 'fragmentation'):
    scores.setdefault(k, []).append(float(v[k][0]))
  # Per-frame metrics average over every counted frame of every video.
  for k in ('image_ari', 'image_mbo'):
    scores.setdefault(k, []).extend(v[k][v[f'{k}_counted']].tolist())


def _denormalise(video: np.ndarray) -> np.ndarray:
  """[T, H, W, 3] ImageNet-normalised float -> uint8."""
  mean, std = np.asarray(transforms.IMAGENET_MEAN), np.asarray(transforms.IMAGENET_STD)
  return np.clip((video * std + mean) * 255.0, 0, 255).astype(np.uint8)


def _clip_figure(video, pred, true, masks, error) -> np.ndarray:
  """video [T, R, R, 3] normalised; pred, true [T, R, R] ids; masks [T, K, G_h, G_w];
  error [T, G_h, G_w]."""
  frames = _denormalise(np.asarray(video))
  res = frames.shape[1:3]
  masks_up = np.asarray(jax.image.resize(jnp.asarray(masks), masks.shape[:2] + res, 'linear'))
  error_up = np.asarray(jax.image.resize(error, error.shape[:1] + res, 'nearest'))
  return visualize.clip_figure(frames, pred, true, masks_up, error_up)


def _write(workdir: str, step: int, results: dict, settings: dict, figures: list, writer) -> None:
  if jax.process_index() != 0:
    return
  out_dir = epath.Path(workdir) / 'eval'
  out_dir.mkdir(parents=True, exist_ok=True)
  payload = json.dumps({'metrics': results, 'units': {k: UNITS[k] for k in results if k in UNITS},
                        'settings': settings}, indent=2)
  for name in (f'metrics_step_{step}.json', 'metrics_latest.json'):  # whole or not at all
    tmp = out_dir / f'.{name}.tmp'
    tmp.write_text(payload)
    tmp.replace(out_dir / name)
  if figures:
    fig_dir = out_dir / f'figures_step_{step}'
    fig_dir.mkdir(parents=True, exist_ok=True)
    for i, fig in enumerate(figures):
      visualize.save_png(str(fig_dir / f'clip_{i}.png'), fig)
  if writer is not None:
    writer.write_scalars(step, {f'eval/{k}': v for k, v in results.items()})
    if figures:
      writer.write_images(step, {f'eval/clip_{i}': f[None] for i, f in enumerate(figures)})
