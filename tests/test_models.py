"""The video slot model: padding/masking, rollouts, chunking, encoders, init, bad inputs."""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from slotcurri_jax import params as params_lib
from slotcurri_jax import train
from slotcurri_jax.models import decoder as decoder_lib
from slotcurri_jax.models import encoders
from slotcurri_jax.models import predictor as predictor_lib
from slotcurri_jax.models import slot_attention
from slotcurri_jax.models import video_model
from slotcurri_jax.tools import check_fixture

# A tiny slot stack fed with random "backbone" features: 3x3 patches, D_in 8, D_f 12.
GRID, D_IN, D_F = 3, 8, 12


def _stack(max_slots=5, **model_overrides):
  config = tiny_config()
  config.model.max_slots = max_slots
  for key, value in model_overrides.items():
    parent, _, leaf = key.rpartition('.')
    (config.model[parent] if parent else config.model)[leaf] = value
  return config, video_model.build_slot_stack(config, D_IN, D_F, (GRID, GRID))


def _inputs(b=2, t=4, seed=0):
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  return (jax.random.normal(k1, (b, t, GRID * GRID, D_IN)),
          jax.random.normal(k2, (b, t, GRID * GRID, D_F)))


def _init(model, feats, targets, seed=1):
  active = jnp.ones((model.max_slots,), bool)
  return jax.jit(lambda r: model.init(r, feats, targets, active, method=model.process))(
      jax.random.PRNGKey(seed))['params']


def _process(model):
  return jax.jit(lambda p, f, x, a, n=None, s=None, rollout='forward': model.apply(
      {'params': p}, f, x, a, rollout, n, s, method=model.process),
                 static_argnames='rollout')


def test_k_active_of_n_equals_model_with_k_slots(fixtures_dir):
  """docs/method.md §17.3 acceptance: K active rows of a padded model == a model with K rows.

  Uses slot_model.npz's sizes and params, so the padded model's compiled gradient is
  shared with the golden test (persistent compilation cache)."""
  with np.load(fixtures_dir / 'slot_model.npz', allow_pickle=False) as z:
    data = check_fixture._Loaded(z)
  config, padded, params, x, k = check_fixture.slot_model_from_fixture(data)
  n = config.model.max_slots
  sliced_config = check_fixture.slot_model_config(check_fixture.fixture_config(data))
  sliced_config.model.max_slots = k
  sliced = train.Run.from_config(sliced_config)
  sliced_params = flax.core.unfreeze(jax.tree.map(lambda a: a, params))
  sliced_params['initializer']['placeholders'] = params['initializer']['placeholders'][:k]

  def run(model, prm, active):
    fn = jax.value_and_grad(check_fixture.total_loss_fn(model), has_aux=True)
    return jax.jit(fn, static_argnums=3)(prm, x, active, 'forward')

  (_, (terms_n, out_n)), grads_n = run(padded, params, jnp.arange(n) < k)
  (_, (terms_k, out_k)), grads_k = run(sliced, sliced_params, jnp.ones((k,), bool))

  for key in terms_k:
    np.testing.assert_allclose(terms_n[key], terms_k[key], rtol=1e-6, atol=1e-6, err_msg=key)
  for key in out_k:
    a, b = np.asarray(out_n[key]), np.asarray(out_k[key])
    if key in check_fixture.PER_SLOT_KEYS:
      a = a[:, :, :k]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=key)
  # Inactive rows: exactly zero masks, finite everything.
  assert np.all(np.asarray(out_n['sa_masks'])[:, :, k:] == 0)
  assert np.all(np.asarray(out_n['dec_masks'])[:, :, k:] == 0)
  for key, value in out_n.items():
    assert np.all(np.isfinite(value)), key
  # Shared params get the same gradient; inactive placeholder rows exactly zero.
  g_p = np.asarray(grads_n['initializer']['placeholders'])
  assert np.all(g_p[k:] == 0.0)
  np.testing.assert_allclose(g_p[:k], grads_k['initializer']['placeholders'], rtol=1e-4, atol=1e-6)
  flat_n = flax.traverse_util.flatten_dict(flax.core.unfreeze(grads_n), sep='/')
  flat_k = flax.traverse_util.flatten_dict(flax.core.unfreeze(grads_k), sep='/')
  for path, g in flat_k.items():
    if path != 'initializer/placeholders':
      np.testing.assert_allclose(flat_n[path], g, rtol=1e-4, atol=1e-6, err_msg=path)


