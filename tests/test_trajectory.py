"""Whole training runs of the original code, replayed through the train step that trains.

fixtures/trajectory/*.npz (fixtures/README.md) record S updates of the original: the
replay (tools/trajectory.py) builds the run from each file's config the way main does and
compares every quantity of the fixture's tolerance table, per step. The mutation tests
change one rule of the training loop and check that the replay notices.
"""
import json

import jax
import numpy as np
import pytest

from slotcurri_jax import train
from slotcurri_jax import train_state
from slotcurri_jax.tools import check_fixture
from slotcurri_jax.tools import import_reference
from slotcurri_jax.tools import trajectory

FILES = ('train_trajectory.npz', 'ssync_trajectory.npz')


def _load(trajectory_dir, name):
  with np.load(trajectory_dir / name, allow_pickle=False) as z:
    return check_fixture._Loaded(z)


def _records(data, config=None, train_step='padded'):
  return {r['output']: r for r in trajectory.check_trajectory(None, data, config, train_step)}


# The active-slots-only step of the SSync file is its padded step: no curriculum, so one
# stage with all max_slots rows, which train.stage_train_steps serves with the padded
# program (checked below). The SlotCurri file replays both. Its active-slots-only replay
# shares the stage K = max_slots with the padded replay (the persistent compilation
# cache), but compiles the K = 2 and K = 3 steps: 43 s of CPU with a cold cache, so it is
# marked slow; the default suite ties that step to the padded one on tiny_config
# (tests/test_train.py, test_active_slots_only_gives_the_padded_losses...).
@pytest.mark.parametrize('name,train_step', [
    (FILES[0], 'padded'),
    pytest.param(FILES[0], 'active_slots_only', marks=pytest.mark.slow),
    (FILES[1], 'padded')])
def test_replay_matches_the_original_run(trajectory_dir, name, train_step):
  data = _load(trajectory_dir, name)
  records = _records(data, train_step=train_step)
  failed = {k: r for k, r in records.items() if not r['ok']}
  assert not failed, failed
  steps = data['out/step/loss_total'].shape[0]
  # Every per-step quantity of the table was compared, over every step.
  expected = {'step/loss_total', 'step/loss_mse', 'step/loss_ss', 'step/grad_norm', 'step/lr',
              'step/num_active', 'step/clipped', 'step/update_norm[0]', 'step/update_norm',
              'step/param_norm_after'}
  if name.startswith('ssync'):
    expected |= {'step/loss_bd', 'step/loss_in', 'step/ssync_on',
                 'step/labels_enc_merged (patches differing)'}
  else:
    expected |= {'step/loss_ssim', 'capture1/slot_error', 'capture2/slot_error',
                 'spawn1/counts', 'spawn2/counts', 'spawn1/P_after', 'spawn2/P_after',
                 'curriculum/spawn_steps'}
  assert expected <= set(records), expected - set(records)
  assert any(k.startswith('final/') for k in records)
  assert records['step/loss_total']['worst_step'] < steps


def _config(data):
  return trajectory.trajectory_config(json.loads(str(data['config'])))


def test_ssync_file_replays_the_padded_program_in_both_train_steps(trajectory_dir, monkeypatch):
  config = _config(_load(trajectory_dir, 'ssync_trajectory.npz'))
  config.train.active_slots_only = True
  built = []  # num_slots of every train step that stage_train_steps builds
  monkeypatch.setattr(train, 'jit_train_step',
                      lambda *args, num_slots=None, **kw: built.append(num_slots) or object())
  step_for = train.stage_train_steps(train.Run.from_config(config), None, None)
  used = {id(step_for(s)) for s in range(config.train.steps)}
  assert built == [None] and len(used) == 1  # the padded program (num_slots None) only


def test_new_count_on_the_boundary_step_is_caught(trajectory_dir):
  data = _load(trajectory_dir, 'train_trajectory.npz')
  config = _config(data)
  config.curriculum.boundary_uses_old_count = False  # '<' instead of '<=' at s_j
  records = _records(data, config)
  assert not records['step/num_active']['ok']
  first_boundary = int(data['spawn1/step'])
  assert records['step/num_active']['worst_step'] == first_boundary
  assert not records['step/loss_total']['ok']


def test_learning_rate_one_step_late_is_caught(trajectory_dir, monkeypatch):
  data = _load(trajectory_dir, 'ssync_trajectory.npz')
  schedule = train_state.learning_rate_schedule
  monkeypatch.setattr(train_state, 'learning_rate_schedule',
                      lambda tc: (lambda step: schedule(tc)(step + 1)))
  records = _records(data)
  assert not records['step/lr']['ok'] and records['step/lr']['worst_step'] == 0
  assert not records['step/loss_total']['ok']


