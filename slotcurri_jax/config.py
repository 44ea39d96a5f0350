"""The full configuration tree with its defaults.

Every key any part of slotcurri_jax reads is declared here, so a config file
only overrides values and a misspelt key (in a file or on the command line) is
an error. Config files under `configs/` start from `default_config()`.

Defaults are SlotCurri on MOVi-C (docs/method.md §10) unless a comment says
otherwise. `None` means "derived from other keys" (see `resolve`).
"""
from __future__ import annotations

import importlib.util
import pathlib

import ml_collections

from slotcurri_jax import errors


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # 'slotcontrast' or 'slotcurri'; SSync is a plug-in switched on by ssync.enabled.
  c.method = 'slotcurri'
  c.seed = 0

  # ---------------------------------------------------------------- data
  c.data = ml_collections.ConfigDict()
  # synthetic_movi | movi_c | movi_e | ytvis | video_folder (your own videos)
  c.data.name = 'movi_c'
  # TFDS directory. None: gs://kubric-public/tfds for MOVi,
  # ~/tensorflow_datasets for synthetic_movi and ytvis.
  c.data.data_dir = ml_collections.FieldReference(None, field_type=str)
  c.data.resolution = 336  # model input side (square), pixels
  c.data.train_clip_len = 4  # frames per training clip, chunks at 0, 4, ..., 20
  c.data.flip_prob = 0.5  # clip-wise horizontal flip of training clips
  c.data.shuffle_buffer = 512  # training examples the shuffle buffer holds (every dataset)
  c.data.batch_size = 128  # global training batch (all hosts together)
  c.data.eval_batch_size = 16  # global evaluation batch
  # One-hot channels of the evaluation ground truth, background included
  # (11 MOVi-C, 24 MOVi-E, 25 YT-VIS). Ids >= this are an error.
  c.data.max_instances = 11
  # The first this many videos of the evaluation split; -1: all (YT-VIS: 210, quirk 11).
  c.data.num_eval_videos = -1
  c.data.prefetch = 2  # batches prefetched to device
  # Ship uint8 frames at the stored size; resize, normalise and flip inside the jitted
  # step (data/device_preprocess.py). False: the whole transform on the host in float32.
  c.data.preprocess_on_device = True
  # Transient I/O errors (GCS "unavailable", timeouts) while reading records are retried
  # this many times in a row, after read_backoff_s, 2x, 4x, ... seconds.
  c.data.read_retries = 5
  c.data.read_backoff_s = 2.0
  c.data.synthetic = ml_collections.ConfigDict(dict(
      resolution=128,  # stored frame side of synthetic_movi
      num_frames=24,
      min_objects=3,
      max_objects=10,  # up to 23 (MOVi-E like)
      difficulty=0.5,  # 0: slow, large, flat-coloured; 1: fast, small, textured
      num_train=1000,
      num_validation=64,
      seed=0,
  ))
  c.data.ytvis = ml_collections.ConfigDict(dict(
      manual_dir='',  # folder with train/JPEGImages and train/instances.json
      num_heldout=300,  # last videos of the official train split held out
      prepass_short_side=320,
      prepass_resize='nearest_exact',  # quirk 9; 'bicubic' for the textbook pre-pass
  ))
  # Your own videos (data/video_folder.py, data/video_folder_scan.py for the layouts).
  c.data.video_folder = ml_collections.ConfigDict(dict(
      root='',  # the folder of videos (or DAVIS 2017 unpacked)
      short_side=320,  # frames are stored with this short side (uint8)
      prepass_resize='nearest_exact',  # as YouTube-VIS's pre-pass; or 'bicubic'
      segment_frames=24,  # training examples: pieces of this many frames
      max_eval_frames=112,  # longer evaluation videos are cut into pieces
      # Without a manifest or DAVIS's ImageSets: the last ceil(f * videos) are held out;
      # 0 evaluates on every video (also trained on).
      validation_fraction=0.1,
      manifest='',  # JSON {"train": [names], "validation": [names]}
      davis_resolution='480p',  # DAVIS's JPEGImages/<this>/ subfolder
      on_bad_video='refuse',  # an unreadable, empty or too short video: 'refuse' | 'skip'
      rebuild=False,  # True: rebuild when the folder changed since its build
  ))

  # ---------------------------------------------------------------- model
  c.model = ml_collections.ConfigDict()
  c.model.encoder = ml_collections.ConfigDict(dict(
      # 'dinov2' (frozen ViT) | 'cnn' (trainable, patch-pixel target) | 'tokens'
      kind='dinov2',
      variant='vit_small_patch14',  # | 'vit_base_patch14'
      weights='',  # path to timm/HF/our-format weights; '' -> default cache path
      random_init=False,  # explicit opt-in to a random backbone (tests, benchmarks)
      dtype='float32',  # backbone compute dtype: 'float32' | 'bfloat16'
      # CNN encoder of the offline demo
      cnn_patch_size=8,  # pixels per patch side; target = patch pixels (p*p*3)
      cnn_features=64,
      # kind='tokens': precomputed backbone tokens in batch['features'] [B, T, G*G, D]
      token_dim=0,  # D
      token_grid=0,  # G
  ))
  c.model.slot_dim = 64
  c.model.max_slots = 11
  c.model.feature_mlp_hidden = ml_collections.FieldReference(None, field_type=int)
  c.model.slot_attention = ml_collections.ConfigDict(dict(
      iters_first=3, iters=2, eps=1e-8,
      gru_hidden='normed',  # quirk 2; 'raw' for textbook slot attention
  ))
  c.model.predictor = ml_collections.ConfigDict(dict(
      num_blocks=1, num_heads=4, mlp_ratio=4,
      logit_scale='reference',  # quirk 1: logits * sqrt(d_head); 'standard' divides
  ))
  # pos_init: 'normal' is the reference's N(0, 1/D_s); 'sincos' starts the (still learned)
  # position embedding from 2-D sine-cosine features, a head start for pixel targets.
  # remat: recompute the decoder MLP's activations in the backward pass (less memory).
  c.model.decoder = ml_collections.ConfigDict(dict(hidden=(1024, 1024, 1024), pos_init='normal',
                                                  remat=False))
  # ((regex, gain), ...): multiply the initial values of the matching params ('/'-joined
  # paths such as 'decoder/mlp/dense_0/kernel'). () keeps the reference's PyTorch init.
  c.model.init_gains = ()
  c.model.compute_dtype = 'float32'  # trainable model: 'float32' | 'bfloat16'

  # ---------------------------------------------------------------- losses
  c.loss = ml_collections.ConfigDict(dict(
      mse_weight=1.0,
      ss_weight=0.5,
      ss_temperature=0.1,
      ssim_weight=0.05,  # 0 for SlotContrast
      contrast_group_size=64,  # quirk 10: clips per contrastive pool
  ))

  # ---------------------------------------------------------------- curriculum
  c.curriculum = ml_collections.ConfigDict(dict(
      enabled=True,
      # Explicit schedule: a list of (step, num_slots) with step 0 first. Empty:
      # [(0, 2), (floor(0.1 s_max), floor(K/2)), (floor(0.25 s_max), K)].
      schedule=(),
      stage_fractions=(0.1, 0.25),
      first_num_slots=2,
      spawn='perturb',  # 'perturb' (SlotCurri) | 'none' (simple curriculum ablation)
      spawn_scale=0.2,  # lambda
      neighbor='cosine_all',  # quirk 4; 'euclidean_active' for the paper's wording
      norm_rows='all',  # quirk 5; 'active'
      boundary_uses_old_count=True,  # quirk 6
      error_window=1,  # steps of slot-wise error averaged before a stage change
  ))

  # ---------------------------------------------------------------- SSync
  c.ssync = ml_collections.ConfigDict(dict(
      enabled=False,
      tau_merge=0.7,
      n_bd=1, n_noise=1, n_nbd=1,
      temperature=1.0,
      start_fraction=0.3,  # losses switch on at floor(start_fraction * s_max)
      total_steps=ml_collections.FieldReference(None, field_type=int),  # s_max; None: train.steps
      bd_weight=1.0,
      in_weight=1.0,
      loss='brier',  # quirk 12; 'ce'
      reduction='group',  # quirk 13: mean per contrast group, then over groups; 'global'
  ))

  # ---------------------------------------------------------------- training
  c.train = ml_collections.ConfigDict(dict(
      steps=100_000,
      learning_rate=8e-4,
      warmup_steps=2500,
      decay_end_factor=0.5,  # exponential decay to this fraction at train.steps
      clip_norm=0.05,
      log_every_steps=50,
      eval_every_steps=2500,
      checkpoint_every_steps=1000,
      keep_checkpoints=3,
      image_summaries=4,  # clips shown in mask summaries
      # Compute only the active slots of each curriculum stage: one compilation per
      # stage instead of one per run; same losses, less work in the early stages.
      active_slots_only=False,
  ))

  # ---------------------------------------------------------------- evaluation
  c.eval = ml_collections.ConfigDict(dict(
      rollout='cyclic',  # 'cyclic' (SlotCurri) | 'forward' (SlotContrast, SSync)
      all_slots=True,  # quirk 7: evaluate with all max_slots rows in every stage
      ignore_background=True,
      steps=-1,  # evaluation batches in periodic evaluation; -1: whole split
  ))

  # ---------------------------------------------------------------- parallelism
  c.mesh = ml_collections.ConfigDict(dict(
      data=-1,  # devices on the data axis; -1: all devices / fsdp
      fsdp=1,
      # (regex over '/'-joined param paths, PartitionSpec axes tuple); first match wins
      param_rules=(),
      # True: params no rule matches are split over 'fsdp' too, every param of 2 or more
      # dimensions on its largest dimension that mesh.fsdp divides (with their moments).
      fsdp_all_params=False,
  ))
  c.distributed = ml_collections.ConfigDict(dict(
      coordinator_address='', num_processes=-1, process_id=-1,
  ))
  return c


