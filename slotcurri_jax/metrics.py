"""Segmentation metrics of docs/method.md §12: FG-ARI, mBO (video and per frame) and fragmentation.

Two halves:
  * `upsample_masks` / `masks_to_ids` (jax, jit-able, on device): decoder alpha masks at
    patch resolution -> bilinear upsampling to the ground-truth size -> argmax over the
    active slots (docs/method.md §12.2).
  * the scores (host-side NumPy, float64): every score of a video is read off one
    contingency table n[t, c, j] = #pixels of frame t with true id c and predicted id j,
    built with a single `np.bincount` (a 24x336x336 video has 2.7M pixels).

Ground truth and predictions are integer id maps `[batch, time, height, width]`.
`ignore_background=True` means true id 0 is background and belongs to no ground-truth
cluster: MOVi (channel 0 dropped by the reference) and YouTube-VIS (id 0 = no instance;
the reference feeds instance channels only, so background rows are all-zero and skipped,
which is the same thing). `ignore_background=False` makes id 0 a regular cluster.

Samples without any foreground ground truth give NaN (the reference skips them); average
with `np.nanmean`, or with the `counted` masks of the per-frame functions.
"""
from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np

CONVENTIONS = ('movi', 'ytvis')


# --------------------------------------------------------------------------- predictions (jax)

def upsample_masks(masks: jax.Array, out_hw: tuple[int, int]) -> jax.Array:
  """Bilinear upsampling of per-slot masks from the patch grid (docs/method.md §12.2).

  Half-pixel centres, no antialiasing: `jax.image.resize(..., 'linear')` equals the
  reference's `F.interpolate(mode='bilinear', align_corners=False)` for upsampling.

  Args:
    masks: [batch, time, slots, grid_h, grid_w] soft masks on the patch grid.
    out_hw: (height, width) of the ground truth.

  Returns:
    [batch, time, slots, height, width] float masks.
  """
  if masks.ndim != 5:
    raise ValueError(f'masks must be [B, T, K, G_h, G_w] (on the patch grid), got {masks.shape}')
  return jax.image.resize(masks, masks.shape[:3] + tuple(out_hw), method='linear')


def masks_to_ids(masks: jax.Array, active_mask: jax.Array, out_hw: tuple[int, int]) -> jax.Array:
  """Predicted segmentation: upsample, then argmax over the active slots.

  Args:
    masks: [batch, time, slots, grid_h, grid_w] decoder alpha masks on the patch grid.
    active_mask: [slots] bool; inactive slots never win.
    out_hw: (height, width) of the ground truth.

  Returns:
    [batch, time, height, width] int32 slot ids (ties go to the lowest index).
  """
  up = upsample_masks(masks, out_hw)
  # Masks lie in [0, 1], so -1 is below every active value while staying finite.
  up = jnp.where(active_mask[None, None, :, None, None], up, -1.0)
  return jnp.argmax(up, axis=2).astype(jnp.int32)


# --------------------------------------------------------------------------- contingency tables

