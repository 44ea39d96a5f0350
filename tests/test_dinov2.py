"""DINOv2 ViT against dinov2_vit.npz (timm), weight conversion and loading, frozen encoder."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from conftest import tiny_config
from slotcurri_jax.models import dinov2
from slotcurri_jax.models import encoders
from slotcurri_jax.models import video_model
from slotcurri_jax.tools import convert_dinov2


@pytest.fixture(scope='module')
def vit_fixture(fixtures_dir):
  with np.load(fixtures_dir / 'dinov2_vit.npz', allow_pickle=False) as z:
    data = {k: z[k] for k in z.files}
  cfg = json.loads(str(data['config']))
  state_dict = {k[len('param/'):]: v for k, v in data.items() if k.startswith('param/')}
  return cfg, state_dict, data


def _model(arch, dtype=jnp.float32):
  return dinov2.DinoV2(arch['embed_dim'], arch['depth'], arch['num_heads'],
                       patch_size=arch['patch_size'], native_grid=arch['pos_grid_native'][0],
                       mlp_ratio=arch['mlp_ratio'], dtype=dtype)


def test_tokens_and_resampled_pos_embed_match_timm(vit_fixture):
  cfg, state_dict, data = vit_fixture
  params = dinov2.state_dict_to_params(state_dict)
  images = jnp.asarray(data['in/images']).transpose(0, 2, 3, 1)
  tokens = jax.jit(lambda p, x: _model(cfg['arch']).apply({'params': p}, x))(params, images)
  np.testing.assert_allclose(tokens, data['out/tokens'], atol=1e-5, rtol=0)
  grid = images.shape[1] // cfg['arch']['patch_size']
  pos = dinov2.resample_pos_embed(jnp.asarray(params['pos_embed']), grid)
  np.testing.assert_allclose(pos, data['out/pos_embed_resampled'], atol=1e-6, rtol=0)
  # The native grid is left unchanged (cubic kernel at integer offsets).
  native = dinov2.resample_pos_embed(jnp.asarray(params['pos_embed']), 37)
  np.testing.assert_allclose(native, params['pos_embed'], atol=1e-6)


def test_bfloat16_backbone_is_close(vit_fixture):
  cfg, state_dict, data = vit_fixture
  params = dinov2.state_dict_to_params(state_dict)
  images = jnp.asarray(data['in/images']).transpose(0, 2, 3, 1)
  tokens = jax.jit(lambda p, x: _model(cfg['arch'], jnp.bfloat16).apply({'params': p}, x))(
      params, images)
  assert tokens.dtype == jnp.float32
  ref = data['out/tokens']
  assert np.linalg.norm(tokens - ref) / np.linalg.norm(ref) < 3e-2


def _to_hugging_face(state_dict):
  """timm names -> Hugging Face Dinov2Model names (the inverse of our converter)."""
  out = {'embeddings.cls_token': state_dict['cls_token'],
         'embeddings.mask_token': np.zeros_like(state_dict['cls_token'][0]),
         'embeddings.position_embeddings': state_dict['pos_embed'],
         'embeddings.patch_embeddings.projection.weight': state_dict['patch_embed.proj.weight'],
         'embeddings.patch_embeddings.projection.bias': state_dict['patch_embed.proj.bias'],
         'layernorm.weight': state_dict['norm.weight'], 'layernorm.bias': state_dict['norm.bias']}
  depth = len({k.split('.')[1] for k in state_dict if k.startswith('blocks.')})
  for i in range(depth):
    p, h = f'blocks.{i}', f'encoder.layer.{i}'
    for kind in ('weight', 'bias'):
      q, k, v = np.split(state_dict[f'{p}.attn.qkv.{kind}'], 3, axis=0)
      out.update({f'{h}.attention.attention.query.{kind}': q,
                  f'{h}.attention.attention.key.{kind}': k,
                  f'{h}.attention.attention.value.{kind}': v,
                  f'{h}.attention.output.dense.{kind}': state_dict[f'{p}.attn.proj.{kind}'],
                  f'{h}.norm1.{kind}': state_dict[f'{p}.norm1.{kind}'],
                  f'{h}.norm2.{kind}': state_dict[f'{p}.norm2.{kind}'],
                  f'{h}.mlp.fc1.{kind}': state_dict[f'{p}.mlp.fc1.{kind}'],
                  f'{h}.mlp.fc2.{kind}': state_dict[f'{p}.mlp.fc2.{kind}']})
    out[f'{h}.layer_scale1.lambda1'] = state_dict[f'{p}.ls1.gamma']
    out[f'{h}.layer_scale2.lambda1'] = state_dict[f'{p}.ls2.gamma']
  return out


def test_hugging_face_and_timm_names_convert_to_the_same_params(vit_fixture):
  _, state_dict, _ = vit_fixture
  from_timm = dinov2.state_dict_to_params(state_dict)
  from_hf = dinov2.state_dict_to_params(_to_hugging_face(state_dict))
  jax.tree.map(np.testing.assert_array_equal, from_timm, from_hf)
  assert dinov2.architecture_of(from_timm) == dict(embed_dim=48, depth=2)


def test_bad_state_dicts_list_keys_by_name(vit_fixture):
  _, state_dict, _ = vit_fixture
  broken = dict(state_dict)
  del broken['blocks.1.ls2.gamma']
  broken['blocks.0.attn.q_norm.weight'] = np.ones(48, np.float32)
  with pytest.raises(ValueError, match=r"blocks\.1\.ls2\.gamma.*blocks\.0\.attn\.q_norm\.weight"):
    dinov2.state_dict_to_params(broken)


def test_bad_image_sizes(vit_fixture):
  cfg, state_dict, _ = vit_fixture
  params = dinov2.state_dict_to_params(state_dict)
  with pytest.raises(ValueError, match='multiple of the patch size 14'):
    _model(cfg['arch']).apply({'params': params}, jnp.zeros((1, 30, 30, 3)))
  with pytest.raises(ValueError, match='square'):
    _model(cfg['arch']).apply({'params': params}, jnp.zeros((1, 28, 42, 3)))
  config = tiny_config()
  config.model.encoder.kind = 'dinov2'
  config.data.resolution = 300
  with pytest.raises(ValueError, match='image size 300 is not a multiple of the patch size 14'):
    video_model.build_model(config)


@pytest.fixture
def fixture_variant(monkeypatch, vit_fixture):
  """Register the fixture's tiny ViT as an encoder variant (real variants are 22M+ params)."""
  arch = vit_fixture[0]['arch']
  monkeypatch.setitem(dinov2.VARIANTS, 'vit_fixture', dict(
      embed_dim=arch['embed_dim'], depth=arch['depth'], num_heads=arch['num_heads'],
      timm='vit_fixture.timm', hf='test/vit-fixture', hub='vit_fixture'))
  config = tiny_config()
  config.model.encoder.kind = 'dinov2'
  config.model.encoder.variant = 'vit_fixture'
  config.data.resolution = 28
  return config


