"""Checkpoint paths that are not checkpoints, unreadable newest checkpoints, and workdirs
of another method or of settings that change what the params mean."""
import json
import os
import shutil

import numpy as np
import pytest

from cli_helpers import error_lines, run_main, snapshot, tiny_data_dir  # noqa: F401  (a fixture)

from slotcurri_jax import checkpoint as checkpoint_lib

TINY = '--config=tests/tiny_cli_config.py'


@pytest.fixture(scope='module')
def trained(tmp_path_factory, tiny_data_dir):
  """A workdir of 6 tiny training steps (checkpoints 3 and 6); copy it before changing it."""
  import tiny_cli_config  # pylint: disable=import-outside-toplevel
  from slotcurri_jax import train  # pylint: disable=import-outside-toplevel
  workdir = tmp_path_factory.mktemp('trained') / 'w'
  config = tiny_cli_config.get_config()
  config.data.data_dir = str(tiny_data_dir)
  train.train_and_evaluate(config, str(workdir), evaluate_at_end=False)
  assert sorted(p.name for p in (workdir / 'checkpoints').iterdir()) == ['3', '6']
  return workdir


def _truncate_data(step_dir):
  for f in (step_dir / 'state').rglob('*'):
    if f.is_file() and f.parent.name == 'd':
      with open(f, 'r+b') as handle:
        handle.truncate(10)


def test_a_file_or_empty_folder_is_not_a_checkpoint(capsys, tmp_path, tiny_data_dir):
  junk = tmp_path / 'random.bin'
  junk.write_bytes(np.random.default_rng(0).bytes(1000))
  (tmp_path / 'empty').mkdir()
  for path, expected in ((junk, f'error: {junk} is not a checkpoint: it is a file without the '
                                '.npz/.msgpack suffix. --checkpoint takes a training workdir'),
                         (tmp_path / 'empty', f'error: no checkpoint step under {tmp_path}/empty. '
                                              '--checkpoint takes a training workdir')):
    status, _, err = run_main(capsys, TINY, f'--workdir={tmp_path}/out', '--mode=eval',
                              f'--checkpoint={path}', f'--config.data.data_dir={tiny_data_dir}')
    assert status == 1 and 'Traceback' not in err
    assert error_lines(err)[0].startswith(expected)
  assert not (tmp_path / 'out').exists()


def test_unreadable_newest_checkpoint_is_skipped(capsys, tmp_path, trained, tiny_data_dir):
  workdir = tmp_path / 'w'
  shutil.copytree(trained, workdir)
  _truncate_data(workdir / 'checkpoints' / '6')
  # Evaluation reads the newest intact step, params only.
  status, out, err = run_main(capsys, TINY, f'--workdir={tmp_path}/eval', '--mode=eval',
                              f'--checkpoint={workdir}', f'--config.data.data_dir={tiny_data_dir}')
  assert status == 0, err
  assert f'checkpoint {workdir}/checkpoints/6 is unreadable (' in err
  assert f'using {workdir}/checkpoints/3, the newest intact checkpoint' in err
  assert '"step": 3' in (tmp_path / 'eval' / 'eval' / 'metrics_latest.json').read_text()
  params = checkpoint_lib.load_params(str(workdir / 'checkpoints' / '3'))
  assert set(params) >= {'decoder', 'encoder'} and 'opt_state' not in params
  # Training moves the unreadable step aside and resumes from the newest intact one.
  status, _, err = run_main(capsys, TINY, f'--workdir={workdir}', '--mode=train',
                            f'--config.data.data_dir={tiny_data_dir}')
  assert status == 0, err
  assert f'checkpoint {workdir}/checkpoints/6 is unreadable' in err
  assert 'resuming from step 3, the newest intact checkpoint' in err
  assert f'moved the unreadable checkpoint step 6 to {workdir}/checkpoints_unreadable/6' in err
  assert sorted(p.name for p in (workdir / 'checkpoints').iterdir()) == ['3', '6']
  assert checkpoint_lib.load_params(str(workdir)) is not None  # the new step 6 reads


@pytest.mark.parametrize('override, expected', [
    ('--config=tests/tiny_cli_config.py:slotcontrast', "method: saved 'slotcurri', now 'slotcontrast'"),
    ('--config.loss.ssim_weight=0.1', 'loss.ssim_weight: saved 0.05, now 0.1'),
    ('--config.model.slot_dim=8', 'param shapes: '),
])
def test_workdir_of_another_method_is_refused_and_unchanged(capsys, tmp_path, trained,
                                                            tiny_data_dir, override, expected):
  workdir = tmp_path / 'w'
  shutil.copytree(trained, workdir)
  before = snapshot(workdir)
  config = (override,) if override.startswith('--config=') else (TINY, override)
  status, _, err = run_main(capsys, *config, f'--workdir={workdir}', '--mode=train',
                            '--config.train.steps=8', f'--config.data.data_dir={tiny_data_dir}')
  assert status == 1 and 'Traceback' not in err
  message = error_lines(err)
  assert message[0] == (f'error: workdir {workdir} holds a checkpoint (step 6) of another method '
                        'or of settings that change what its params mean:')
  assert any(l.strip().startswith(expected) for l in message), message
  assert message[-1].endswith('nothing in the workdir was changed.')
  assert snapshot(workdir) == before


