"""The DINOv2 weights' automatic download, offline: the hub call returns a local file."""
import jax
import numpy as np
from safetensors.numpy import save_file

from test_dinov2 import _to_hugging_face, fixture_variant, vit_fixture  # noqa: F401  (fixtures)

from slotcurri_jax.models import dinov2
from slotcurri_jax.models import encoders


def test_missing_weights_are_downloaded_converted_and_cached(fixture_variant, vit_fixture,
                                                             tmp_path, monkeypatch):
  import huggingface_hub  # installed by requirements.txt
  _, state_dict, _ = vit_fixture
  hub_file = tmp_path / 'hub' / 'model.safetensors'
  hub_file.parent.mkdir()
  save_file(_to_hugging_face(state_dict), str(hub_file))
  calls = []

  def fake_download(repo_id, filename, **kwargs):
    calls.append((repo_id, filename))
    return str(hub_file)

  monkeypatch.setattr(huggingface_hub, 'hf_hub_download', fake_download)
  monkeypatch.delenv('HF_HUB_OFFLINE', raising=False)
  monkeypatch.setattr(encoders, '_hub_unreachable', lambda: None)  # this machine is offline
  monkeypatch.setattr(encoders, 'DEFAULT_WEIGHTS_DIR', tmp_path / 'cache')
  params = encoders.load_encoder_params(fixture_variant)
  assert calls == [('test/vit-fixture', 'model.safetensors')]
  assert (tmp_path / 'cache' / 'vit_fixture.npz').exists()
  jax.tree.map(np.testing.assert_array_equal, params, dinov2.state_dict_to_params(state_dict))
  encoders.load_encoder_params(fixture_variant)  # the cached, converted file
  assert len(calls) == 1


def test_offline_or_a_named_path_never_waits_for_the_hub(fixture_variant, tmp_path, monkeypatch):
  """A missing model.encoder.weights path is an error without any network call; a missing
  default file on a machine that cannot reach the hub fails after one 1-s probe."""
  import huggingface_hub
  import pytest
  import socket
  calls = []
  monkeypatch.setattr(huggingface_hub, 'hf_hub_download', lambda *a, **k: calls.append(a))
  monkeypatch.delenv('HF_HUB_OFFLINE', raising=False)
  for v in ('HTTPS_PROXY', 'https_proxy', 'ALL_PROXY', 'all_proxy'):
    monkeypatch.delenv(v, raising=False)
  config = fixture_variant.copy_and_resolve_references()
  config.model.encoder.weights = str(tmp_path / 'mine.npz')
  with pytest.raises(FileNotFoundError, match=r'not found at .*mine.npz \(config.model.encoder.weights\)'):
    encoders.load_encoder_params(config)

  def no_route(address, timeout):
    assert timeout <= 1.0
    raise OSError(101, 'Network is unreachable')

  monkeypatch.setattr(socket, 'create_connection', no_route)
  monkeypatch.setattr(encoders, 'DEFAULT_WEIGHTS_DIR', tmp_path / 'cache')
  config.model.encoder.weights = ''
  with pytest.raises(FileNotFoundError, match='huggingface.co cannot be reached from this machine'):
    encoders.load_encoder_params(config)
  assert calls == []


def test_offline_with_the_hub_cache_filled_converts_the_cached_file(
    fixture_variant, vit_fixture, tmp_path, monkeypatch):
  """An offline node whose Hugging Face cache already holds the checkpoint uses it: no probe,
  no download."""
  import huggingface_hub
  import socket
  _, state_dict, _ = vit_fixture
  hub_file = tmp_path / 'hub' / 'model.safetensors'
  hub_file.parent.mkdir()
  save_file(_to_hugging_face(state_dict), str(hub_file))
  asked = []
  monkeypatch.setattr(huggingface_hub, 'try_to_load_from_cache',
                      lambda repo_id, filename, **k: asked.append(repo_id) or str(hub_file))

  def no_network(*args, **kwargs):
    raise AssertionError('the network was used')

  monkeypatch.setattr(huggingface_hub, 'hf_hub_download', no_network)
  monkeypatch.setattr(socket, 'create_connection', no_network)
  monkeypatch.setattr(encoders, 'DEFAULT_WEIGHTS_DIR', tmp_path / 'cache')
  params = encoders.load_encoder_params(fixture_variant)
  assert asked == ['test/vit-fixture']
  jax.tree.map(np.testing.assert_array_equal, params, dinov2.state_dict_to_params(state_dict))
