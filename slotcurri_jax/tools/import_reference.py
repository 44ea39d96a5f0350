r"""Import a reference (SlotContrast / SlotCurri / SSync PyTorch) checkpoint into our params.

  python -m slotcurri_jax.tools.import_reference SRC.ckpt|.pt|.pth|.npz|.safetensors DST.npz \
      [--config configs/movi_c.py]

SRC: a Lightning .ckpt (its 'state_dict', 'model.' prefix stripped) or a plain state
dict (.pt/.pth need torch, loaded with weights_only=True; .npz is read with
allow_pickle=False, optionally with 'param/' prefixed names as in the golden fixtures).
DST: an .npz of our params, one array per '/'-joined path (`encoders.load_params_npz`
reads it back). A frozen DINOv2 inside the checkpoint ('encoder.module.backbone.*')
becomes params['encoder']; without it, load the backbone with `load_encoder_params`.

Name mapping (reference -> ours; a PyTorch Linear weight [out, in] becomes kernel [in, out]):
  initializer.slots [1, K, D]                    initializer/placeholders [K, D]
  encoder.module.output_transform.layers.{0,1,3} feature_mlp/{norm, dense_0, dense_1}
  processor.module.corrector.{to_q,to_k,to_v}    corrector/{to_q,to_k,to_v}/kernel
  processor.module.corrector.gru.*_ih / *_hh     corrector/gru/input, corrector/gru/hidden
  processor.module.corrector.mlp.layers.{0,1,3}  corrector/mlp/{norm, dense_0, dense_1}
  processor.module.corrector.norm_{features,slots}  corrector/norm_{features,slots}
  processor.module.predictor.blocks.i.{norm1,norm2,linear1,linear2}  predictor/blocks_i/...
  processor.module.predictor.blocks.i.self_attn.{qkv,out_proj}       predictor/blocks_i/...
  decoder.module.pos_emb [1, 1, N, D]            decoder/pos_emb [N, D]
  decoder.module.mlp.layers.{0,2,4,6}            decoder/mlp/dense_{0,1,2,3}
"""
from __future__ import annotations

import argparse
import math
import pathlib
import re
import sys
from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np

from slotcurri_jax import config as config_lib
from slotcurri_jax import params as params_lib
from slotcurri_jax.models import dinov2
from slotcurri_jax.models import encoders
from slotcurri_jax.models import video_model

BACKBONE_PREFIX = 'encoder.module.backbone.'

# (reference prefix, our path, the MLP's layer layout) for the three MLPs.
_MLPS = (
    ('encoder.module.output_transform.layers.', ('feature_mlp',), True),
    ('processor.module.corrector.mlp.layers.', ('corrector', 'mlp'), True),
    ('decoder.module.mlp.layers.', ('decoder', 'mlp'), False),
)
_CORRECTOR = 'processor.module.corrector.'
_PREDICTOR = re.compile(r'^processor\.module\.predictor\.blocks\.(\d+)\.'
                        r'(norm1|norm2|linear1|linear2|self_attn\.qkv|self_attn\.out_proj)\.'
                        r'(weight|bias)$')


def _leaf(kind: str, is_norm: bool) -> str:
  if is_norm:
    return 'scale' if kind == 'weight' else 'bias'
  return 'kernel' if kind == 'weight' else 'bias'