def _check_ids(pred_ids: np.ndarray, true_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  pred_ids, true_ids = np.asarray(pred_ids), np.asarray(true_ids)
  if pred_ids.shape != true_ids.shape or pred_ids.ndim != 4:
    raise ValueError(f'pred_ids {pred_ids.shape} and true_ids {true_ids.shape} must both be '
                     '[batch, time, height, width]')
  for name, ids in (('pred_ids', pred_ids), ('true_ids', true_ids)):
    if not np.issubdtype(ids.dtype, np.integer):
      raise ValueError(f'{name} has dtype {ids.dtype}; pass integer id maps')
    if ids.size and ids.min() < 0:
      raise ValueError(f'{name} has a negative id {ids.min()}; ids must be >= 0')
  return pred_ids, true_ids


def _tables(pred_ids, true_ids) -> np.ndarray:
  """Per-frame contingency tables, int64 [batch, time, num_true_ids, num_pred_ids].

  Row c = true id c (row 0 is the background when it is ignored), column j = predicted id j.
  """
  pred_ids, true_ids = _check_ids(pred_ids, true_ids)
  b, t = pred_ids.shape[:2]
  num_true = int(true_ids.max(initial=0)) + 1
  num_pred = int(pred_ids.max(initial=0)) + 1
  cells = num_true * num_pred
  frame_offset = (np.arange(t, dtype=np.int64) * cells)[:, None, None]
  out = np.empty((b, t, num_true, num_pred), np.int64)
  for i in range(b):  # one video at a time bounds the index array to one video's pixels
    flat = true_ids[i].astype(np.int64) * num_pred + pred_ids[i] + frame_offset
    out[i] = np.bincount(flat.ravel(), minlength=t * cells).reshape(t, num_true, num_pred)
  return out


def _clusters(table: np.ndarray, ignore_background: bool) -> np.ndarray:
  """The ground-truth rows that form clusters: [..., C', num_pred]."""
  return table[..., 1:, :] if ignore_background else table


def _ari(table: np.ndarray) -> np.ndarray:
  """ARI of docs/method.md §12.4 from contingency tables [..., C, J] (float64; 1 if degenerate)."""
  n = table.astype(np.float64)
  a = n.sum(-1)
  b = n.sum(-2)
  total = a.sum(-1)
  index = (n * (n - 1)).sum((-2, -1))
  sum_a = (a * (a - 1)).sum(-1)
  sum_b = (b * (b - 1)).sum(-1)
  pairs = total * (total - 1)
  with np.errstate(divide='ignore', invalid='ignore'):
    expected = np.where(pairs > 0, sum_a * sum_b / np.where(pairs > 0, pairs, 1.0), 0.0)
    maximum = 0.5 * (sum_a + sum_b)
    denominator = maximum - expected
    return np.where(denominator == 0, 1.0, (index - expected) / denominator)


def _best_overlap(table: np.ndarray, pred_sizes: np.ndarray) -> np.ndarray:
  """Best IoU of each ground-truth row over predicted ids: [..., C].

  table: [..., C, J] intersections; pred_sizes: [..., J] predicted volumes over *all*
  pixels (background included: a slot spilling onto the background loses IoU).
  """
  true_sizes = table.sum(-1)
  union = true_sizes[..., :, None] + pred_sizes[..., None, :] - table
  iou = table / np.maximum(union, 1)
  return iou.max(-1)  # _tables always has at least one predicted column


def _mean_over_objects(per_object: np.ndarray, present: np.ndarray) -> np.ndarray:
  """Mean over the present objects (last axis); NaN where none is present."""
  count = present.sum(-1)
  total = np.where(present, per_object, 0.0).sum(-1)
  with np.errstate(divide='ignore', invalid='ignore'):
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


# --------------------------------------------------------------------------- video scores

def fg_ari(pred_ids, true_ids, ignore_background: bool = True) -> np.ndarray:
  """Video FG-ARI (the headline `ari`): all (t, y, x) of a video form one clustering.

  Args:
    pred_ids: [batch, time, height, width] int predicted slot ids.
    true_ids: [batch, time, height, width] int ground-truth ids.
    ignore_background: True drops true id 0 (MOVi, YouTube-VIS).

  Returns:
    [batch] float64; 1.0 for a degenerate denominator, NaN for a video without
    foreground pixels (skipped by the reference; average with np.nanmean).
  """
  return _video_ari(_tables(pred_ids, true_ids), ignore_background)


def mbo(pred_ids, true_ids, ignore_background: bool = True) -> np.ndarray:
  """Video mBO (docs/method.md §12.5): each non-empty ground-truth object's best IoU over the
  predicted ids, on spatio-temporal volumes, averaged over the video's objects.

  Args and NaN rule as in `fg_ari`. Returns [batch] float64.
  """
  return _mbo(_tables(pred_ids, true_ids).sum(1), ignore_background)


def fragmentation(pred_ids, true_ids, ignore_background: bool = True, inside: float = 0.5,
                  cover: float = 0.05) -> np.ndarray:
  """Over-fragmentation: predicted slots per ground-truth object, on video volumes.

  A slot j counts as a fragment of object c when at least `inside` of the slot's volume
  lies inside c (|G_c ∩ Q_j| >= inside |Q_j|) and it covers at least `cover` of c
  (|G_c ∩ Q_j| >= cover |G_c|). 1.0 is ideal; 0 means no slot is mostly inside the object.

  Args:
    pred_ids, true_ids, ignore_background: as in `fg_ari`.
    inside: minimum fraction of the slot inside the object.
    cover: minimum fraction of the object covered by the slot.

  Returns:
    [batch] float64 fragments per object, averaged over the video's non-empty objects;
    NaN for a video without objects.
  """
  return _fragmentation(_tables(pred_ids, true_ids).sum(1), ignore_background, inside, cover)


def _video_ari(tables: np.ndarray, ignore_background: bool) -> np.ndarray:
  table = _clusters(tables.sum(1), ignore_background)
  return np.where(table.sum((-2, -1)) > 0, _ari(table), np.nan)


def _mbo(table: np.ndarray, ignore_background: bool) -> np.ndarray:
  """table: [..., num_true, num_pred] -> mean best IoU over the present objects [...]."""
  objects = _clusters(table, ignore_background)
  best = _best_overlap(objects, table.sum(-2))
  return _mean_over_objects(best, objects.sum(-1) > 0)


def _fragmentation(table, ignore_background, inside, cover) -> np.ndarray:
  objects = _clusters(table, ignore_background)
  pred_sizes = table.sum(-2)[..., None, :]
  true_sizes = objects.sum(-1, keepdims=True)
  fragment = (pred_sizes > 0) & (objects >= inside * pred_sizes) & (objects >= cover * true_sizes)
  return _mean_over_objects(fragment.sum(-1).astype(np.float64), true_sizes[..., 0] > 0)


# --------------------------------------------------------------------------- per-frame scores

def _check_convention(convention: str) -> None:
  if convention not in CONVENTIONS:
    raise ValueError(f'convention={convention!r}; choose one of {CONVENTIONS} '
                     "(the dataset spec's metric_convention, data/datasets.py)")


def image_fg_ari(pred_ids, true_ids, ignore_background: bool = True,
                 convention: str = 'movi') -> tuple[np.ndarray, np.ndarray]:
  """Per-frame FG-ARI (`image_ari`), with the reference's choice of counted frames.

  Which frames count (fixture metrics.npz pins both):
    * 'movi': every frame. The reference tests for an empty ground truth *before*
      dropping the background channel, so a background-only frame counts, with the
      degenerate-denominator value 1.0.
    * 'ytvis': frames with no instance pixel are skipped.
  With ignore_background=False every frame has a cluster and counts.

  Args:
    pred_ids, true_ids: [batch, time, height, width] int id maps.
    ignore_background: as in `fg_ari`.
    convention: 'movi' | 'ytvis'.

  Returns:
    (values [batch, time] float64, NaN where not counted; counted [batch, time] bool).
    The dataset score is the mean of values[counted] over all frames of all videos.
  """
  _check_convention(convention)
  return _image_ari(_tables(pred_ids, true_ids), ignore_background, convention)


def image_mbo(pred_ids, true_ids, ignore_background: bool = True,
              convention: str = 'movi') -> tuple[np.ndarray, np.ndarray]:
  """Per-frame mBO (`image_mbo`): objects and IoUs per frame.

  Frames without any ground-truth object are skipped in both conventions (for MOVi the
  reference's mBO ignores the background channel before its emptiness test); the
  argument exists so that callers treat `image_fg_ari` and `image_mbo` alike.

  Returns:
    (values [batch, time] float64, NaN where not counted; counted [batch, time] bool).
  """
  _check_convention(convention)
  values = _mbo(_tables(pred_ids, true_ids), ignore_background)
  return values, np.isfinite(values)


def _image_ari(tables, ignore_background, convention):
  table = _clusters(tables, ignore_background)
  has_foreground = table.sum((-2, -1)) > 0
  counted = has_foreground if convention == 'ytvis' else np.ones_like(has_foreground)
  return np.where(counted, _ari(table), np.nan), counted


# --------------------------------------------------------------------------- all at once

def video_scores(pred_ids, true_ids, ignore_background: bool = True,
                 convention: str = 'movi') -> dict[str, np.ndarray]:
  """Every score above from one contingency-table pass (5x fewer passes over the pixels).

  Args:
    pred_ids, true_ids: [batch, time, height, width] int id maps.
    ignore_background, convention: as in `fg_ari` / `image_fg_ari`.

  Returns:
    dict of 'ari', 'mbo', 'fragmentation' [batch] and 'image_ari', 'image_ari_counted',
    'image_mbo', 'image_mbo_counted' [batch, time], equal to the single functions
    (fragmentation with its default thresholds).
  """
  _check_convention(convention)
  tables = _tables(pred_ids, true_ids)
  video = tables.sum(1)
  image_ari, ari_counted = _image_ari(tables, ignore_background, convention)
  image_mbo = _mbo(tables, ignore_background)
  return {
      'ari': _video_ari(tables, ignore_background),
      'mbo': _mbo(video, ignore_background),
      'fragmentation': _fragmentation(video, ignore_background, 0.5, 0.05),
      'image_ari': image_ari, 'image_ari_counted': ari_counted,
      'image_mbo': image_mbo, 'image_mbo_counted': np.isfinite(image_mbo),
  }