def test_missing_weights_explain_how_to_get_them(fixture_variant, tmp_path, monkeypatch):
  monkeypatch.setattr(encoders, 'DEFAULT_WEIGHTS_DIR', tmp_path / 'cache')
  monkeypatch.setenv('HF_HUB_OFFLINE', '1')
  with pytest.raises(FileNotFoundError) as err:
    encoders.load_encoder_params(fixture_variant)
  message = str(err.value)
  assert str(tmp_path / 'cache' / 'vit_fixture.npz') in message
  assert 'python -m slotcurri_jax.tools.convert_dinov2 SRC' in message
  assert 'huggingface.co' in message
  fixture_variant.model.encoder.random_init = True
  assert encoders.load_encoder_params(fixture_variant) is None


def test_convert_then_load_and_the_encoder_is_frozen(fixture_variant, vit_fixture, tmp_path):
  cfg, state_dict, data = vit_fixture
  src = tmp_path / 'model.safetensors'
  save_file(_to_hugging_face(state_dict), str(src))
  dst = tmp_path / 'vit.npz'
  assert convert_dinov2.main([str(src), str(dst)]) == 0
  fixture_variant.model.encoder.weights = str(dst)
  loaded = encoders.load_encoder_params(fixture_variant)
  jax.tree.map(np.testing.assert_array_equal, loaded, dinov2.state_dict_to_params(state_dict))
  fixture_variant.model.encoder.weights = str(src)  # safetensors read directly
  jax.tree.map(np.testing.assert_array_equal, encoders.load_encoder_params(fixture_variant),
               loaded)
  fixture_variant.model.encoder.variant = 'vit_small_patch14'
  fixture_variant.model.encoder.weights = str(dst)
  with pytest.raises(ValueError, match='embed_dim'):
    encoders.load_encoder_params(fixture_variant)

  # The model's encoder on the fixture's images: features = targets = tokens, and no
  # gradient flows into the frozen DINOv2.
  fixture_variant.model.encoder.variant = 'vit_fixture'
  fixture_variant.data.resolution = data['in/images'].shape[-1]
  model = video_model.build_model(fixture_variant)
  video = jnp.asarray(data['in/images']).transpose(0, 2, 3, 1)[None]  # [1, T=2, H, W, 3]
  encode = lambda prm: model.apply({'params': {'encoder': prm}}, video, method=model.encode)
  template = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), video,
                                               method=model.encode))['params']['encoder']
  shapes = lambda tree: jax.tree.map(lambda a: tuple(a.shape), tree)
  assert shapes(template) == shapes(loaded)  # converted weights slot into params['encoder']
  features, targets = jax.jit(encode)(loaded)
  np.testing.assert_allclose(features[0], data['out/tokens'], atol=1e-5)
  np.testing.assert_array_equal(features, targets)
  grads = jax.jit(jax.grad(lambda prm: jnp.sum(encode(prm)[0] ** 2)))(loaded)
  assert all(np.all(g == 0) for g in jax.tree.leaves(grads))
