"""SlotCurri's reconstruction-guided slot curriculum (docs/method.md §7), as pure jax functions.

The placeholders are one padded array [max_slots, slot_dim] from step 0 plus an active
mask (docs/method.md §17.2). A stage change writes children into not-yet-active rows and widens the
mask; shapes never change, and the slot counts may be traced values, so the train step
compiles once for every stage.

Timeline of a boundary s_j (j >= 1) of the schedule ((s_0=0, K_0), (s_1, K_1), ...):
  * step s_j - 1 (last step of stage j-1) trains with K_{j-1} slots; its batch gives the
    slot-wise error `slot_error` (docs/method.md §7.3);
  * at the start of step s_j, `spawn` writes K_j - K_{j-1} children into rows
    K_{j-1} .. K_j - 1 (docs/method.md §7.4-7.5);
  * Quirk 6: step s_j itself still trains with K_{j-1} slots (`boundary_uses_old_count`);
    step s_j + 1 uses K_j.
"""
from __future__ import annotations

import dataclasses
import fractions as fractions_lib
import math
from typing import Any

from absl import logging

import jax
import jax.numpy as jnp

Schedule = tuple[tuple[int, int], ...]

NEIGHBORS = ('cosine_all', 'euclidean_active')
NORM_ROWS = ('all', 'active')
MODES = ('perturb', 'none')


# --------------------------------------------------------------------------- schedule