def our_path(ref_key: str) -> tuple[str, ...] | None:
  """Our param path of a reference state-dict key (None when the key is not ours)."""
  if ref_key == 'initializer.slots':
    return ('initializer', 'placeholders')
  if ref_key == 'decoder.module.pos_emb':
    return ('decoder', 'pos_emb')
  for prefix, path, norm_first in _MLPS:
    m = re.match(re.escape(prefix) + r'(\d+)\.(weight|bias)$', ref_key)
    if m:
      index, kind = int(m.group(1)), m.group(2)
      if norm_first and index == 0:
        return path + ('norm', _leaf(kind, True))
      offset = 1 if norm_first else 0
      if (index - offset) % 2:
        return None  # activation positions hold no params
      return path + (f'dense_{(index - offset) // 2}', _leaf(kind, False))
  m = re.match(re.escape(_CORRECTOR) + r'(to_q|to_k|to_v)\.weight$', ref_key)
  if m:
    return ('corrector', m.group(1), 'kernel')
  m = re.match(re.escape(_CORRECTOR) + r'(norm_features|norm_slots)\.(weight|bias)$', ref_key)
  if m:
    return ('corrector', m.group(1), _leaf(m.group(2), True))
  m = re.match(re.escape(_CORRECTOR) + r'gru\.(weight|bias)_(ih|hh)$', ref_key)
  if m:
    return ('corrector', 'gru', 'input' if m.group(2) == 'ih' else 'hidden',
            _leaf(m.group(1), False))
  m = _PREDICTOR.match(ref_key)
  if m:
    module = m.group(2).replace('self_attn.', '')
    return ('predictor', f'blocks_{m.group(1)}', module,
            _leaf(m.group(3), module.startswith('norm')))
  return None


def expected_reference_keys(num_predictor_blocks: int, num_decoder_layers: int) -> list[str]:
  """Every slot-stack key of a reference state dict, in the reference's order."""
  wb = ('weight', 'bias')
  keys = ['initializer.slots']
  keys += [f'encoder.module.output_transform.layers.{i}.{k}' for i in (0, 1, 3) for k in wb]
  keys += [f'{_CORRECTOR}{m}.weight' for m in ('to_k', 'to_v', 'to_q')]
  keys += [f'{_CORRECTOR}gru.{k}' for k in ('weight_ih', 'weight_hh', 'bias_ih', 'bias_hh')]
  keys += [f'{_CORRECTOR}mlp.layers.{i}.{k}' for i in (0, 1, 3) for k in wb]
  keys += [f'{_CORRECTOR}{m}.{k}' for m in ('norm_features', 'norm_slots') for k in wb]
  for b in range(num_predictor_blocks):
    keys += [f'processor.module.predictor.blocks.{b}.{m}.{k}'
             for m in ('self_attn.qkv', 'self_attn.out_proj', 'linear1', 'linear2', 'norm1',
                       'norm2') for k in wb]
  keys += ['decoder.module.pos_emb']
  keys += [f'decoder.module.mlp.layers.{2 * i}.{k}' for i in range(num_decoder_layers) for k in wb]
  return keys


