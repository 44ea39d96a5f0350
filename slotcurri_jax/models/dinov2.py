"""The frozen DINOv2 ViT (docs/method.md §3) and the conversion of timm / Hugging Face weights.

Output: the tokens after the last block, **before** the final LayerNorm, CLS dropped
(docs/method.md §3.2); the final norm is therefore not even a parameter here. The position
embedding (stored for the native 37x37 grid) is resampled to the input grid with an
antialiased bicubic resize by target size, which matches the reference's
F.interpolate(bicubic, antialias=True) to 1e-7 (fixtures/README.md §5).

Our param tree (a Flax kernel is the transposed PyTorch weight):
  cls_token [1, 1, D], pos_embed [1, 1 + 37*37, D], patch_embed {kernel [p, p, 3, D], bias},
  blocks_i {norm1, qkv, proj, ls1 [D], norm2, fc1, fc2, ls2 [D]}.
"""
from __future__ import annotations

import math
import re
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# DINOv2 LayerNorms use eps 1e-6 (timm's ViT default), unlike the trainable model.
LN_EPS = 1e-6

# config.model.encoder.variant -> architecture, plus where its weights live.
VARIANTS = {
    'vit_small_patch14': dict(embed_dim=384, depth=12, num_heads=6,
                              timm='vit_small_patch14_dinov2.lvd142m', hf='facebook/dinov2-small',
                              hub='dinov2_vits14'),
    'vit_base_patch14': dict(embed_dim=768, depth=12, num_heads=12,
                             timm='vit_base_patch14_dinov2.lvd142m', hf='facebook/dinov2-base',
                             hub='dinov2_vitb14'),
}
PATCH_SIZE = 14
NATIVE_GRID = 37  # 518 px / 14


def resample_pos_embed(pos_embed: jax.Array, grid: int) -> jax.Array:
  """[1, 1 + G*G, D] -> [1, 1 + grid*grid, D]; the CLS row is kept, the G x G grid is
  resized bicubically with antialiasing, half-pixel centres, in float32 (docs/method.md §3.3)."""
  cls_row, rest = pos_embed[:, :1], pos_embed[:, 1:]
  native = int(round(math.sqrt(rest.shape[1])))
  d = rest.shape[-1]
  spatial = rest.reshape(native, native, d).astype(jnp.float32)
  spatial = jax.image.resize(spatial, (grid, grid, d), method='cubic', antialias=True)
  return jnp.concatenate([cls_row.astype(jnp.float32), spatial.reshape(1, grid * grid, d)], axis=1)


