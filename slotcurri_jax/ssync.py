"""SSync: pseudo-labels, transitive merging, regions and the two synergy losses.

docs/method.md §9. Two per-slot maps of one training forward pass supervise each other:

* the encoder map z_enc (the last slot-attention iteration's scaled logits
  q·k/sqrt(D_s), no eps/renormalisation) is trusted on *boundaries* and trains the
  decoder there (`loss_bd`);
* the decoder map z_dec (the alpha logits) is trusted on *interiors* and trains the
  encoder there (`loss_in`).

Hard labels are merged first (slots whose clip-wide coverages overlap with
IoU > tau, transitively, relabel to the largest one), then the regions are found on
the merged labels. Labels, merging and regions are discrete and sit under
stop_gradient; the predictions are not detached (docs/method.md §9.6).

Everything has static shapes and no data-dependent Python control flow, so it jits
once: the merge is a thresholded IoU, a fixed-length depth-first walk of the
redundancy graph (2K steps, the reference's visiting order) and a masked
area-argmax; the remap is a gather; the neighbour counts compare 10 shifted slices of
an edge-padded label volume (docs/method.md §9.8). Cost is linear in the number of patches.

Inactive slots of the curriculum (active_mask False) never receive labels: they are
masked out of the argmax, the coverage/merge graph and the loss softmax, and the
Brier divisor K is the active count. Their logits may hold anything finite.

The warm-up gate (docs/method.md §9.7) is `ssync_weight(step, start_step)`, a traced 0/1 to
multiply the weighted losses with inside the jitted train step.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

# Large finite negative for masked logits: exp() underflows to exactly 0 and no
# inf/NaN can appear in the forward or backward pass (STYLE: never mask by multiply).
_NEG = -1e9

# Neighbourhood of docs/method.md §9.4: 8 spatial neighbours in the same frame, plus the same
# position at t-1 and t+1. Offsets are (dt, dy, dx).
NEIGHBOUR_OFFSETS = tuple(
    (0, dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)
) + ((-1, 0, 0), (1, 0, 0))
NUM_NEIGHBOURS = len(NEIGHBOUR_OFFSETS)  # 10


def _masked_logits(logits: jax.Array, active_mask: jax.Array) -> jax.Array:
  """logits: [B, T, K, N]; inactive slot rows replaced by a large finite negative."""
  return jnp.where(active_mask[None, None, :, None], logits, _NEG)


def hard_labels(logits: jax.Array, active_mask: jax.Array, grid: tuple[int, int]) -> jax.Array:
  """Argmax over the active slots, per patch (docs/method.md §9.2).

  Args:
    logits: [B, T, K, N] per-slot logits, N = G_h * G_w row-major patches.
    active_mask: [K] bool.
    grid: the patch grid (G_h, G_w).

  Returns:
    int32 [B, T, G_h, G_w]; ties go to the first (lowest) slot index, as in torch.
  """
  b, t, _, n = logits.shape
  if grid[0] * grid[1] != n:
    raise ValueError(f'logits have {n} patches, but the patch grid {tuple(grid)} has '
                     f'{grid[0] * grid[1]}')
  labels = jnp.argmax(_masked_logits(logits, active_mask), axis=2).astype(jnp.int32)
  return labels.reshape(b, t, *grid)


def coverage(z_enc: jax.Array, active_mask: jax.Array) -> jax.Array:
  """Where each slot's raw encoder logit beats its clip-wide mean (docs/method.md §9.3, step 1).

  Args:
    z_enc: [B, T, K, N] encoder logits.
    active_mask: [K] bool.

  Returns:
    bool [B, T, K, N]: z > mean over (T, N) of z for that (clip, slot), strictly;
    all False for inactive slots.
  """
  mean = jnp.mean(z_enc, axis=(1, 3), keepdims=True)
  return (z_enc > mean) & active_mask[None, None, :, None]


def slot_iou(cover: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Pairwise coverage IoU per frame, then its mean over time (docs/method.md §9.3, step 2).

  Args:
    cover: [B, T, K, N] bool coverage.

  Returns:
    iou_per_frame: [B, T, K, K], I / (a_i + a_j - I) with a = count + 1e-6;
    iou: [B, K, K], the mean over T.
  """
  c = cover.astype(jnp.float32)
  # 0/1 products summed in float32: exact (counts << 2^24), also under TF32/bf16 passes.
  inter = jnp.einsum('btin,btjn->btij', c, c, precision=jax.lax.Precision.HIGHEST)
  area = jnp.sum(c, axis=-1) + 1e-6  # the reference's guard for empty coverages
  union = area[..., :, None] + area[..., None, :] - inter
  iou_per_frame = inter / union
  return iou_per_frame, jnp.mean(iou_per_frame, axis=1)


