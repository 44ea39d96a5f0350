"""Reference checkpoint import: name mapping, round trip, errors, the CLI."""
import numpy as np
import pytest

from slotcurri_jax.models import encoders
from slotcurri_jax.tools import check_fixture
from slotcurri_jax.tools import import_reference


@pytest.fixture(scope='module')
def reference(fixtures_dir):
  with np.load(fixtures_dir / 'slot_model.npz', allow_pickle=False) as z:
    data = check_fixture._Loaded(z)
  config = check_fixture.slot_model_config(check_fixture.fixture_config(data))
  state_dict = {k[len('param/'):]: data[k] for k in data.files if k.startswith('param/')}
  return config, state_dict


def test_round_trip_is_exact(reference):
  config, state_dict = reference
  params = import_reference.state_dict_to_params(state_dict, config)
  assert params['initializer']['placeholders'].shape == state_dict['initializer.slots'].shape[1:]
  assert params['corrector']['gru']['input']['kernel'].shape == (
      state_dict['processor.module.corrector.gru.weight_ih'].T.shape)
  back = import_reference.params_to_state_dict(params, config)
  assert set(back) == set(state_dict)
  for key, value in state_dict.items():
    np.testing.assert_array_equal(back[key], value, err_msg=key)
  # Without a config, sizes come from the keys themselves.
  no_config = import_reference.state_dict_to_params(state_dict)
  np.testing.assert_array_equal(no_config['decoder']['pos_emb'], params['decoder']['pos_emb'])


def test_missing_and_unexpected_keys_are_listed(reference):
  config, state_dict = reference
  broken = dict(state_dict)
  del broken['processor.module.corrector.gru.bias_hh']
  broken['processor.module.corrector.to_q.bias'] = np.zeros(3, np.float32)
  with pytest.raises(ValueError) as err:
    import_reference.state_dict_to_params(broken, config)
  assert 'processor.module.corrector.gru.bias_hh' in str(err.value)
  assert 'processor.module.corrector.to_q.bias' in str(err.value)


def test_shapes_are_checked_against_the_config(reference):
  config, state_dict = reference
  config = config.copy_and_resolve_references()
  config.model.max_slots = config.model.max_slots + 1
  with pytest.raises(ValueError, match='initializer/placeholders'):
    import_reference.state_dict_to_params(state_dict, config)


def test_backbone_keys_become_the_encoder(reference, fixtures_dir):
  config, state_dict = reference
  with np.load(fixtures_dir / 'dinov2_vit.npz', allow_pickle=False) as z:
    vit = {k[len('param/'):]: z[k] for k in z.files if k.startswith('param/')}
  full = dict(state_dict, **{f'encoder.module.backbone.model.{k}': v for k, v in vit.items()})
  params = import_reference.state_dict_to_params(full, config)
  np.testing.assert_array_equal(params['encoder']['blocks_1']['ls2'], vit['blocks.1.ls2.gamma'])


def test_cli_reads_lightning_style_npz_and_writes_our_params(reference, tmp_path):
  config, state_dict = reference
  src = tmp_path / 'reference.npz'
  np.savez(src, **{f'model.{k}': v for k, v in state_dict.items()})  # Lightning's prefix
  dst = tmp_path / 'ours.npz'
  assert import_reference.main([str(src), str(dst)]) == 0
  loaded = encoders.load_params_npz(dst)
  want = import_reference.state_dict_to_params(state_dict, config)
  np.testing.assert_array_equal(loaded['predictor']['blocks_0']['qkv']['kernel'],
                                want['predictor']['blocks_0']['qkv']['kernel'])
  np.testing.assert_array_equal(loaded['initializer']['placeholders'],
                                want['initializer']['placeholders'])