def build_schedule(curriculum_config: Any, max_slots: int, total_steps: int) -> Schedule:
  """The curriculum stages as ((step, num_slots), ...), first step 0 (docs/method.md §7.1).

  Default (empty `schedule`): counts (first_num_slots, floor(K/2), K) at steps
  (0, floor(f1 s_max), floor(f2 s_max)) with (f1, f2) = stage_fractions, i.e. MOVi-C
  2 -> 5 -> 11 at 10k / 25k of 100k. With n fractions the counts are
  floor(K / 2^(n-k)) for k = 1..n (the reference's rule for n = 2). Boundaries are
  floor(Fraction(str(f)) * s_max), exact (S // 10 and S // 4 for the defaults), so float
  rounding never moves one.

  Short runs: a default stage that would last 0 steps (s_max < 10 for the defaults) is
  dropped, the next stage taking its start, and a line says so; e.g. s_max = 5 gives
  ((0, floor(K/2)), (1, K)) and s_max < 4 ((0, K),). An explicit schedule is used as
  written (stages after s_max are never reached).

  Args:
    curriculum_config: `config.curriculum` (enabled, schedule, stage_fractions,
      first_num_slots).
    max_slots: K = config.model.max_slots.
    total_steps: s_max = config.train.steps (>= 1).

  Returns:
    A tuple of (step, num_slots) with step 0 first; ((0, max_slots),) when disabled.

  Raises:
    ValueError: s_max < 1, steps not strictly increasing from 0, counts decreasing, or
      a count outside [1, max_slots].
  """
  if int(total_steps) < 1:
    raise ValueError(f'train.steps={total_steps}; it must be at least 1')
  if not curriculum_config.enabled:
    return ((0, int(max_slots)),)
  explicit = tuple(curriculum_config.schedule or ())
  if explicit:
    schedule = tuple((int(step), int(k)) for step, k in explicit)
    where = 'config.curriculum.schedule'
  else:
    fractions = tuple(curriculum_config.stage_fractions)
    n = len(fractions)
    steps = [0] + [math.floor(fractions_lib.Fraction(str(f)) * int(total_steps))
                   for f in fractions]
    counts = [int(curriculum_config.first_num_slots)] + [
        max_slots // 2 ** (n - k) for k in range(1, n + 1)]
    schedule = _drop_empty_stages(tuple(zip(steps, counts)), total_steps)
    where = (f'the default schedule from config.curriculum.stage_fractions={fractions}, '
             f'first_num_slots={curriculum_config.first_num_slots}, model.max_slots='
             f'{max_slots} and train.steps={total_steps} (set config.curriculum.schedule '
             'explicitly or disable the curriculum)')
  _validate(schedule, max_slots, where)
  return schedule


_REPORTED: set = set()  # short-run notes already logged (build_schedule runs several times)


def _drop_empty_stages(stages: Schedule, total_steps: int) -> Schedule:
  """Drop stages that start where the next one starts (0 steps long); log what was done."""
  kept: list[tuple[int, int]] = []
  for step, k in stages:
    if kept and step <= kept[-1][0]:
      kept[-1] = (kept[-1][0], k)  # the earlier stage is empty: this one starts there
    else:
      kept.append((step, k))
  kept = tuple(kept)
  if kept != stages and (stages, total_steps) not in _REPORTED:
    _REPORTED.add((stages, total_steps))
    logging.warning('curriculum: train.steps=%d leaves stages of 0 steps in the default schedule '
                    '%s; training with %s instead', total_steps, stages, kept)
  return kept


def _validate(schedule: Schedule, max_slots: int, where: str) -> None:
  if schedule[0][0] != 0:
    raise ValueError(f'first stage starts at step {schedule[0][0]}, must be 0 in {where}')
  for (s0, k0), (s1, k1) in zip(schedule, schedule[1:]):
    if s1 <= s0:
      raise ValueError(f'stage steps {s0} then {s1} are not strictly increasing in {where}')
    if k1 < k0:
      raise ValueError(f'num_slots={k1} after num_slots={k0} decreases in {where}')
  for _, k in schedule:
    if not 1 <= k <= max_slots:
      raise ValueError(f'num_slots={k} exceeds max_slots={max_slots} in {where}'
                       if k > max_slots else f'num_slots={k} is below 1 in {where}')


def spawn_steps(schedule: Schedule) -> tuple[int, ...]:
  """Boundary steps s_j, j >= 1: the spawn is applied at the start of step s_j, from the
  error of step s_j - 1's batch (with quirk 6, step s_j still trains with the old count)."""
  return tuple(step for step, _ in schedule[1:])


def num_active_slots(step: jax.Array | int, schedule: Schedule,
                     boundary_uses_old_count: bool = True) -> jax.Array:
  """Active slot count K(step), an int32 scalar (traceable in `step`).

  boundary_uses_old_count=True (quirk 6, reference): K_j for s_j < step <= s_{j+1}.
  False: K_j for s_j <= step < s_{j+1}.
  """
  boundaries = jnp.asarray(spawn_steps(schedule), jnp.int32)
  counts = jnp.asarray([k for _, k in schedule], jnp.int32)
  step = jnp.asarray(step, jnp.int32)
  passed = step > boundaries if boundary_uses_old_count else step >= boundaries
  return counts[jnp.sum(passed.astype(jnp.int32))]


def num_active_slots_host(step: int, schedule: Schedule,
                          boundary_uses_old_count: bool = True) -> int:
  """`num_active_slots` for a Python int step, on the host (picks a stage's compiled step)."""
  passed = sum(step > s if boundary_uses_old_count else step >= s for s in spawn_steps(schedule))
  return schedule[passed][1]


def active_mask(num_active: jax.Array | int, max_slots: int) -> jax.Array:
  """[max_slots] bool: rows 0 .. num_active - 1 are active."""
  return jnp.arange(max_slots) < num_active


# --------------------------------------------------------------------------- error and allocation

def slot_error(dec_masks: jax.Array, recon: jax.Array, targets: jax.Array) -> jax.Array:
  """Slot-wise reconstruction error mass (docs/method.md §7.3).

  e_i = mean over (b, t, n) of m[b,t,i,n] * mean_c (recon - target)^2[b,t,n,c]. The
  normaliser is the number of positions, not sum m: an idle slot gets e_i ~ 0.

  Args:
    dec_masks: [batch, time, slots, num_patches] decoder alpha masks.
    recon: [batch, time, num_patches, feat_dim] reconstruction.
    targets: [batch, time, num_patches, feat_dim] reconstruction target.

  Returns:
    [slots] float32 errors (0 for inactive slots, whose masks are 0).
  """
  per_patch = jnp.mean(jnp.square(recon - targets), axis=-1)
  return jnp.mean(dec_masks * per_patch[:, :, None, :], axis=(0, 1, 3))


def allocate_children(errors: jax.Array, num_parents: jax.Array | int,
                      num_children: jax.Array | int) -> jax.Array:
  """Children per parent by largest remainder (docs/method.md §7.4).

  omega = e / sum(e) over the parents (plain normalisation; uniform when the sum is 0 or
  not finite, e.g. a lost error buffer), floors of M * omega, then +1 for the
  M - sum(floors) largest residues, ties to the lower parent index (the reference's sort
  is unstable; this is our deterministic choice).

  Args:
    errors: [max_slots] slot-wise errors; rows >= num_parents are ignored.
    num_parents: active count K_{j-1} (may be traced).
    num_children: M = K_j - K_{j-1} (may be traced).

  Returns:
    [max_slots] int32 counts summing to M, zero beyond num_parents.
  """
  k_max = errors.shape[0]
  is_parent = jnp.arange(k_max) < num_parents
  num_children = jnp.asarray(num_children, jnp.int32)
  # Errors are non-negative by construction; the clamp keeps a corrupt value from
  # producing negative counts.
  e = jnp.where(is_parent, jnp.maximum(errors.astype(jnp.float32), 0.0), 0.0)
  total = jnp.sum(e)
  valid = jnp.isfinite(total) & (total > 0)
  uniform = is_parent / jnp.maximum(jnp.asarray(num_parents, jnp.float32), 1.0)
  weights = jnp.where(valid, e / jnp.where(valid, total, 1.0), uniform)
  rho = weights * num_children.astype(jnp.float32)
  floors = jnp.floor(rho)
  residue = jnp.where(is_parent, rho - floors, -1.0)
  remainder = num_children - jnp.sum(floors).astype(jnp.int32)
  order = jnp.argsort(-residue, stable=True)
  rank = jnp.zeros((k_max,), jnp.int32).at[order].set(jnp.arange(k_max, dtype=jnp.int32))
  counts = floors.astype(jnp.int32) + (rank < remainder).astype(jnp.int32)
  return jnp.where(is_parent, counts, 0)


# --------------------------------------------------------------------------- spawn

def _neighbours(p: jax.Array, num_old: jax.Array, neighbor: str) -> jax.Array:
  """nn(i) for every row, from the pre-spawn placeholders: [max_slots] int32."""
  k_max = p.shape[0]
  rows = jnp.arange(k_max)
  others = rows[:, None] != rows[None, :]
  hi = jax.lax.Precision.HIGHEST
  if neighbor == 'cosine_all':
    # Quirk 4: cosine over all rows, the not-yet-active random rows included.
    unit = p / jnp.maximum(jnp.linalg.norm(p, axis=-1, keepdims=True), 1e-12)
    cos = jnp.matmul(unit, unit.T, precision=hi)
    return jnp.argmax(jnp.where(others, cos, -1e9), axis=-1).astype(jnp.int32)
  # Paper wording: the nearest active row by Euclidean distance. Active rows are parents,
  # which the spawn never overwrites, so this choice is the same before and after writes.
  sq = jnp.sum(jnp.square(p[:, None, :] - p[None, :, :]), axis=-1)
  candidate = others & (rows[None, :] < num_old)
  # A lone active row has no active neighbour: fall back to all other rows.
  candidate = jnp.where(jnp.any(candidate, axis=-1, keepdims=True), candidate, others)
  return jnp.argmin(jnp.where(candidate, sq, 1e30), axis=-1).astype(jnp.int32)


def unit_directions(key: jax.Array, num: int, dim: int) -> jax.Array:
  """[num, dim] float32 rows uniform on the unit sphere: g / ||g||, g ~ N(0, I).

  The spawn's child directions, row r for the r-th child. In training `key` is
  fold_in(state.rng, step): the same on every process and device (the state's rng is
  replicated and no process index is folded in), different at every boundary step.
  """
  g = jax.random.normal(key, (num, dim), jnp.float32)
  return g / jnp.linalg.norm(g, axis=-1, keepdims=True)


def spawn(placeholders: jax.Array, errors: jax.Array, num_old: jax.Array | int,
          num_new: jax.Array | int, key: jax.Array, *, scale: float = 0.2,
          neighbor: str = 'cosine_all', norm_rows: str = 'all', mode: str = 'perturb',
          directions: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Write K_new - K_old children into rows K_old .. K_new - 1 (docs/method.md §7.4-7.5).

  For each parent i < num_old with c_i > 0, in index order:
    d_i   = ||P_i - P_nn(i)|| on the LIVE array (children of earlier parents are seen);
    mu    = mean_j ||P_j|| + 1e-8 over all rows (quirk 5), also live;
    sigma = scale * d_i * ||P_i|| / mu;
    its children P_i + sigma * u, u uniform on the sphere, go to the next free rows.
  nn(i) = argmax_{j != i} cos(P_i, P_j) over all rows (quirk 4), computed once before writes.
  Parents and rows >= num_new are untouched.

  Args:
    placeholders: [max_slots, slot_dim] P before the spawn.
    errors: [max_slots] slot-wise errors (rows >= num_old ignored).
    num_old: K_{j-1} (may be traced).
    num_new: K_j, num_old <= num_new <= max_slots (may be traced; not checked).
    key: PRNG key for the child directions.
    scale: lambda (config.curriculum.spawn_scale).
    neighbor: 'cosine_all' (quirk 4, reference) | 'euclidean_active' (paper).
    norm_rows: 'all' (quirk 5, reference) | 'active': mu over rows < num_old plus the
      children written so far.
    mode: 'perturb' (SlotCurri) | 'none' (simple curriculum: new rows keep their
      initialisation; info still describes the perturbation that was skipped).
    directions: optional [max_slots, slot_dim] unit directions, row r for the r-th
      child (tests inject the reference draws); otherwise `unit_directions(key, ...)`.

  Returns:
    (new placeholders [max_slots, slot_dim], info) with info entries
    counts [max_slots] int32 (children per parent), child_parent [max_slots] int32
    (parent of row num_old + r, -1 past the last child), nn_idx [max_slots] int32, and
    distance, mean_norm, sigma [max_slots] float32 (0 for rows without children).
  """
  for name, value, choices in (('neighbor', neighbor, NEIGHBORS),
                               ('norm_rows', norm_rows, NORM_ROWS), ('mode', mode, MODES)):
    if value not in choices:
      key_name = 'spawn' if name == 'mode' else name
      raise ValueError(f'{name}={value!r}; choose one of {choices} '
                       f'(config.curriculum.{key_name})')
  k_max, dim = placeholders.shape
  rows = jnp.arange(k_max, dtype=jnp.int32)
  num_old = jnp.asarray(num_old, jnp.int32)
  num_children = jnp.asarray(num_new, jnp.int32) - num_old

  counts = allocate_children(errors, num_old, num_children)
  ends = jnp.cumsum(counts)
  child_parent = jnp.where(rows < num_children,
                           jnp.searchsorted(ends, rows, side='right').astype(jnp.int32), -1)
  if directions is None:
    directions = unit_directions(key, k_max, dim)
  # Per array row: the parent writing it (-1: none) and its direction.
  child_of_row = jnp.clip(rows - num_old, 0, k_max - 1)
  row_parent = jnp.where(rows >= num_old, child_parent[child_of_row], -1)
  row_direction = directions[child_of_row].astype(placeholders.dtype)

  nn_idx = _neighbours(placeholders, num_old, neighbor)
  zeros = jnp.zeros((k_max,), jnp.float32)

  def one_parent(i, carry):
    p, distance, mean_norm, sigma = carry
    norms = jnp.linalg.norm(p, axis=-1)
    d = jnp.linalg.norm(p[i] - p[nn_idx[i]])
    if norm_rows == 'all':
      mu = jnp.mean(norms) + 1e-8
    else:
      live_active = num_old + ends[i] - counts[i]
      mu = jnp.sum(jnp.where(rows < live_active, norms, 0.0)) / live_active + 1e-8
    s = scale * d * norms[i] / mu
    p = jnp.where((row_parent == i)[:, None], p[i] + s * row_direction, p)
    has = counts[i] > 0
    return (p, distance.at[i].set(jnp.where(has, d, 0.0)),
            mean_norm.at[i].set(jnp.where(has, mu, 0.0)),
            sigma.at[i].set(jnp.where(has, s, 0.0)))

  # Static trip count K_max (parents >= num_old have no children and write nothing).
  new_p, distance, mean_norm, sigma = jax.lax.fori_loop(
      0, k_max, one_parent, (placeholders, zeros, zeros, zeros))
  info = dict(counts=counts, child_parent=child_parent, nn_idx=nn_idx,
              distance=distance, mean_norm=mean_norm, sigma=sigma)
  if mode == 'none':
    new_p = placeholders
  return new_p, info


# --------------------------------------------------------------------------- the object

@dataclasses.dataclass(frozen=True)
class Curriculum:
  """The slot curriculum of a run, built once from the config and called by the train
  step, the loop and evaluation (docs/method.md §7).

  The rule, in one place: K(s) slots are active at update s; at the start of a boundary
  step s_j the rows K_{j-1} .. K_j - 1 of the placeholders are written from the
  slot-wise error recorded at s_j - 1 (`spawn_at`); with `boundary_uses_old_count`
  (quirk 6) step s_j itself still trains with K_{j-1}. The train state keeps only the
  error record ([error_window, max_slots]); everything else is a function of the step.
  """
  schedule: Schedule
  max_slots: int
  boundary_uses_old_count: bool = True
  error_window: int = 1
  scale: float = 0.2
  neighbor: str = 'cosine_all'
  norm_rows: str = 'all'
  mode: str = 'perturb'

  @classmethod
  def from_config(cls, config) -> 'Curriculum':
    cc = config.curriculum
    return cls(schedule=build_schedule(cc, config.model.max_slots, config.train.steps),
               max_slots=config.model.max_slots,
               boundary_uses_old_count=cc.boundary_uses_old_count,
               error_window=cc.error_window, scale=cc.spawn_scale, neighbor=cc.neighbor,
               norm_rows=cc.norm_rows, mode=cc.spawn)

  @property
  def boundaries(self) -> tuple[int, ...]:
    """The spawn steps s_1, s_2, ..."""
    return spawn_steps(self.schedule)

  # ---- which slots are active

  def num_active(self, step: jax.Array | int) -> jax.Array:
    """K(step), [] int32, traceable in step."""
    return num_active_slots(step, self.schedule, self.boundary_uses_old_count)

  def num_active_host(self, step: int) -> int:
    """K(step) for a Python int step (picks a stage's compiled train step)."""
    return num_active_slots_host(step, self.schedule, self.boundary_uses_old_count)

  def active_mask(self, step: jax.Array | int) -> jax.Array:
    """[max_slots] bool, the rows trained at `step`."""
    return active_mask(self.num_active(step), self.max_slots)

  def stage(self, step: jax.Array | int) -> jax.Array:
    """[] int32 index of the stage whose count K(step) is (same rule as num_active)."""
    boundaries = jnp.asarray(self.boundaries, jnp.int32)
    step = jnp.asarray(step, jnp.int32)
    passed = step > boundaries if self.boundary_uses_old_count else step >= boundaries
    return jnp.sum(passed.astype(jnp.int32))

  # ---- the slot-wise error record and the spawn

  def init_error_record(self) -> jax.Array:
    """[error_window, max_slots] float32 zeros (a ring buffer indexed by step % window)."""
    return jnp.zeros((self.error_window, self.max_slots), jnp.float32)

  def record_error(self, record: jax.Array, step: jax.Array, error: jax.Array) -> jax.Array:
    """The record with `error` ([K] errors of the computed rows, K <= max_slots) of
    update `step` written into its ring slot (zero-padded to max_slots)."""
    error = jnp.pad(error, (0, self.max_slots - error.shape[0]))
    return record.at[step % record.shape[0]].set(error)

  def spawn_at(self, step: jax.Array, placeholders: jax.Array, record: jax.Array,
               key: jax.Array, directions: jax.Array | None = None
               ) -> tuple[jax.Array, jax.Array]:
    """The placeholders [max_slots, D_s] to train update `step` with, and the children
    per parent [max_slots] int32 (all 0 away from a boundary).

    At a boundary step s_j the children are written (see `spawn`) from the error
    record's mean; elsewhere P is returned unchanged. directions: optional
    [max_slots, D_s] unit rows, row r for the r-th child; drawn from `key` otherwise.
    """
    no_children = jnp.zeros((self.max_slots,), jnp.int32)
    if len(self.schedule) == 1:
      return placeholders, no_children
    boundaries = jnp.asarray(self.boundaries, jnp.int32)
    old_counts = jnp.asarray([k for _, k in self.schedule[:-1]], jnp.int32)
    new_counts = jnp.asarray([k for _, k in self.schedule[1:]], jnp.int32)
    hit = step == boundaries
    idx = jnp.argmax(hit)
    errors = jnp.mean(record, axis=0)

    def write(p):
      new_p, info = spawn(p, errors, old_counts[idx], new_counts[idx], key, scale=self.scale,
                          neighbor=self.neighbor, norm_rows=self.norm_rows, mode=self.mode,
                          directions=directions)
      return new_p, info['counts']

    return jax.lax.cond(jnp.any(hit), write, lambda p: (p, no_children), placeholders)
