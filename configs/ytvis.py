r"""YouTube-VIS 2021: SlotCurri (default), SlotContrast, SSync, SlotCurri+SSync.

  python -m slotcurri_jax.main --config=configs/ytvis.py --workdir=$WORKDIR \
      --config.data.ytvis.manual_dir=/data/ytvis2021
  python -m slotcurri_jax.main --config=configs/ytvis.py:slotcontrast ...
  python -m slotcurri_jax.main --config=configs/ytvis.py:ssync ...

Data: the official 2021 train split (train/JPEGImages + train/instances.json) in
manual_dir; the last 300 videos are held out and the first 210 of them are scored
(quirk 11; --config.data.num_eval_videos=-1 scores all). 518 px, 37x37 patches.
Weights: DINOv2 ViT-B/14.

TPU (compiled for the slice by XLA's TPU compiler on a CPU, not run; docs/scaling.md):
  python -m slotcurri_jax.tools.aot --config=configs/ytvis.py --topology=v5e-4
Smallest slice at the paper batch: v5e-4 (4 chips, 16 clips each: 13.6 of 16 GiB per chip,
default options) for SlotCurri, and likewise SlotContrast and SlotCurri+SSync (batch 64);
SSync's batch of 128 needs v5e-8 (12.9 GiB) or 4 chips of v4-8 / v5p-8 (27.4 GiB of 32 / 95).
Every method fits v5e-8, v5p-8, v4-8 and v5p-128 with the defaults; 8 H100s (compiled, not
run): 8.6 GiB per GPU (SSync 16.7).

Expected video FG-ARI / video mBO at 518 px, whole videos (docs/method.md §13):
  slotcurri        44.8 +- 1.2 / 35.5 +- 2.2   (contrast pool 32, global batch 64)
  slotcontrast     38.0 / 33.7
  ssync            42.6 / 38.7
"""
from slotcurri_jax import config as config_lib

# Per method (docs/method.md §10.4): learning rate, global batch, clips per contrast pool.
METHODS = {
    'slotcurri': dict(learning_rate=8e-4, batch_size=64, contrast_group_size=32),
    'slotcontrast': dict(learning_rate=8e-4, batch_size=64, contrast_group_size=64),
    'ssync': dict(learning_rate=8e-4, batch_size=128, contrast_group_size=64),
    'slotcurri_ssync': dict(learning_rate=8e-4, batch_size=64, contrast_group_size=32),
}
TAU_MERGE = 0.6  # SSync's merge threshold on YouTube-VIS


def get_config(variant=None):
  c = config_lib.default_config()
  variant = config_lib.set_method(c, variant)
  c.data.name = 'ytvis'
  c.data.resolution = 518
  c.data.max_instances = 25
  c.data.flip_prob = 0.0
  c.data.shuffle_buffer = 100
  c.data.eval_batch_size = 8  # reference: 1; videos are padded in time, scores are per video
  c.data.num_eval_videos = 210  # quirk 11: the first 210 of the 300 held-out videos
  c.model.encoder.kind = 'dinov2'
  c.model.encoder.variant = 'vit_base_patch14'
  c.model.slot_dim = 64
  c.model.max_slots = 7
  c.train.steps = 100_000
  c.train.learning_rate = METHODS[variant]['learning_rate']
  c.data.batch_size = METHODS[variant]['batch_size']
  c.loss.contrast_group_size = METHODS[variant]['contrast_group_size']
  c.ssync.tau_merge = TAU_MERGE
  return c