def test_ssync_switch_one_step_early_is_caught(trajectory_dir):
  data = _load(trajectory_dir, 'ssync_trajectory.npz')
  config = _config(data)
  switch = int(np.argmax(data['out/step/ssync_on']))
  config.ssync.start_fraction = (switch - 1) / config.train.steps
  records = _records(data, config)
  assert not records['step/ssync_on']['ok']
  assert records['step/ssync_on']['worst_step'] == switch - 1
  assert not records['step/loss_total']['ok']


def test_check_fixture_finds_every_fixture_in_the_repository():
  """`check_fixture` without arguments checks fixtures/reference and fixtures/trajectory
  (the single-step files are run through the CLI in test_golden_slot_model.py, the
  trajectories through the same check_trajectory above)."""
  files = check_fixture.all_fixture_files()
  kinds = {}
  for path in files:
    with np.load(path, allow_pickle=False) as z:
      kinds[path.name] = check_fixture.detect_kind(check_fixture._Loaded(z))
  assert kinds == {'dinov2_vit.npz': 'dinov2_vit', 'metrics.npz': 'metrics',
                   'slot_model.npz': 'slot_model', 'spawn.npz': 'spawn', 'ssync.npz': 'ssync',
                   'ssync_merge.npz': 'ssync_merge', 'resize.npz': 'resize',
                   'train_trajectory.npz': 'slotcurri_trajectory',
                   'ssync_trajectory.npz': 'ssync_trajectory'}


def _write(tmp_path, name, arrays):
  path = tmp_path / name
  np.savez(path, **arrays)
  return str(path)


def test_check_fixture_bad_input_gets_one_line(trajectory_dir, tmp_path, capsys):
  data = _load(trajectory_dir, 'ssync_trajectory.npz')
  arrays = {k: data[k] for k in data.files}
  unknown = _write(tmp_path, 'unknown.npz', {'something': np.zeros(3)})
  missing = _write(tmp_path, 'missing.npz',
                   {k: v for k, v in arrays.items() if k != 'in/batch_index'})
  shape = _write(tmp_path, 'shape.npz', dict(arrays, **{'in/X_pool': arrays['in/X_pool'][..., :5]}))
  cfg = json.loads(str(arrays['config']))
  cfg['sizes']['grid'] = [6, 5]
  sizes = _write(tmp_path, 'sizes.npz', dict(arrays, config=np.asarray(json.dumps(cfg))))
  not_npz = tmp_path / 'notes.npz'
  not_npz.write_text('not an archive')
  for path, words in ((unknown, 'unknown fixture kind'), (missing, 'in/batch_index'),
                      (shape, 'in/X_pool has shape'), (sizes, 'not a square grid'),
                      (str(not_npz), 'not a readable .npz')):
    assert check_fixture.main([path]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f'check_fixture: {path}: ') and words in err[0], err


def test_drift_report_measures_what_it_is_given(trajectory_dir, monkeypatch, tmp_path, capsys):
  """The drift report's arithmetic and printout, without a replay: a 'replay' whose
  losses are the fixture's times 1.001 and whose final params are its times 1.002."""
  path = trajectory_dir / 'ssync_trajectory.npz'
  data = _load(trajectory_dir, 'ssync_trajectory.npz')
  config = _config(data)
  final = {k[len('final/'):]: data[k] for k in data.files if k.startswith('final/')}
  params = import_reference.state_dict_to_params(final, config)
  got = {name: data[f'out/step/{name}'].astype(np.float64) * 1.001 for name in trajectory.DRIFT_TERMS
         if f'out/step/{name}' in data.files}
  got.update(params_after={29: jax.tree.map(lambda x: np.asarray(x) * 1.002, params)},
             config=config)
  monkeypatch.setattr(trajectory, 'replay', lambda *args: got)
  out_json = tmp_path / 'drift.json'
  assert trajectory.main([str(path), '--dtype=bfloat16', f'--json={out_json}']) == 0
  result = json.loads(out_json.read_text())[str(path)]
  assert set(result['per_step']) == {'loss_total', 'loss_mse', 'loss_ss', 'loss_bd', 'loss_in',
                                     'grad_norm'}
  for quantity in result['per_step'].values():
    np.testing.assert_allclose(quantity['rel'], 1e-3, rtol=1e-6)
  # float32 params: 1.002 x is rounded to within 6e-8 relative of each value.
  np.testing.assert_allclose(list(result['final_params'].values()), 2e-3, rtol=1e-4)
  printed = capsys.readouterr().out.splitlines()
  assert printed[0].startswith(f'{path}: padded train step, bfloat16 compute, 30 updates')
  assert len(printed) == 2 + 30 + 4 + 2  # title, header, 30 updates, 4 summaries, 2 notes
  assert printed[-1].startswith('final params, relative L2 per tensor (45 tensors): max 2.00e-03')
