r"""MOVi-E: SlotCurri (default), SlotContrast, SSync, SlotCurri+SSync.

  python -m slotcurri_jax.main --config=configs/movi_e.py --workdir=$WORKDIR
  python -m slotcurri_jax.main --config=configs/movi_e.py:slotcontrast --workdir=$WORKDIR
  python -m slotcurri_jax.main --config=configs/movi_e.py:ssync --workdir=$WORKDIR
  python -m slotcurri_jax.main --config=configs/movi_e.py:slotcurri_ssync --workdir=$WORKDIR

Data: movi_e/128x128:1.0.0 under config.data.data_dir (default gs://kubric-public/tfds).
Weights: DINOv2 ViT-B/14. 300k steps; curriculum 2 -> 7 -> 15 at 30k / 75k; SSync from 90k.

TPU (compiled for the slice by XLA's TPU compiler on a CPU, not run; docs/scaling.md):
  python -m slotcurri_jax.tools.aot --config=configs/movi_e.py --topology=v5e-8
Smallest slices at the paper batch with the default options: v5e-8 (8 chips, 16 clips each:
11.8 of 16 GiB per chip), or 4 chips of v4-8 / v5p-8 (32 clips: 23.2 GiB of 32 / 95). On
v5e-4 the train step needs at least 17.8 GiB of 16; the check names the cheapest options that fit
there: --config.model.decoder.remat=True with bfloat16 (--config.model.compute_dtype=bfloat16
--config.model.encoder.dtype=bfloat16): 11.75 GiB, 1.14x the FLOPs. Every method fits v5e-8,
v5p-8, v4-8 and v5p-128 with the defaults; 8 H100s (compiled, not run): 14.5 GiB per GPU.

Expected video FG-ARI / video mBO on the 250 validation videos at 336 px (docs/method.md §13):
  slotcurri        83.7 +- 0.2 / 28.9
  slotcontrast     82.9 / 29.2
  ssync            84.0 / 34.8
"""
from slotcurri_jax import config as config_lib

# Per method (docs/method.md §10.4): learning rate, global batch, clips per contrast pool.
METHODS = {
    'slotcurri': dict(learning_rate=8e-4, batch_size=128, contrast_group_size=64),
    'slotcontrast': dict(learning_rate=4e-4, batch_size=64, contrast_group_size=64),
    'ssync': dict(learning_rate=8e-4, batch_size=128, contrast_group_size=64),
    'slotcurri_ssync': dict(learning_rate=8e-4, batch_size=128, contrast_group_size=64),
}
TAU_MERGE = 0.65  # SSync's merge threshold on MOVi-E


def get_config(variant=None):
  c = config_lib.default_config()
  variant = config_lib.set_method(c, variant)
  c.data.name = 'movi_e'
  c.data.resolution = 336
  c.data.max_instances = 24
  c.data.eval_batch_size = 8  # reference: 4; any size gives the same per-video scores
  c.model.encoder.kind = 'dinov2'
  c.model.encoder.variant = 'vit_base_patch14'
  c.model.slot_dim = 128
  c.model.max_slots = 15
  c.train.steps = 300_000
  c.train.learning_rate = METHODS[variant]['learning_rate']
  c.data.batch_size = METHODS[variant]['batch_size']
  c.loss.contrast_group_size = METHODS[variant]['contrast_group_size']
  c.ssync.tau_merge = TAU_MERGE
  return c