def test_padded_video_with_num_frames_matches_unpadded_cyclic():
  _, model = _stack()
  feats, targets = _inputs()  # B=2, T=4
  params = _init(model, feats, targets)
  run = _process(model)
  active = jnp.arange(5) < 4
  # num_frames is always passed, so the three cyclic runs share two compiled programs.
  padded = run(params, feats, targets, active, jnp.asarray([2, 4]), rollout='cyclic')
  full = run(params, feats, targets, active, jnp.asarray([4, 4]), rollout='cyclic')
  short = run(params, feats[:, :2], targets[:, :2], active, jnp.asarray([2, 2]), rollout='cyclic')
  for key in full:
    np.testing.assert_allclose(padded[key][0, :2], short[key][0], rtol=1e-5, atol=1e-6,
                               err_msg=f'{key}, video of 2 frames')
    np.testing.assert_allclose(padded[key][1], full[key][1], rtol=1e-5, atol=1e-6,
                               err_msg=f'{key}, video of 4 frames')
  # Frames >= len-1 of the short video keep the forward result.
  forward = run(params, feats, targets, active)
  np.testing.assert_array_equal(padded['slots'][0, 1:], forward['slots'][0, 1:])
  assert not np.allclose(padded['slots'][0, 0], forward['slots'][0, 0])


def test_chunks_carrying_predicted_slots_equal_one_pass():
  _, model = _stack()
  feats, targets = _inputs()
  params = _init(model, feats, targets)
  run = _process(model)
  active = jnp.arange(5) < 4
  whole = run(params, feats, targets, active)
  first = run(params, feats[:, :2], targets[:, :2], active)
  second = run(params, feats[:, 2:], targets[:, 2:], active, s=first['slots_predicted'][:, -1])
  for key, value in whole.items():
    joined = np.concatenate([first[key], second[key]], axis=1)
    np.testing.assert_allclose(joined, value, rtol=1e-5, atol=1e-6, err_msg=key)


def test_cyclic_rollout_structure():
  _, model = _stack()
  feats, targets = _inputs()
  params = _init(model, feats, targets)
  run = _process(model)
  active = jnp.arange(5) < 4
  fwd = run(params, feats, targets, active)
  cyc = run(params, feats, targets, active, jnp.asarray([4, 4]), rollout='cyclic')
  np.testing.assert_array_equal(cyc['slots'][:, -1], fwd['slots'][:, -1])
  np.testing.assert_array_equal(cyc['slots_predicted'][:, -1], fwd['slots_predicted'][:, -1])
  np.testing.assert_array_equal(cyc['features'], fwd['features'])
  assert not np.allclose(cyc['slots'][:, 0], fwd['slots'][:, 0])
  # One frame: no backward step.
  one_f = run(params, feats[:, :1], targets[:, :1], active)
  one_c = run(params, feats[:, :1], targets[:, :1], active, rollout='cyclic')
  np.testing.assert_array_equal(one_f['slots'], one_c['slots'])


def _numpy_layer_norm(x, scale, bias, eps=1e-5):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * scale + bias