def test_a_checkpoint_of_another_version_is_named_not_moved(tmp_path):
  """A train state with other top-level fields (an older version's active_mask and stage)
  is refused as such; the checkpoint stays where it is."""
  import jax.numpy as jnp
  import orbax.checkpoint as ocp
  from conftest import tiny_config
  from slotcurri_jax import checkpoint as checkpoint_lib
  from slotcurri_jax import errors
  old = {'step': jnp.int32(3), 'params': {'w': jnp.ones(2)}, 'opt_state': {'mu': jnp.zeros(2)},
         'active_mask': jnp.ones(5, bool), 'stage': jnp.int32(1), 'slot_error': jnp.zeros((1, 5)),
         'rng': jnp.zeros(2, jnp.uint32)}
  manager = ocp.CheckpointManager(tmp_path / 'checkpoints')
  manager.save(3, args=ocp.args.Composite(state=ocp.args.StandardSave(old)))
  manager.wait_until_finished()
  manager.close()
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path), tiny_config())
  with pytest.raises(errors.UserError, match='another version of slotcurri_jax'):
    ckpt.restore(old)
  ckpt.close()
  assert (tmp_path / 'checkpoints' / '3').is_dir()
  assert not (tmp_path / 'checkpoints_unreadable').exists()


def test_eval_reads_the_checkpoints_config_and_step(capsys, tmp_path, trained, tiny_data_dir):
  """A SlotCurri checkpoint evaluated under :slotcontrast is refused with the differing
  keys; --use_checkpoint_config evaluates it as SlotCurri. The step is the saved state's,
  not the folder's name (a copied step folder)."""
  renamed = tmp_path / 'my_copy'
  shutil.copytree(trained / 'checkpoints' / '6', renamed)
  args = ('--config=tests/tiny_cli_config.py:slotcontrast', f'--workdir={tmp_path}/eval',
          '--mode=eval', f'--checkpoint={renamed}', f'--config.data.data_dir={tiny_data_dir}')
  status, _, err = run_main(capsys, *args)
  assert status == 1 and 'Traceback' not in err
  message = error_lines(err)
  assert message[0] == (f'error: checkpoint {renamed} (step 6) is of another method or of '
                        'settings that change what its params mean:')
  assert "  method: saved 'slotcurri', now 'slotcontrast'" in message
  assert message[-1].endswith("or --use_checkpoint_config to use the checkpoint's own config.")
  assert not (tmp_path / 'eval').exists()
  status, _, err = run_main(capsys, *args, '--use_checkpoint_config')
  assert status == 0, err
  assert (f'using the config saved with checkpoint {renamed} (step 6), not --config, which '
          'differs in curriculum.enabled, loss.ssim_weight, method') in err
  settings = json.loads((tmp_path / 'eval' / 'eval' / 'metrics_latest.json').read_text())['settings']
  assert (settings['step'], settings['method'], settings['rollout']) == (6, 'slotcurri', 'cyclic')
  assert (tmp_path / 'eval' / 'eval' / 'metrics_step_6.json').exists()


def _overwrite_middle(path, size=4096):
  """Random bytes over the middle of a file; its size stays the same."""
  length = path.stat().st_size
  with open(path, 'r+b') as f:
    f.seek(max(0, length // 2 - size // 2))
    f.write(np.random.default_rng(1).bytes(min(size, length)))
  assert path.stat().st_size == length


def test_corrupt_bytes_are_caught_by_the_checksums(tmp_path, trained, caplog):
  workdir = tmp_path / 'w'
  shutil.copytree(trained, workdir)
  step6 = workdir / 'checkpoints' / '6'
  largest = max((p for p in step6.rglob('*') if p.is_file()), key=lambda p: p.stat().st_size)
  _overwrite_middle(largest)
  loaded = checkpoint_lib.load(str(workdir))
  assert loaded.step == 3
  assert (f'checkpoint {step6} is unreadable (Mismatch: {largest.relative_to(step6)} differs '
          'from its checksum (crc32): the file is corrupt)') in caplog.text
  # A step of this version without its checksums (the run stopped right after orbax
  # finalized it) is complete: it reads, unverified, with a warning.
  os.remove(workdir / 'checkpoints' / '3' / 'checksums.json')
  caplog.clear()
  assert checkpoint_lib.load(str(workdir / 'checkpoints' / '3')).step == 3
  assert 'stopped right after saving it' in caplog.text
  # A step of an older version (no checksums, no resolved schedule) reads, with a warning.
  shutil.rmtree(workdir / 'checkpoints' / '3' / checkpoint_lib.RESOLVED)
  caplog.clear()
  assert checkpoint_lib.load(str(workdir / 'checkpoints' / '3')).step == 3
  assert 'has no checksums (an older version wrote it)' in caplog.text