VARIANTS = ('slotcurri', 'slotcontrast', 'ssync', 'slotcurri_ssync')

# Keys that were removed, each with the key that now holds its fact (one key per fact).
REMOVED_KEYS = {
    'data.ytvis.shuffle_buffer': 'data.shuffle_buffer',
    'eval.ytvis_num_videos': 'data.num_eval_videos',
}


def removed_key_error(key: str) -> str:
  """The one-line message for a removed config key."""
  return (f'config key {key} was removed: use {REMOVED_KEYS[key]} '
          '(every key is declared in slotcurri_jax/config.py)')


def removed_in_overrides(argv) -> str | None:
  """The message for the first removed key among --config.KEY=VALUE overrides, else None."""
  for arg in argv:
    key = arg.lstrip('-').partition('=')[0]
    if key.startswith('config.') and key[len('config.'):] in REMOVED_KEYS:
      return removed_key_error(key[len('config.'):])
  return None


def check_removed(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`c`, unless a config file set a removed key: then a user error naming its replacement."""
  flat = {k for k, _ in _flat_items(c)}
  for key in REMOVED_KEYS:
    if key in flat:
      raise errors.UserError(removed_key_error(key))
  return c


def _flat_items(c, prefix: str = ''):
  """('a.b.c', value) for every leaf of a ConfigDict."""
  for k, v in c.items():
    if isinstance(v, ml_collections.ConfigDict):
      yield from _flat_items(v, f'{prefix}{k}.')
    else:
      yield f'{prefix}{k}', v


def load(spec: str) -> ml_collections.ConfigDict:
  """'configs/movi_c.py' or 'configs/movi_c.py:slotcontrast' -> that file's get_config(variant).

  The one loader of config files outside the command line (where ml_collections'
  config_flags reads the same `file[:variant]` form)."""
  file, _, variant = str(spec).partition(':')
  if not pathlib.Path(file).is_file():
    raise FileNotFoundError(f'config file {file!r} not found (give a path such as '
                            'configs/movi_c.py[:variant])')
  module_spec = importlib.util.spec_from_file_location(pathlib.Path(file).stem + '_config', file)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return check_removed(module.get_config(variant or None))


def set_method(c: ml_collections.ConfigDict, variant: str | None) -> str:
  """Switch `c` to a method: which parts exist, not their numbers (docs/method.md §10.4).

  variant: 'slotcurri' (default) | 'slotcontrast' | 'ssync' (SSync on SlotContrast) |
  'slotcurri_ssync'. Sets method, curriculum.enabled, loss.ssim_weight (0.05 or 0),
  eval.rollout (cyclic for SlotCurri) and ssync.enabled, and returns the variant. The
  per-dataset numbers (learning rate, batch, contrast pool, tau_merge) are plain values
  in each configs/<dataset>.py, set after this call; nothing here overwrites them.
  """
  variant = variant or 'slotcurri'
  if variant not in VARIANTS:
    raise ValueError(f'unknown variant {variant!r}; choose one of {VARIANTS}')
  curri = variant.startswith('slotcurri')
  c.method = 'slotcurri' if curri else 'slotcontrast'
  c.curriculum.enabled = curri
  c.loss.ssim_weight = 0.05 if curri else 0.0
  c.eval.rollout = 'cyclic' if curri else 'forward'
  c.ssync.enabled = variant.endswith('ssync')
  return variant