class Block(nn.Module):
  """Pre-norm ViT block with LayerScale: x += ls1*Attn(LN x); x += ls2*MLP(LN x)."""
  num_heads: int
  mlp_ratio: int = 4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, L, D] -> [B, L, D]."""
    b, length, d = x.shape
    head_dim = d // self.num_heads
    init = nn.initializers.truncated_normal(0.02)
    dense = lambda n, name: nn.Dense(n, kernel_init=init, dtype=self.dtype, name=name)
    norm = lambda name: nn.LayerNorm(epsilon=LN_EPS, dtype=jnp.float32, name=name)
    ls_init = nn.initializers.constant(1e-5)

    qkv = dense(3 * d, 'qkv')(norm('norm1')(x)).reshape(b, length, 3, self.num_heads, head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    logits = jnp.einsum('bqhd,bkhd->bhqk', q * head_dim ** -0.5, k).astype(jnp.float32)
    attn = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum('bhqk,bkhd->bqhd', attn, v).reshape(b, length, d)
    out = dense(d, 'proj')(out)
    x = x + self.param('ls1', ls_init, (d,)) * out.astype(jnp.float32)

    h = dense(self.mlp_ratio * d, 'fc1')(norm('norm2')(x))
    h = dense(d, 'fc2')(nn.gelu(h, approximate=False))  # exact erf GELU, as timm
    return x + self.param('ls2', ls_init, (d,)) * h.astype(jnp.float32)


class DinoV2(nn.Module):
  """DINOv2 ViT/14 feature extractor: images -> last-block tokens (pre-norm, no CLS).

  Attributes:
    embed_dim, depth, num_heads: the architecture (VARIANTS, or a fixture's tiny one).
    patch_size: pixels per patch side (14).
    native_grid: side of the stored position-embedding grid (37 = 518 / 14).
    mlp_ratio: MLP width in units of embed_dim.
    dtype: compute dtype ('float32' or bfloat16); LayerNorms, softmax and the residual
      stream stay float32.
  """
  embed_dim: int
  depth: int
  num_heads: int
  patch_size: int = PATCH_SIZE
  native_grid: int = NATIVE_GRID
  mlp_ratio: int = 4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    """images: [B, H, W, 3] ImageNet-normalised -> tokens [B, (H/p)*(W/p), embed_dim] float32."""
    b, h, w, c = images.shape
    p = self.patch_size
    if h != w or h % p or c != 3:
      raise ValueError(f'DINOv2 needs square RGB images whose side is a multiple of the patch '
                       f'size {p}; got {images.shape[1:]} (set data.resolution to e.g. 336 or 518)')
    grid = h // p
    d = self.embed_dim
    x = nn.Conv(d, (p, p), strides=(p, p), padding='VALID', dtype=self.dtype,
                kernel_init=nn.initializers.lecun_normal(), name='patch_embed')(images)
    x = x.reshape(b, grid * grid, d).astype(jnp.float32)
    cls_token = self.param('cls_token', nn.initializers.normal(1e-6), (1, 1, d))
    pos_embed = self.param('pos_embed', nn.initializers.normal(0.02),
                           (1, 1 + self.native_grid ** 2, d))
    x = jnp.concatenate([jnp.broadcast_to(cls_token, (b, 1, d)), x], axis=1)
    x = x + resample_pos_embed(pos_embed, grid)
    for i in range(self.depth):
      x = Block(self.num_heads, self.mlp_ratio, self.dtype, name=f'blocks_{i}')(x)
    return x[:, 1:]


# ------------------------------------------------------------------ weight conversion

# timm / torch-hub keys that exist but are not used by the feature path.
_UNUSED = re.compile(r'^(norm\.(weight|bias)|mask_token|head\..*|fc_norm\..*)$')


def _hf_to_timm(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Hugging Face Dinov2Model names -> timm names (q, k, v concatenated into qkv)."""
  sd = {re.sub(r'^dinov2\.', '', k): np.asarray(v) for k, v in state_dict.items()}
  out, qkv = {}, {}
  simple = [
      (r'^embeddings\.cls_token$', 'cls_token'),
      (r'^embeddings\.mask_token$', 'mask_token'),
      (r'^embeddings\.position_embeddings$', 'pos_embed'),
      (r'^embeddings\.patch_embeddings\.projection\.(weight|bias)$', r'patch_embed.proj.\1'),
      (r'^encoder\.layer\.(\d+)\.norm([12])\.(weight|bias)$', r'blocks.\1.norm\2.\3'),
      (r'^encoder\.layer\.(\d+)\.attention\.output\.dense\.(weight|bias)$',
       r'blocks.\1.attn.proj.\2'),
      (r'^encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1$', r'blocks.\1.ls\2.gamma'),
      (r'^encoder\.layer\.(\d+)\.mlp\.(fc[12])\.(weight|bias)$', r'blocks.\1.mlp.\2.\3'),
      (r'^layernorm\.(weight|bias)$', r'norm.\1'),
  ]
  for key, value in sd.items():
    m = re.match(r'^encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)$',
                 key)
    if m:
      qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = value
      continue
    for pattern, repl in simple:
      if re.match(pattern, key):
        out[re.sub(pattern, repl, key)] = value
        break
    else:
      out[key] = value  # left for the unexpected-key report
  for (layer, kind), parts in qkv.items():
    missing = [p for p in ('query', 'key', 'value') if p not in parts]
    if missing:
      raise ValueError(f'Hugging Face DINOv2 weights: layer {layer} lacks attention '
                       f'{missing} {kind}')
    out[f'blocks.{layer}.attn.qkv.{kind}'] = np.concatenate(
        [parts['query'], parts['key'], parts['value']], axis=0)
  return out


def is_hf_state_dict(state_dict: Mapping[str, Any]) -> bool:
  return any(re.match(r'^(dinov2\.)?(embeddings|encoder\.layer)\.', k) for k in state_dict)


def state_dict_to_params(state_dict: Mapping[str, Any]) -> dict:
  """timm / torch-hub or Hugging Face DINOv2 state dict (numpy arrays) -> our params.

  Raises ValueError listing missing and unexpected keys by name.
  """
  sd = _hf_to_timm(state_dict) if is_hf_state_dict(state_dict) else {
      k: np.asarray(v) for k, v in state_dict.items()}
  sd = {k: v for k, v in sd.items() if not _UNUSED.match(k)}
  depth = 1 + max([int(m.group(1)) for k in sd for m in [re.match(r'^blocks\.(\d+)\.', k)] if m],
                  default=-1)
  params: dict[str, Any] = {}
  used = set()

  def take(key):
    used.add(key)
    return sd.get(key)

  def linear(prefix):
    w, b = take(f'{prefix}.weight'), take(f'{prefix}.bias')
    return None if w is None or b is None else {'kernel': w.T, 'bias': b}

  def norm(prefix):
    w, b = take(f'{prefix}.weight'), take(f'{prefix}.bias')
    return None if w is None or b is None else {'scale': w, 'bias': b}

  params['cls_token'] = take('cls_token')
  params['pos_embed'] = take('pos_embed')
  w, b = take('patch_embed.proj.weight'), take('patch_embed.proj.bias')
  params['patch_embed'] = None if w is None else {'kernel': w.transpose(2, 3, 1, 0), 'bias': b}
  for i in range(depth):
    p = f'blocks.{i}'
    params[f'blocks_{i}'] = {
        'norm1': norm(f'{p}.norm1'), 'qkv': linear(f'{p}.attn.qkv'),
        'proj': linear(f'{p}.attn.proj'), 'ls1': take(f'{p}.ls1.gamma'),
        'norm2': norm(f'{p}.norm2'), 'fc1': linear(f'{p}.mlp.fc1'),
        'fc2': linear(f'{p}.mlp.fc2'), 'ls2': take(f'{p}.ls2.gamma')}
  missing = sorted(k for k in used if k not in sd)
  unexpected = sorted(k for k in sd if k not in used)
  if missing or unexpected or depth == 0:
    raise ValueError(f'not a DINOv2 ViT state dict: missing keys {missing or "none"}; '
                     f'unexpected keys {unexpected or "none"}')
  return jax.tree.map(lambda a: np.asarray(a, np.float32), params)


def architecture_of(params: Mapping[str, Any]) -> dict:
  """embed_dim / depth of a converted param tree (num_heads is not recoverable)."""
  return dict(embed_dim=int(params['cls_token'].shape[-1]),
              depth=sum(1 for k in params if k.startswith('blocks_')))