def _to_ours(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
  if path[-1] == 'kernel':
    return value.T
  if path[-1] == 'placeholders':
    return value.reshape(value.shape[-2:])  # [1, K, D] -> [K, D]
  if path[-1] == 'pos_emb':
    return value.reshape(value.shape[-2:])  # [1, 1, N, D] -> [N, D]
  return value


def _to_reference(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
  if path[-1] == 'kernel':
    return value.T
  if path[-1] == 'placeholders':
    return value[None]
  if path[-1] == 'pos_emb':
    return value[None, None]
  return value


def _counts(config, state_dict_keys) -> tuple[int, int]:
  """Predictor blocks and decoder Linears: from the config, else from the keys."""
  if config is not None:
    return config.model.predictor.num_blocks, len(config.model.decoder.hidden) + 1
  blocks = {int(m.group(1)) for k in state_dict_keys for m in [_PREDICTOR.match(k)] if m}
  dec = {int(m.group(1)) for k in state_dict_keys
         for m in [re.match(r'^decoder\.module\.mlp\.layers\.(\d+)\.', k)] if m}
  return len(blocks), len(dec)


def state_dict_to_params(state_dict: Mapping[str, np.ndarray], config=None) -> dict:
  """Reference state dict (names as the fixtures' `param/<key>`) -> our params pytree.

  Args:
    state_dict: {reference key: array}. Backbone keys ('encoder.module.backbone.*',
      timm names below it, an optional 'model.' level) become params['encoder'].
    config: our config. When given, the predictor depth and decoder layer count come
      from it and every array's shape is checked against the model it describes.

  Raises ValueError listing missing and unexpected keys by name, or shape mismatches.
  """
  backbone = {}
  slot_stack = {}
  for key, value in state_dict.items():
    if key.startswith(BACKBONE_PREFIX):
      backbone[re.sub(r'^model\.', '', key[len(BACKBONE_PREFIX):])] = np.asarray(value)
    else:
      slot_stack[key] = np.asarray(value)
  expected = expected_reference_keys(*_counts(config, slot_stack))
  missing = [k for k in expected if k not in slot_stack]
  unexpected = sorted(k for k in slot_stack if k not in set(expected))
  if missing or unexpected:
    raise ValueError(f'reference checkpoint does not match the model: missing keys '
                     f'{missing or "none"}; unexpected keys {unexpected or "none"}')
  flat = {our_path(k): _to_ours(our_path(k), slot_stack[k]) for k in expected}
  params = flax.traverse_util.unflatten_dict(flat)
  if backbone:
    params['encoder'] = dinov2.state_dict_to_params(backbone)
  if config is not None:  # the slot stack against the config's (the backbone has its own check)
    params_lib.check_fits({k: v for k, v in params.items() if k != 'encoder'},
                          slot_stack_template(config, params), source='the reference checkpoint',
                          fix='pass the --config it was trained with')
  return params


def params_to_state_dict(params: Any, config=None) -> dict[str, np.ndarray]:
  """Our slot-stack params (or gradients) -> {reference key: array in reference layout}."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
  if config is not None:
    counts = _counts(config, ())
  else:
    counts = (sum(1 for k in params.get('predictor', {}) if k.startswith('blocks_')),
              len(params['decoder']['mlp']))
  return {k: np.asarray(_to_reference(our_path(k), np.asarray(flat[our_path(k)])))
          for k in expected_reference_keys(*counts)}


def slot_stack_template(config, params) -> Any:
  """Shapes of the slot stack `config` describes, with the encoder sizes read from `params`."""
  input_dim = params['feature_mlp']['dense_0']['kernel'].shape[0]
  target_dim = params['decoder']['mlp'][f'dense_{len(config.model.decoder.hidden)}'][
      'kernel'].shape[1] - 1
  num_patches = params['decoder']['pos_emb'].shape[0]
  side = math.isqrt(num_patches)  # the reference stores N only; its grids are square
  if side * side != num_patches:
    raise ValueError(f'the reference checkpoint\'s decoder has {num_patches} positions, not a '
                     'square patch grid')
  model = video_model.build_slot_stack(config, input_dim, target_dim, (side, side))
  feats = jnp.zeros((1, 1, num_patches, input_dim))
  targets = jnp.zeros((1, 1, num_patches, target_dim))
  active = jnp.ones((config.model.max_slots,), bool)
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), feats, targets, active,
                                           method=model.process))['params']


def read_state_dict(path: str | pathlib.Path) -> dict[str, np.ndarray]:
  """A reference checkpoint as {key: float32 array}: Lightning 'state_dict' unwrapped and
  its 'model.' prefix stripped; fixture-style 'param/' prefixes stripped."""
  path = pathlib.Path(path)
  if path.suffix == '.npz':
    with np.load(path, allow_pickle=False) as z:
      sd = {k: z[k] for k in z.files}
    if any(k.startswith('param/') for k in sd):
      sd = {k[len('param/'):]: v for k, v in sd.items() if k.startswith('param/')}
  else:
    sd = dict(encoders.read_weights(path))
  if sd and all(k.startswith('model.') for k in sd):
    sd = {k[len('model.'):]: v for k, v in sd.items()}
  return {k: np.asarray(v, np.float32) for k, v in sd.items()}


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('src', help='reference checkpoint: .ckpt, .pt, .pth, .npz, .safetensors')
  parser.add_argument('dst', help='output .npz of our params')
  parser.add_argument('--config', default=None,
                      help='our config file (e.g. configs/movi_c.py[:variant]) to check shapes')
  args = parser.parse_args(argv)
  config = config_lib.load(args.config) if args.config else None
  params = state_dict_to_params(read_state_dict(args.src), config)
  encoders.save_params_npz(params, args.dst)
  n = sum(np.asarray(x).size for x in jax.tree.leaves(params))
  print(f'wrote {args.dst}: {n} parameters')
  return 0


if __name__ == '__main__':
  sys.exit(main())
