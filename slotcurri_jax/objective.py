"""The training objective: the weighted sum of the method's loss terms, built once.

    total = mse_weight * L_mse + ss_weight * L_ss                 (SlotContrast)
          + ssim_weight * L_ssim                                  (SlotCurri, weight > 0)
          + gate(step) * (bd_weight * L_bd + in_weight * L_in)    (SSync, ssync.enabled)

`Objective.from_config(config, grid)` is the one place that decides which terms a
method has and how they are weighted; `train.make_train_step`, the golden-fixture
checker and the tests all call the same object, so the objective that is checked
against the original code is the objective that trains (docs/method.md §6).

The SSync gate is the original's float comparison `step >= start_fraction * s_max`
(docs/method.md §9.7): for an integer step that is `step >= ceil(start_fraction * s_max)`,
computed here once in Python float arithmetic, exactly as the original computes it.
"""
from __future__ import annotations

import dataclasses
import math

import jax

from slotcurri_jax import losses
from slotcurri_jax import ssync


@dataclasses.dataclass(frozen=True)
class SSyncTerms:
  """SSync's pseudo-label losses and their switch (config.ssync)."""
  tau_merge: float
  n_bd: int
  n_noise: int
  n_nbd: int
  temperature: float
  loss: str
  reduction: str
  bd_weight: float
  in_weight: float
  start_step: int  # first step whose total includes the SSync terms

  @classmethod
  def from_config(cls, config) -> 'SSyncTerms':
    sc = config.ssync
    total = sc.total_steps or config.train.steps
    return cls(tau_merge=sc.tau_merge, n_bd=sc.n_bd, n_noise=sc.n_noise, n_nbd=sc.n_nbd,
               temperature=sc.temperature, loss=sc.loss, reduction=sc.reduction,
               bd_weight=sc.bd_weight, in_weight=sc.in_weight,
               start_step=switch_step(sc.start_fraction, total))


def switch_step(fraction: float, total_steps: int) -> int:
  """The first integer step s with s >= fraction * total_steps (float product, as the
  original compares `global_step >= ratio * max_steps`)."""
  return max(0, math.ceil(float(fraction) * int(total_steps)))


@dataclasses.dataclass(frozen=True)
class Objective:
  """The method's loss. Call it on the model's outputs:

    total, terms, aux = objective(outputs, active_mask, step)

  outputs: the model's dict with recon / targets [B, T, N, D_f], slots [B, T, K, D_s],
    and for SSync sa_logits / dec_alpha [B, T, K, N]; active_mask: [K] bool (K = the
    slot rows computed); step: [] int32, the update index s of the train state.
  Returns total [] float32, terms {name: [] float32} (loss_total included, and for
  SSync the gate and the region fractions), aux {name: array} (SSync's labels, merge
  mapping and region masks; empty otherwise), all stop-gradient apart from total.
  """
  mse_weight: float
  ss_weight: float
  ss_temperature: float
  ssim_weight: float
  contrast_group_size: int
  grid: tuple[int, int]  # patch grid (rows, columns) of the reconstruction, for SSIM
  ssync: SSyncTerms | None = None

  @classmethod
  def from_config(cls, config, grid: tuple[int, int]) -> 'Objective':
    lc = config.loss
    return cls(mse_weight=lc.mse_weight, ss_weight=lc.ss_weight,
               ss_temperature=lc.ss_temperature, ssim_weight=lc.ssim_weight,
               contrast_group_size=lc.contrast_group_size, grid=tuple(grid),
               ssync=SSyncTerms.from_config(config) if config.ssync.enabled else None)

  def __call__(self, outputs: dict, active_mask: jax.Array,
               step: jax.Array | int) -> tuple[jax.Array, dict, dict]:
    batch = outputs['slots'].shape[0]
    group = min(self.contrast_group_size, batch)
    terms = {
        'loss_mse': losses.feature_mse(outputs['recon'], outputs['targets']),
        'loss_ss': losses.slot_contrast(outputs['slots'], active_mask,
                                        temperature=self.ss_temperature, group_size=group),
    }
    total = self.mse_weight * terms['loss_mse']
    if self.ssim_weight > 0:
      # The original sums in the order mse, ssim, ss; float addition is not associative.
      terms['loss_ssim'] = losses.ssim3d(outputs['recon'], outputs['targets'], self.grid)
      total = total + self.ssim_weight * terms['loss_ssim']
    total = total + self.ss_weight * terms['loss_ss']
    aux: dict = {}
    if self.ssync is not None:
      sc = self.ssync
      loss_bd, loss_in, aux = ssync.ssync_losses(
          outputs['sa_logits'], outputs['dec_alpha'], active_mask, grid=self.grid,
          tau_merge=sc.tau_merge,
          n_bd=sc.n_bd, n_noise=sc.n_noise, n_nbd=sc.n_nbd, temperature=sc.temperature,
          loss=sc.loss, group_size=group, reduction=sc.reduction)
      gate = ssync.ssync_weight(step, sc.start_step)
      terms.update(loss_bd=loss_bd, loss_in=loss_in, ssync_gate=gate,
                   boundary_fraction=aux.pop('boundary_fraction'),
                   interior_fraction=aux.pop('interior_fraction'))
      total = total + gate * (sc.bd_weight * loss_bd)
      total = total + gate * (sc.in_weight * loss_in)
    terms['loss_total'] = total
    terms = {k: (v if k == 'loss_total' else jax.lax.stop_gradient(v))
             for k, v in terms.items()}
    return total, terms, aux
