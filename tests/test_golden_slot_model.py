"""Golden test of the slot stack against slot_model.npz (reference PyTorch outputs), and the
check_fixture CLI. Tolerances are the fixture README's; sizes come from the file's config."""
import json

import numpy as np
import pytest

from slotcurri_jax.tools import check_fixture


@pytest.fixture(scope='module')
def fixture_data(fixtures_dir):
  with np.load(fixtures_dir / 'slot_model.npz', allow_pickle=False) as z:
    return check_fixture._Loaded(z)


@pytest.fixture(scope='module')
def ours(fixture_data):
  """Every output, loss and gradient of our model, under the fixture's key names."""
  return check_fixture.slot_model_outputs(fixture_data)


def _assert_close(ours_value, ref, atol, rtol, name):
  np.testing.assert_allclose(np.asarray(ours_value), ref, atol=atol, rtol=rtol, err_msg=name)


@pytest.mark.parametrize('rollout', ['fwd', 'fwdN', 'cyc'])
def test_forward_outputs(ours, fixture_data, rollout):
  """fwd runs the padded model with the first K of N rows active and is compared on those
  rows (the reference slices P[:K]); fwdN and cyc use all N rows."""
  for key in check_fixture.FORWARD_KEYS:
    _assert_close(ours[f'{rollout}/{key}'], fixture_data[f'out/{rollout}/{key}'],
                  name=f'{rollout}/{key}', **check_fixture.TOL_FORWARD)


@pytest.mark.parametrize('rollout', ['fwd', 'fwdN', 'cyc'])
def test_losses(ours, fixture_data, rollout):
  for key in ('loss_mse', 'loss_ss', 'loss_total'):
    _assert_close(ours[f'{rollout}/{key}'], fixture_data[f'out/{rollout}/{key}'],
                  name=key, **check_fixture.TOL_LOSS)
  _assert_close(ours[f'{rollout}/loss_ssim'], fixture_data[f'out/{rollout}/loss_ssim'],
                name='loss_ssim', **check_fixture.TOL_SSIM)


@pytest.mark.parametrize('prefix', ['grad', 'grad_cyc'])
def test_gradients(ours, fixture_data, prefix):
  keys = [k for k in fixture_data.files if k.startswith(prefix + '/')]
  assert len(keys) == len(check_fixture.fixture_config(fixture_data)['state_dict_keys'])
  for key in keys:
    _assert_close(ours[key], fixture_data[key], name=key, **check_fixture.TOL_GRAD)


def test_inactive_placeholder_rows_get_exactly_zero_gradient(ours, fixture_data):
  k = check_fixture.fixture_config(fixture_data)['sizes']['K_active_train']
  grad = ours['grad/initializer.slots']
  assert np.all(grad[:, k:] == 0.0)
  assert np.abs(grad[:, :k]).min() > 0  # a gradient does reach the active rows (docs/method.md §17.4)


def test_cyclic_last_frame_is_the_forward_frame(ours):
  np.testing.assert_array_equal(ours['cyc/slots'][:, -1], ours['fwdN/slots'][:, -1])


def test_check_fixture_cli_passes_on_the_fixtures(fixtures_dir, capsys):
  files = sorted(str(p) for p in fixtures_dir.glob('*.npz'))
  assert check_fixture.main(files) == 0
  records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  kinds = {r['kind'] for r in records}
  assert kinds == {'slot_model', 'dinov2_vit', 'spawn', 'ssync', 'ssync_merge', 'metrics',
                   'resize'}
  for record in records:
    assert set(record) >= {'file', 'kind', 'output', 'max_abs_err', 'rel_l2_err', 'tol', 'ok'}
    assert record['ok'] is True, record  # every output of every kind is checked
  per_kind = {k: sum(r['kind'] == k for r in records) for k in kinds}
  assert per_kind['slot_model'] > 100 and min(per_kind.values()) >= 2, per_kind


def test_check_fixture_cli_fails_on_a_corrupted_param(fixtures_dir, tmp_path, capsys):
  with np.load(fixtures_dir / 'slot_model.npz', allow_pickle=False) as z:
    arrays = {k: z[k] for k in z.files}
  arrays['param/decoder.module.mlp.layers.0.bias'] = (
      arrays['param/decoder.module.mlp.layers.0.bias'] + 0.05)
  bad = tmp_path / 'slot_model_corrupted.npz'
  np.savez(bad, **arrays)
  assert check_fixture.main([str(bad)]) == 1
  records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  failed = {r['output'] for r in records if r['ok'] is False}
  assert 'fwd/recon' in failed and 'grad/decoder.module.pos_emb' in failed
