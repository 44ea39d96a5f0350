"""The config check shared by resume, evaluation and inference (slotcurri_jax/compat.py)."""
import json

from slotcurri_jax import compat
from slotcurri_jax import config as config_lib


def _saved(config) -> dict:
  return json.loads(config.to_json_best_effort())


def test_a_longer_run_with_the_saved_schedule_is_accepted():
  trained = config_lib.default_config()
  trained.train.steps = 1000
  saved, schedule = _saved(trained), compat.resolved_schedule(trained)
  longer = config_lib.default_config()
  longer.train.steps = 3000  # the default schedule would move with train.steps
  diffs = compat.incompatibilities(saved, longer, saved_schedule=schedule)
  assert len(diffs) == 1 and diffs[0].startswith('curriculum schedule (from train.steps=1000)')
  # The advice it gives can be followed: the saved schedule, given explicitly, is accepted.
  assert f'config.curriculum.schedule={schedule}' in diffs[0]
  longer.curriculum.schedule = tuple(tuple(s) for s in schedule)
  assert compat.incompatibilities(saved, longer, saved_schedule=schedule) == []
  # A schedule that differs is still refused, key by key.
  longer.curriculum.schedule = ((0, 3),)
  assert any(d.startswith('curriculum.schedule:')
             for d in compat.incompatibilities(saved, longer, saved_schedule=schedule))


def test_the_checkpoints_config_keeps_this_machines_paths_and_names_what_it_replaced(caplog):
  trained = config_lib.default_config()
  trained.data.video_folder.root = '/training/machine/videos'
  trained.eval.rollout = 'cyclic'
  here = config_lib.default_config()
  here.data.video_folder.root = '/here/videos'
  here.eval.rollout = 'forward'
  here.loss.ssim_weight = 0.0
  used = compat.config_for_checkpoint(here, 'ckpt', 6, _saved(trained), None, use_saved=True)
  assert used.data.video_folder.root == '/here/videos'
  assert used.eval.rollout == 'cyclic' and used.loss.ssim_weight == trained.loss.ssim_weight
  assert 'differs in loss.ssim_weight (also taken from the checkpoint: eval.rollout)' in caplog.text