def label_areas(labels: jax.Array, num_slots: int) -> jax.Array:
  """labels: [B, T, G_h, G_w] int -> int32 [B, num_slots], patch count per label over the clip."""
  onehot = labels.reshape(labels.shape[0], -1)[..., None] == jnp.arange(num_slots)
  return jnp.sum(onehot, axis=1, dtype=jnp.int32)


def dfs_visit_order(adjacency: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The reference's depth-first visiting order of the redundancy graph, per clip.

  The reference walks the slots in increasing index; from each unvisited slot with an
  edge it runs a stack search that marks a slot visited when it is popped and pushes
  its unvisited neighbours in increasing index, so the largest-index one is popped
  next (docs/method.md §9.3, step 5). That is a depth-first search which, from the
  slot on top, always steps to its largest-index unvisited neighbour and backs up to
  the slot it came from when there is none. We run exactly that walk for all clips at
  once: each of the 2K iterations either visits one slot or backs up from one, so 2K
  iterations visit and leave every slot. Isolated slots are visited as components of
  their own, which changes nothing for the others.

  Args:
    adjacency: [B, K, K] bool, symmetric, False on the diagonal.

  Returns:
    (visit_time, root): int32 [B, K] each; visit_time[b, i] is the iteration (0 .. 2K-1)
    that visits slot i, increasing along clip b's visiting order; root[b, i] is the
    smallest index of slot i's component (the slot its search started from).
  """
  b, k, _ = adjacency.shape
  slots = jnp.arange(k)
  clips = jnp.arange(b)

  def step(clock, state):
    visited, came_from, visit_time, root, current = state
    on_top = current >= 0  # [B]; current = -1: the stack is empty
    top = jnp.maximum(current, 0)
    ahead = adjacency[clips, top] & ~visited & on_top[:, None]  # [B, K]
    can_step = jnp.any(ahead, axis=1)
    largest_ahead = k - 1 - jnp.argmax(ahead[:, ::-1], axis=1)
    smallest_unvisited = jnp.argmax(~visited, axis=1)
    start = ~on_top & ~jnp.all(visited, axis=1)
    visit = can_step | start
    node = jnp.where(can_step, largest_ahead, smallest_unvisited)
    hit = visit[:, None] & (slots == node[:, None])  # [B, K], one-hot of the visited slot
    visited = visited | hit
    came_from = jnp.where(hit, jnp.where(can_step, current, -1)[:, None], came_from)
    root = jnp.where(hit, jnp.where(can_step, root[clips, top], node)[:, None], root)
    visit_time = jnp.where(hit, clock, visit_time)
    back = jnp.where(on_top, came_from[clips, top], -1)
    current = jnp.where(visit, node, back)
    return visited, came_from, visit_time, root, current

  minus_one = jnp.full((b, k), -1, jnp.int32)
  init = (jnp.zeros((b, k), bool), minus_one, minus_one, minus_one,
          jnp.full((b,), -1, jnp.int32))
  # A rolled loop: unrolling its 2K steps compiles 3-4x slower for no measurable gain on CPU.
  _, _, visit_time, root, _ = jax.lax.fori_loop(0, 2 * k, step, init)
  return visit_time, root


def merge_mapping(iou: jax.Array, labels_enc: jax.Array, active_mask: jax.Array,
                  tau: float) -> jax.Array:
  """Transitive merge of redundant slots, per clip (docs/method.md §9.3, steps 3-5).

  Args:
    iou: [B, K, K] time-mean coverage IoU.
    labels_enc: [B, T, G_h, G_w] pre-merge encoder labels (their areas pick the winner).
    active_mask: [K] bool; inactive slots get no edge and map to themselves.
    tau: merge threshold; an edge needs iou > tau (strict) and i != j.

  Returns:
    int32 [B, K]: slot -> winner of its connected component: the member with the
    largest pre-merge encoder-label area, and among tied members the one the
    reference's depth-first search visits first (`dfs_visit_order`); singletons map
    to themselves.
  """
  k = iou.shape[-1]
  both_active = active_mask[:, None] & active_mask[None, :]
  edge = (iou > tau) & ~jnp.eye(k, dtype=bool) & both_active
  edge = edge | jnp.swapaxes(edge, 1, 2)  # the reference's graph is undirected
  visit_time, root = dfs_visit_order(edge)
  area = label_areas(labels_enc, k)
  # Largest area first, then earliest visit (visit_time < 2K); -1 keeps non-members out.
  score = area * (2 * k) + (2 * k - 1 - visit_time)
  same_component = root[:, :, None] == root[:, None, :]  # [B, K, K]
  return jnp.argmax(jnp.where(same_component, score[:, None, :], -1), axis=-1).astype(jnp.int32)


def apply_mapping(labels: jax.Array, mapping: jax.Array) -> jax.Array:
  """labels: [B, T, G_h, G_w] int; mapping: [B, K] int -> relabelled [B, T, G_h, G_w]."""
  b = labels.shape[0]
  flat = jnp.take_along_axis(mapping, labels.reshape(b, -1), axis=1)
  return flat.reshape(labels.shape)


def disagreement_count(labels: jax.Array) -> jax.Array:
  """Neighbours (of the 10) whose label differs from the patch's own (docs/method.md §9.4).

  Args:
    labels: [B, T, G_h, G_w] int.

  Returns:
    int32 [B, T, G_h, G_w] in [0, 10]. Indices outside the clip are clamped (edge
    padding in T, H and W), so a border patch may count itself, which agrees.
  """
  _, t, h, w = labels.shape
  padded = jnp.pad(labels, ((0, 0), (1, 1), (1, 1), (1, 1)), mode='edge')
  count = jnp.zeros(labels.shape, jnp.int32)
  for dt, dy, dx in NEIGHBOUR_OFFSETS:
    shifted = padded[:, 1 + dt:1 + dt + t, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
    count = count + (shifted != labels).astype(jnp.int32)
  return count


def region_masks(labels_enc: jax.Array, labels_dec: jax.Array, n_bd: int = 1,
                 n_noise: int = 1, n_nbd: int = 1) -> tuple[jax.Array, jax.Array]:
  """Boundary set from the encoder labels, interior set from the decoder labels.

  Args:
    labels_enc: [B, T, G_h, G_w] (merged) encoder labels.
    labels_dec: [B, T, G_h, G_w] (merged) decoder labels.
    n_bd: a boundary patch has at least n_bd disagreeing neighbours...
    n_noise: ...and at least n_noise agreeing ones (drops isolated salt patches).
    n_nbd: an interior patch has fewer than n_nbd disagreeing neighbours.

  Returns:
    (boundary, interior): bool [B, T, G_h, G_w] each. Independent masks: they may overlap
    and need not cover every patch (docs/method.md §9.4).
  """
  d_enc = disagreement_count(labels_enc)
  d_dec = disagreement_count(labels_dec)
  boundary = (d_enc >= n_bd) & (NUM_NEIGHBOURS - d_enc >= n_noise)
  interior = d_dec < n_nbd
  return boundary, interior


def _per_patch_loss(logits: jax.Array, labels: jax.Array, active_mask: jax.Array,
                    temperature: float, loss: str) -> jax.Array:
  """logits: [B, T, K, N]; labels: [B, T, G_h, G_w] -> float32 [B, T, N] per-patch loss.

  'brier': sum over active slots of (softmax(z/temperature) - onehot)^2 (to be divided
  by K_active * |P|); 'ce': -log softmax(z/temperature)[label].
  """
  b, t, k, n = logits.shape
  masked = _masked_logits(logits / temperature, active_mask)
  onehot = labels.reshape(b, t, 1, n) == jnp.arange(k)[None, None, :, None]
  if loss == 'brier':
    sq = (jax.nn.softmax(masked, axis=2) - onehot.astype(masked.dtype)) ** 2
    return jnp.sum(jnp.where(active_mask[None, None, :, None], sq, 0.0), axis=2)
  if loss == 'ce':
    logp = jax.nn.log_softmax(masked, axis=2)
    return -jnp.sum(jnp.where(onehot, logp, 0.0), axis=2)
  raise ValueError(f"ssync.loss={loss!r} is unknown; use 'brier' (reference) or 'ce'")


def _num_groups(batch: int, group_size: int | None, reduction: str) -> int:
  """How many pools the batch splits into for the masked means (quirk 13)."""
  if reduction == 'global':
    return 1
  if reduction != 'group':
    raise ValueError(f"ssync.reduction={reduction!r} is unknown; use 'group' or 'global'")
  group_size = batch if group_size is None else group_size
  if group_size <= 0 or batch % group_size:
    raise ValueError(f'batch of {batch} clips is not a multiple of the SSync group '
                     f'size {group_size}; set loss.contrast_group_size to a divisor of it')
  return batch // group_size


def _masked_mean(per_patch: jax.Array, region: jax.Array, divisor_scale: jax.Array,
                 num_groups: int) -> jax.Array:
  """Masked mean of per_patch [B, T, N] over region [B, T, N] bool.

  One masked mean per group of B / num_groups consecutive clips, then the mean over
  groups: the reference's per-GPU loss, averaged by data parallelism (quirk 13). Empty
  regions give 0 thanks to the max(1, |P|) guard (the reference would give NaN).
  """
  values = jnp.where(region, per_patch, 0.0).reshape(num_groups, -1)
  counts = jnp.sum(region.reshape(num_groups, -1), axis=1).astype(jnp.float32)
  group_means = jnp.sum(values, axis=1) / (divisor_scale * jnp.maximum(1.0, counts))
  return jnp.mean(group_means)


def pseudo_labels(z_enc: jax.Array, z_dec: jax.Array, active_mask: jax.Array, *,
                  grid: tuple[int, int], tau_merge: float, n_bd: int = 1, n_noise: int = 1,
                  n_nbd: int = 1) -> dict:
  """Labels, merge and regions of docs/method.md §9.2-9.4, all without gradient.

  Args:
    z_enc, z_dec: [B, T, K, N] encoder / decoder logits.
    active_mask: [K] bool.
    grid: the patch grid (G_h, G_w), G_h * G_w = N.

  Returns:
    dict of labels_enc, labels_dec, labels_enc_merged, labels_dec_merged ([B, T, G_h, G_w]
    int32), mapping ([B, K] int32), slot_iou ([B, K, K]), boundary, interior
    ([B, T, G_h, G_w] bool).
  """
  z_enc = jax.lax.stop_gradient(z_enc)
  z_dec = jax.lax.stop_gradient(z_dec)
  labels_enc = hard_labels(z_enc, active_mask, grid)
  labels_dec = hard_labels(z_dec, active_mask, grid)
  _, iou = slot_iou(coverage(z_enc, active_mask))
  mapping = merge_mapping(iou, labels_enc, active_mask, tau_merge)
  # The decoder labels take the mapping found on the encoder map (docs/method.md §9.3, step 6).
  labels_enc_merged = apply_mapping(labels_enc, mapping)
  labels_dec_merged = apply_mapping(labels_dec, mapping)
  boundary, interior = region_masks(labels_enc_merged, labels_dec_merged, n_bd, n_noise, n_nbd)
  return dict(labels_enc=labels_enc, labels_dec=labels_dec,
              labels_enc_merged=labels_enc_merged, labels_dec_merged=labels_dec_merged,
              mapping=mapping, slot_iou=iou, boundary=boundary, interior=interior)


def ssync_losses(z_enc: jax.Array, z_dec: jax.Array, active_mask: jax.Array, *,
                 grid: tuple[int, int], tau_merge: float, n_bd: int = 1, n_noise: int = 1,
                 n_nbd: int = 1, temperature: float = 1.0, loss: str = 'brier',
                 group_size: int | None = None,
                 reduction: str = 'group') -> tuple[jax.Array, jax.Array, dict]:
  """The boundary and interior losses of SSync (docs/method.md §9.5), ungated.

  loss_bd: decoder softmax vs the merged *encoder* labels on the encoder boundary set;
  loss_in: encoder softmax vs the merged *decoder* labels on the decoder interior set.
  Brier form: mean over selected patches x K_active of the squared difference between
  the softmax over active slots and the one-hot label (quirk 12); 'ce': cross-entropy, mean
  over selected patches. Only the labels/regions are stop-gradient.

  Args:
    z_enc: [B, T, K, N] last-iteration slot-attention logits (encoder map).
    z_dec: [B, T, K, N] decoder alpha logits (decoder map).
    active_mask: [K] bool, the curriculum's active slots.
    grid: the patch grid (G_h, G_w), G_h * G_w = N.
    tau_merge: IoU threshold of the merge (config.ssync.tau_merge).
    n_bd, n_noise, n_nbd: region thresholds (config.ssync).
    temperature: softmax temperature of the loss (config.ssync.temperature).
    loss: 'brier' | 'ce' (config.ssync.loss).
    group_size: clips per pool for reduction='group' (the reference's per-GPU batch,
      config.loss.contrast_group_size); None: the whole batch.
    reduction: 'group' (quirk 13, reference) | 'global' (config.ssync.reduction).

  Returns:
    (loss_bd, loss_in, aux): float32 scalars and the dict of `pseudo_labels` plus
    boundary_fraction / interior_fraction (scalars, fraction of patches selected).
  """
  b, t, k, n = z_enc.shape
  if z_dec.shape != z_enc.shape:
    raise ValueError(f'z_dec shape {z_dec.shape} differs from z_enc shape {z_enc.shape}')
  if loss not in ('brier', 'ce'):
    raise ValueError(f"ssync.loss={loss!r} is unknown; use 'brier' (reference) or 'ce'")
  num_groups = _num_groups(b, group_size, reduction)
  aux = pseudo_labels(z_enc, z_dec, active_mask, grid=grid, tau_merge=tau_merge, n_bd=n_bd,
                      n_noise=n_noise, n_nbd=n_nbd)
  # Brier averages over K active channels too; CE is a plain mean over patches.
  scale = (jnp.sum(active_mask).astype(jnp.float32) if loss == 'brier'
           else jnp.float32(1.0))
  boundary = aux['boundary'].reshape(b, t, n)
  interior = aux['interior'].reshape(b, t, n)
  per_bd = _per_patch_loss(z_dec, aux['labels_enc_merged'], active_mask, temperature, loss)
  per_in = _per_patch_loss(z_enc, aux['labels_dec_merged'], active_mask, temperature, loss)
  loss_bd = _masked_mean(per_bd, boundary, scale, num_groups)
  loss_in = _masked_mean(per_in, interior, scale, num_groups)
  aux['boundary_fraction'] = jnp.mean(aux['boundary'].astype(jnp.float32))
  aux['interior_fraction'] = jnp.mean(aux['interior'].astype(jnp.float32))
  return loss_bd, loss_in, aux


def ssync_weight(step: jax.Array | int, start_step: jax.Array | int) -> jax.Array:
  """The synergistic warm-up gate (docs/method.md §9.7): 0.0 while step < start_step, then 1.0.

  A hard switch, no ramp; start_step = ceil(ssync.start_fraction * s_max), the original's
  float comparison (objective.switch_step). Pass the
  train state's step as a traced array (and start_step as a Python int or array):
  the result is a traced float32 scalar, so one compiled train step serves both
  sides of the switch. Multiply the weighted SSync losses by it; the losses are
  always finite (max(1, |P|) guards), so 0 * loss is exactly 0 in value and gradient.
  """
  return (jnp.asarray(step) >= start_step).astype(jnp.float32)
