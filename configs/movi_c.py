r"""MOVi-C: SlotCurri (default), SlotContrast, SSync, SlotCurri+SSync.

  python -m slotcurri_jax.main --config=configs/movi_c.py --workdir=$WORKDIR
  python -m slotcurri_jax.main --config=configs/movi_c.py:slotcontrast --workdir=$WORKDIR
  python -m slotcurri_jax.main --config=configs/movi_c.py:ssync --workdir=$WORKDIR
  python -m slotcurri_jax.main --config=configs/movi_c.py:slotcurri_ssync --workdir=$WORKDIR

Data: movi_c/128x128:1.0.0 under config.data.data_dir (default gs://kubric-public/tfds).
Weights: DINOv2 ViT-S/14 (see README, "Weights").

TPU (compiled for the slice by XLA's TPU compiler on a CPU, not run; docs/scaling.md):
  python -m slotcurri_jax.tools.aot --config=configs/movi_c.py --topology=v5e-4
Smallest slice at the paper batch: v5e-4 (4 chips, 32 clips each: 13.3 of 16 GiB per chip,
default options). Every method fits v5e-8, v5p-8, v4-8 and v5p-128 with the defaults
(SlotCurri, SSync, SlotCurri+SSync 6.8 / 13.4 / 13.4 / 1.0 GiB per chip; SlotContrast's batch
of 64 about half). 8 H100s (compiled, not run): 9.5 GiB per GPU.

Expected video FG-ARI / video mBO on the 250 validation videos at 336 px (docs/method.md §13):
  slotcurri        77.6 +- 0.9 / 32.8   (cyclic rollout)
  slotcontrast     69.3 / 32.7          (forward rollout)
  ssync            79.4 / 39.5          (forward rollout)
  slotcurri_ssync  not published
"""
from slotcurri_jax import config as config_lib

# Per method (docs/method.md §10.4): learning rate, global batch, clips per contrast pool.
METHODS = {
    'slotcurri': dict(learning_rate=8e-4, batch_size=128, contrast_group_size=64),
    'slotcontrast': dict(learning_rate=4e-4, batch_size=64, contrast_group_size=64),
    'ssync': dict(learning_rate=8e-4, batch_size=128, contrast_group_size=64),
    'slotcurri_ssync': dict(learning_rate=8e-4, batch_size=128, contrast_group_size=64),
}
TAU_MERGE = 0.7  # SSync's merge threshold on MOVi-C


def get_config(variant=None):
  c = config_lib.default_config()
  variant = config_lib.set_method(c, variant)
  c.data.name = 'movi_c'
  c.data.resolution = 336
  c.data.max_instances = 11
  c.data.eval_batch_size = 16
  c.model.encoder.kind = 'dinov2'
  c.model.encoder.variant = 'vit_small_patch14'
  c.model.slot_dim = 64
  c.model.max_slots = 11
  c.train.steps = 100_000
  c.train.learning_rate = METHODS[variant]['learning_rate']
  c.data.batch_size = METHODS[variant]['batch_size']
  c.loss.contrast_group_size = METHODS[variant]['contrast_group_size']
  c.ssync.tau_merge = TAU_MERGE
  return c