def test_gru_matches_pytorch_equations():
  cell = slot_attention.GRUCell(6)
  u, h = np.random.RandomState(0).randn(2, 3, 6).astype(np.float32)
  params = jax.jit(cell.init)(jax.random.PRNGKey(0), u, h)['params']
  got = jax.jit(cell.apply)({'params': params}, u, h)
  gi = u @ params['input']['kernel'] + params['input']['bias']
  gh = h @ params['hidden']['kernel'] + params['hidden']['bias']
  sig = lambda a: 1 / (1 + np.exp(-a))
  r = sig(gi[:, :6] + gh[:, :6])
  z = sig(gi[:, 6:12] + gh[:, 6:12])
  n = np.tanh(gi[:, 12:] + r * gh[:, 12:])
  np.testing.assert_allclose(got, (1 - z) * n + z * h, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('gru_hidden', ['normed', 'raw'])
def test_slot_attention_matches_numpy(gru_hidden):
  """One iteration, with one inactive slot (quirk 2 switch: GRU hidden LN(S) or S)."""
  d, k, n = 8, 3, 5
  sa = slot_attention.SlotAttention(d, gru_hidden=gru_hidden)
  rng = np.random.RandomState(1)
  feats, slots = rng.randn(1, n, d).astype(np.float32), rng.randn(1, k, d).astype(np.float32)
  active = jnp.asarray([True, False, True])
  params = jax.jit(sa.init, static_argnums=4)(jax.random.PRNGKey(0), feats, slots, active,
                                              1)['params']
  new, masks, logits = jax.jit(sa.apply, static_argnums=4)({'params': params}, feats, slots,
                                                           active, 1)
  ln = lambda x, name: _numpy_layer_norm(x, params[name]['scale'], params[name]['bias'])
  f = ln(feats[0], 'norm_features')
  keys, values = f @ params['to_k']['kernel'], f @ params['to_v']['kernel']
  normed = ln(slots[0], 'norm_slots')
  z = (normed @ params['to_q']['kernel']) @ keys.T / np.sqrt(d)
  zz = np.where(np.asarray(active)[:, None], z, -np.inf)
  a = np.exp(zz - zz.max(0)) / np.exp(zz - zz.max(0)).sum(0)
  w = (a + 1e-8) / (a + 1e-8).sum(-1, keepdims=True)
  hidden = normed if gru_hidden == 'normed' else slots[0]
  gru = jax.jit(slot_attention.GRUCell(d).apply)({'params': params['gru']}, w @ values, hidden)
  mlp = params['mlp']
  hmid = np.maximum(_numpy_layer_norm(gru, mlp['norm']['scale'], mlp['norm']['bias'])
                    @ mlp['dense_0']['kernel'] + mlp['dense_0']['bias'], 0)
  want = gru + hmid @ mlp['dense_1']['kernel'] + mlp['dense_1']['bias']
  np.testing.assert_allclose(logits[0], z, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(masks[0], a, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(new[0], want, rtol=1e-4, atol=1e-5)
  assert np.all(np.asarray(masks)[0, 1] == 0)


@pytest.mark.parametrize('logit_scale', ['reference', 'standard'])
def test_predictor_attention_scale_and_key_mask(logit_scale):
  d, heads, k = 8, 2, 4
  pred = predictor_lib.Predictor(num_blocks=1, num_heads=heads, logit_scale=logit_scale)
  x = np.random.RandomState(2).randn(1, k, d).astype(np.float32)
  active = jnp.asarray([True, True, False, True])
  params = jax.jit(pred.init)(jax.random.PRNGKey(0), x, active)['params']
  got = jax.jit(pred.apply)({'params': params}, x, active)
  p = params['blocks_0']
  h = _numpy_layer_norm(x[0], p['norm1']['scale'], p['norm1']['bias'])
  qkv = h @ p['qkv']['kernel'] + p['qkv']['bias']
  q, kk, v = (qkv[:, i * d:(i + 1) * d].reshape(k, heads, d // heads) for i in range(3))
  scale = np.sqrt(d // heads) if logit_scale == 'reference' else 1 / np.sqrt(d // heads)
  z = np.einsum('qhd,khd->hqk', q, kk) * scale  # quirk 1: reference multiplies by sqrt(d_h)
  z = np.where(np.asarray(active)[None, None, :], z, -np.inf)
  a = np.exp(z - z.max(-1, keepdims=True))
  a /= a.sum(-1, keepdims=True)
  o = np.einsum('hqk,khd->qhd', a, v).reshape(k, d)
  o = o @ p['out_proj']['kernel'] + p['out_proj']['bias']
  y = x[0] + o
  f = _numpy_layer_norm(y, p['norm2']['scale'], p['norm2']['bias'])
  f = np.maximum(f @ p['linear1']['kernel'] + p['linear1']['bias'], 0)
  want = y + f @ p['linear2']['kernel'] + p['linear2']['bias']
  np.testing.assert_allclose(got[0], want, rtol=1e-4, atol=1e-5)


def test_initialisation_follows_pytorch_conventions():
  d = 64
  placeholders = jax.jit(video_model.SlotInitializer(11, d).init, static_argnums=1)(
      jax.random.PRNGKey(0), 1)
  np.testing.assert_allclose(np.std(placeholders['params']['placeholders']), d ** -0.5, rtol=0.1)
  decoder = decoder_lib.MLPDecoder(grid=(4, 4), output_dim=4, hidden=(8,))
  pos_emb = jax.jit(decoder.init)(jax.random.PRNGKey(1), jnp.zeros((1, 11, d)),
                                  jnp.ones((11,), bool))['params']['pos_emb']
  np.testing.assert_allclose(np.std(pos_emb), d ** -0.5, rtol=0.15)

  _, model = _stack()
  feats, targets = _inputs()
  params = _init(model, feats, targets)
  d = model.slot_dim
  # The shared MLP: torch-default weights, zero biases.
  for mlp in (params['feature_mlp'], params['corrector']['mlp'], params['decoder']['mlp']):
    for name, layer in mlp.items():
      if name.startswith('dense_'):
        fan_in = layer['kernel'].shape[0]
        assert np.all(layer['bias'] == 0)
        assert np.abs(layer['kernel']).max() <= fan_in ** -0.5
        assert np.abs(layer['kernel']).max() > 0.9 * fan_in ** -0.5
  gru = params['corrector']['gru']
  for part in ('input', 'hidden'):
    assert np.abs(gru[part]['bias']).max() <= d ** -0.5
    assert np.abs(gru[part]['bias']).max() > 0.7 * d ** -0.5
  block = params['predictor']['blocks_0']
  bound = (6 / (2 * d)) ** 0.5  # Xavier per [D, D] projection, not over the fused [D, 3D]
  assert bound * 0.95 < np.abs(block['qkv']['kernel']).max() <= bound
  assert np.all(block['qkv']['bias'] == 0) and np.all(block['out_proj']['bias'] == 0)
  assert np.abs(block['linear1']['bias']).max() > 0  # FFN keeps torch-default biases
  assert np.all(params['corrector']['norm_slots']['scale'] == 1)


def test_demo_head_start_inits():
  """decoder pos_init='sincos' and model.init_gains (the demo's head start; reference init by default)."""
  pos = np.asarray(decoder_lib.sincos_position_init((4, 4))(None, (16, 8)))  # a 4x4 grid, D 8
  assert pos.shape == (16, 8) and np.all(np.abs(pos) <= 1.0)
  # Row-major grid: patch (r, c) is row 4r + c; the first D/2 columns depend on r only.
  np.testing.assert_allclose(pos[1, :4], pos[0, :4], atol=1e-6)
  np.testing.assert_allclose(pos[4, 4:], pos[0, 4:], atol=1e-6)
  assert not np.allclose(pos[4, :4], pos[0, :4]) and not np.allclose(pos[1, 4:], pos[0, 4:])
  assert len({tuple(np.round(r, 5)) for r in pos}) == 16  # every patch distinct
  # On an 8x8 grid, a patch's row neighbour is more alike than any farther patch of the row.
  big = np.asarray(decoder_lib.sincos_position_init((8, 8))(None, (64, 32)))
  dist = [np.linalg.norm(big[0] - big[c]) for c in range(1, 8)]
  assert dist[0] < min(dist[1:]), dist
  # A 2 x 3 grid: the first D/2 columns follow the row, the last D/2 the column.
  wide = np.asarray(decoder_lib.sincos_position_init((2, 3))(None, (6, 8)))
  np.testing.assert_allclose(wide[[1, 2], :4], wide[[0, 0], :4], atol=1e-6)
  np.testing.assert_allclose(wide[3:, 4:], wide[:3, 4:], atol=1e-6)
  assert not np.allclose(wide[3, :4], wide[0, :4]) and not np.allclose(wide[1, 4:], wide[0, 4:])
  with pytest.raises(ValueError, match=r'needs N = 3 x 3 \(the patch grid\)'):
    decoder_lib.sincos_position_init((3, 3))(None, (12, 8))
  decoder = decoder_lib.MLPDecoder(grid=(4, 4), output_dim=4, hidden=(8,), pos_init='bad')
  with pytest.raises(ValueError, match="pos_init='bad'"):
    decoder.init(jax.random.PRNGKey(0), jnp.zeros((1, 3, 8)), jnp.ones((3,), bool))

  params = {'decoder': {'mlp': {'dense_0': {'kernel': jnp.ones(2), 'bias': jnp.ones(2)}}},
            'corrector': {'to_q': {'kernel': jnp.ones(2)}, 'to_v': {'kernel': jnp.ones(2)}}}
  scaled = params_lib.scale_init(params, (('decoder/mlp/.*/kernel', 2.0), ('corrector/to_q/kernel', 3.0),
                                     ('corrector/.*', 5.0)))
  assert float(scaled['decoder']['mlp']['dense_0']['kernel'][0]) == 2.0
  assert float(scaled['decoder']['mlp']['dense_0']['bias'][0]) == 1.0
  assert float(scaled['corrector']['to_q']['kernel'][0]) == 3.0  # first match wins
  assert float(scaled['corrector']['to_v']['kernel'][0]) == 5.0
  assert params_lib.scale_init(params, ()) is params


@pytest.mark.slow  # 19 s on 2 cores
def test_decoder_remat_gives_the_same_loss_and_gradients():
  _, model = _stack()
  _, remat = _stack(**{'decoder.remat': True})
  feats, targets = _inputs()
  params = _init(model, feats, targets)
  active = jnp.arange(model.max_slots) < 3

  def loss(m):
    def fn(p):
      out = m.apply({'params': p}, feats, targets, active, method=m.process)
      return jnp.mean((out['recon'] - out['targets']) ** 2) + jnp.mean(out['dec_masks'] ** 2)
    return jax.jit(jax.value_and_grad(fn))(params)

  (l0, g0), (l1, g1) = loss(model), loss(remat)
  assert 'remat' in str(jax.make_jaxpr(lambda p: remat.apply(
      {'params': p}, feats, targets, active, method=remat.process))(params))
  np.testing.assert_allclose(l0, l1, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_cnn_encoder_targets_are_patch_pixels_and_it_trains():
  config = tiny_config()
  model = video_model.build_model(config)
  p = config.model.encoder.cnn_patch_size
  assert model.target_dim == p * p * 3
  video = jax.random.normal(jax.random.PRNGKey(0), (1, 2, 16, 16, 3))
  params = jax.jit(lambda r: model.init(r, video, method=model.encode))(
      jax.random.PRNGKey(1))['params']
  assert set(params) == {'encoder'}
  encode = lambda prm: model.apply({'params': prm}, video, method=model.encode)
  features, targets = jax.jit(encode)(params)
  assert features.shape == (1, 2, model.num_patches, config.model.encoder.cnn_features)
  np.testing.assert_array_equal(targets[0, 1, 0], video[0, 1, :p, :p].reshape(-1))
  np.testing.assert_array_equal(targets[0, 0, 1], video[0, 0, :p, p:2 * p].reshape(-1))
  # The CNN is trainable: gradients reach it (DINOv2's stop-gradient is in test_dinov2).
  grads = jax.jit(jax.grad(lambda prm: jnp.sum(encode(prm)[0] ** 2)))(params)
  assert np.abs(np.asarray(grads['encoder']['patchify']['kernel'])).max() > 0
  assert encoders.load_encoder_params(config) is None
  config.model.encoder.weights = '/some/weights.npz'  # the CNN has none to load: say so
  with pytest.raises(ValueError, match=r"^model.encoder.kind='cnn' has no pretrained weights"):
    encoders.load_encoder_params(config)


@pytest.mark.parametrize('kernel,patchify', [(4, True), (3, False), (1, False)])
def test_patch_conv_is_nn_conv_as_a_matmul(kernel, patchify):
  # Same params (names, shapes, init values for the same key) and outputs as nn.Conv,
  # so CNN checkpoints written with either load into the other.
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 5))
  ours = encoders.PatchConv(6, kernel, patchify=patchify)
  conv = flax.linen.Conv(6, (kernel, kernel), strides=kernel if patchify else 1,
                         padding='VALID' if patchify else 'SAME')
  params = ours.init(jax.random.PRNGKey(0), x)
  conv_params = conv.init(jax.random.PRNGKey(0), x)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(conv_params)):
    np.testing.assert_array_equal(a, b)
  params = jax.tree.map(lambda a: a + 0.1, params)  # a nonzero bias too
  np.testing.assert_allclose(ours.apply(params, x), conv.apply(params, x), atol=1e-5)
  grad = lambda m: jax.grad(lambda p: jnp.sum(jnp.sin(m.apply(p, x))))(params)
  for a, b in zip(jax.tree.leaves(grad(ours)), jax.tree.leaves(grad(conv))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_bfloat16_compute_runs_finite():
  _, model = _stack(compute_dtype='bfloat16')
  feats, targets = _inputs()
  params = _init(_stack()[1], feats, targets)  # params stay float32
  out = _process(model)(params, feats, targets, jnp.ones((5,), bool))
  assert out['recon'].dtype == jnp.float32
  assert all(np.all(np.isfinite(v)) for v in out.values())


def test_bad_inputs_raise_clear_errors():
  _, model = _stack()
  feats, targets = _inputs()
  params = _init(model, feats, targets)
  apply = lambda f, x, a, **kw: model.apply({'params': params}, f, x, a, method=model.process,
                                            **kw)
  ok = jnp.ones((5,), bool)
  with pytest.raises(ValueError, match='D_in=8'):
    apply(feats[..., :7], targets, ok)
  with pytest.raises(ValueError, match='D_f=12'):
    apply(feats, targets[..., :11], ok)
  with pytest.raises(ValueError, match='max_slots=5'):
    apply(feats, targets, jnp.ones((6,), bool))
  with pytest.raises(ValueError, match='bool'):
    apply(feats, targets, jnp.ones((5,), jnp.int32))
  with pytest.raises(ValueError, match='rollout'):
    apply(feats, targets, ok, rollout='backward')
  with pytest.raises(ValueError, match='initial_state'):
    apply(feats, targets, ok, initial_state=jnp.zeros((2, 4, 16)))

  config = tiny_config()
  config.data.resolution = 18  # not a multiple of cnn_patch_size 4
  with pytest.raises(ValueError, match='not a multiple of the patch size 4'):
    video_model.build_model(config)
  config = tiny_config()
  model = video_model.build_model(config)
  with pytest.raises(ValueError, match='square'):
    model.init(jax.random.PRNGKey(0), jnp.zeros((1, 1, 16, 20, 3)), jnp.ones((5,), bool))
  config.model.encoder.kind = 'resnet'
  with pytest.raises(ValueError, match="encoder.kind='resnet'"):
    video_model.build_model(config)
