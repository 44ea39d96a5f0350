r"""The offline demo: synthetic MOVi-like videos, a small CNN encoder, 2 CPU cores.

  python -m slotcurri_jax.main --config=configs/demo.py --workdir=/tmp/slotcurri_demo
  python -m slotcurri_jax.main --config=configs/demo.py:slotcontrast --workdir=/tmp/demo_sc
  python -m slotcurri_jax.main --config=configs/demo.py:ssync --workdir=/tmp/demo_ssync
  python -m slotcurri_jax.main --config=configs/demo.py --config.seed=1 --workdir=/tmp/demo_s1

Generates `synthetic_movi` (64x64, 24 frames, 3-6 objects) into
~/tensorflow_datasets on first use, trains 1200 steps with a progress bar, then
evaluates the 64 validation videos and writes eval/metrics_latest.json, TensorBoard
logs, checkpoints and mask figures into the workdir (18-30 minutes on our 2 CPU cores
while a second run shared them, 10 minutes alone; 1.9-2.3 GB peak RSS). The CNN's
reconstruction target is the frame's 8x8 patch pixels (an 8x8 grid, D_f = 192), so the
slot stack is the papers' at a small size: D_s 64, 7 slots, decoder 256x3.

Measured over seeds 0, 1, 2 (mean +- sample std; video FG-ARI / video mBO x 100,
fragmentation; README "Results", made by `python -m slotcurri_jax.tools.summarize`):
  slotcurri (default)  22.2 +- 2.2 / 14.2 +- 1.1, 0.049   (cyclic rollout)
  slotcontrast         20.9 +- 1.5 / 13.4 +- 0.8, 0.024   (forward rollout)
  ssync (tau 0.7)      19.2 +- 2.3 /  9.5 +- 1.2, 0.010
  slotcurri_ssync      10.0 +- 7.1 /  7.9 +- 1.9, 0.022   (seed 1 collapses: 1.9 / 6.1)
The seed-to-seed spread is larger than the gap between slotcurri and slotcontrast.
The papers' numbers are for DINOv2 features on MOVi (configs/movi_c.py), not this demo.
"""
from slotcurri_jax import config as config_lib


def get_config(variant=None):
  c = config_lib.default_config()
  config_lib.set_method(c, variant)
  c.data.name = 'synthetic_movi'
  c.data.resolution = 64
  c.data.batch_size = 16
  c.data.eval_batch_size = 16
  c.data.max_instances = 11
  c.data.shuffle_buffer = 256
  c.data.synthetic.resolution = 64
  c.data.synthetic.min_objects = 3
  c.data.synthetic.max_objects = 6
  c.data.synthetic.num_train = 1000
  c.data.synthetic.num_validation = 64
  c.model.encoder.kind = 'cnn'
  c.model.encoder.cnn_patch_size = 8
  c.model.encoder.cnn_features = 64
  c.model.slot_dim = 64
  c.model.max_slots = 7
  c.model.decoder.hidden = (256, 256, 256)
  # A head start out of the symmetric start, where every slot decodes the mean frame: with
  # pixel targets and the PyTorch init the decoder's alpha masks stay uniform for well over
  # 1000 steps. Sine-cosine positions and larger initial decoder and q/k weights (He-like
  # gain sqrt(6) over torch's U(+-1/sqrt(fan_in))) let slots split the frame within ~300 steps.
  c.model.decoder.pos_init = 'sincos'
  c.model.init_gains = (('decoder/mlp/.*/kernel', 6 ** 0.5), ('corrector/to_[qk]/kernel', 6 ** 0.5))
  c.loss.contrast_group_size = 16
  c.train.steps = 1200
  c.train.learning_rate = 8e-4
  c.train.warmup_steps = 150
  c.train.active_slots_only = True  # 2 and 3 slots computed in the first stages
  c.train.log_every_steps = 50
  c.train.eval_every_steps = 0  # evaluate once, at the end
  c.train.checkpoint_every_steps = 400
  c.ssync.tau_merge = 0.7
  # Every demo variant keeps this lr and batch: the same budget for a fair comparison.
  return c
