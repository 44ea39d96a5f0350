"""Frame encoders (frozen DINOv2, the demo's small CNN, or precomputed tokens) and their weights.

`encoder_spec(config)` is the one place that turns `config.model.encoder.kind` into what
the model, the optimizer, the data and the weight loading need (`EncoderSpec`):
  'dinov2': the frozen ViT of models/dinov2.py. Features and reconstruction target are
    the same last-block tokens (D_f = 384 / 768).
  'cnn': a small trainable CNN with one feature vector per `cnn_patch_size` patch. Its
    reconstruction target is the frame's patch pixels, [N, p*p*3] in (row, column,
    channel) order within the patch, so D_f = p*p*3.
  'tokens': no encoder; the batch holds precomputed backbone tokens batch['features']
    [B, T, G*G, token_dim], which are also the reconstruction target.

Each spec names its weight loader (`EncoderSpec.load_weights`; `load_encoder_params` calls
it): only DINOv2 has pretrained weights. DINOv2 weights: `encoder.weights`, or by default
`~/.cache/slotcurri_jax/dinov2/<variant>.npz` (DEFAULT_WEIGHTS_DIR), in any of these forms:
  * our converted .npz (flattened 'a/b/c' paths) or .msgpack (flax.serialization);
  * a timm / torch-hub state dict (.pth/.pt/.bin needs torch; or .safetensors);
  * a Hugging Face facebook/dinov2-{small,base} checkpoint (.safetensors or .bin).
Convert once with `python -m slotcurri_jax.tools.convert_dinov2 SRC DST`.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import socket
from typing import Any, Callable, Mapping
import urllib.parse

from absl import logging
import flax
import flax.linen as nn
import jax.numpy as jnp
import huggingface_hub
from huggingface_hub import constants as hf_constants
import numpy as np
import safetensors.numpy

from slotcurri_jax.models import dinov2
from slotcurri_jax.models import layers

DEFAULT_WEIGHTS_DIR = pathlib.Path.home() / '.cache' / 'slotcurri_jax' / 'dinov2'


class PatchConv(nn.Module):
  """A stride-1 'SAME' convolution, or a stride = kernel 'VALID' one (`patchify`), as one
  matmul over gathered windows.

  The params are nn.Conv's (kernel [kh, kw, C_in, C_out] lecun-normal, bias [C_out] zeros)
  and so is the result; the matmul form is what makes the demo fast on CPU, where XLA's
  kernel gradient of a small convolution runs at a few GFLOP/s.
  """
  features: int
  kernel_size: int
  patchify: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """x: [B, H, W, C_in] -> [B, H', W', C_out]; H' = H / k when patchify, else H."""
    b, h, w, c = x.shape
    k = self.kernel_size
    kernel = self.param('kernel', nn.initializers.lecun_normal(), (k, k, c, self.features))
    bias = self.param('bias', nn.initializers.zeros_init(), (self.features,))
    if self.patchify:  # [B, H/k * W/k, k*k*C_in], pixels (row, column, channel) = kernel's
      windows = patchify(x, k).reshape(b, h // k, w // k, k * k * c)
    else:
      lo = (k - 1) // 2
      padded = jnp.pad(x, ((0, 0), (lo, k - 1 - lo), (lo, k - 1 - lo), (0, 0)))
      windows = jnp.stack([jnp.stack([padded[:, i:i + h, j:j + w] for j in range(k)], axis=3)
                           for i in range(k)], axis=3)  # [B, H, W, k, k, C_in]
    windows = windows.reshape(windows.shape[:3] + (k * k * c,)).astype(self.dtype)
    y = windows @ kernel.reshape(k * k * c, self.features).astype(self.dtype)
    return y + bias.astype(self.dtype)


class CNNEncoder(nn.Module):
  """Patchify conv -> 3x3 conv -> 1x1 conv, ReLUs between, plus a learned position term.

  Cheap enough for the 2-core demo: all convolutions after the first run on the
  patch grid. The position term (a Dense map of the normalised patch coordinates,
  as in SAVi) gives the tokens the position information DINOv2 tokens carry, since
  the slot stack adds none before slot attention (docs/method.md §4.2).
  """
  patch_size: int
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jnp.ndarray) -> jnp.ndarray:
    """images: [B, H, W, 3] -> features [B, (H/p)*(W/p), features] float32."""
    b, h, w, _ = images.shape
    p, f = self.patch_size, self.features
    check_grid(images.shape[1:], p)
    x = PatchConv(f, p, patchify=True, dtype=self.dtype, name='patchify')(images)
    g = h // p
    ys, xs = jnp.meshgrid(jnp.linspace(0.0, 1.0, g), jnp.linspace(0.0, 1.0, g), indexing='ij')
    coords = jnp.stack([ys, xs, 1.0 - ys, 1.0 - xs], axis=-1)
    x = nn.relu(x + nn.Dense(f, dtype=self.dtype, name='position')(coords))
    x = nn.relu(PatchConv(f, 3, dtype=self.dtype, name='conv')(x))
    x = PatchConv(f, 1, dtype=self.dtype, name='out')(x)
    return x.reshape(b, g * g, f).astype(jnp.float32)


def check_grid(image_shape, patch_size: int) -> int:
  """Patch-grid side of a square [H, W, 3] frame; errors name the bad size and the fix."""
  h, w = image_shape[0], image_shape[1]
  if h != w:
    raise ValueError(f'frames must be square, got {h}x{w}; resize to data.resolution first')
  if h % patch_size:
    raise ValueError(f'image size {h} is not a multiple of the patch size {patch_size}; '
                     f'use e.g. data.resolution={(h // patch_size) * patch_size or patch_size}')
  return h // patch_size


def patchify(images: jnp.ndarray, patch_size: int) -> jnp.ndarray:
  """[B, H, W, C] -> [B, (H/p)*(W/p), p*p*C], patches row-major, pixels (row, col, channel)."""
  b, h, w, c = images.shape
  p = patch_size
  x = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // p) * (w // p), p * p * c)


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
  """Everything the rest of the project needs to know of an encoder, decided once.

  module: the flax module mapping frames [B, H, W, 3] to tokens [B, N, input_dim], or
    None for the token-input encoder (the batch already holds the tokens).
  input_key: the batch entry the model reads: 'video' [B, T, H, W, 3] float32 or
    'features' [B, T, N, input_dim] (precomputed backbone tokens).
  input_dim, target_dim: widths of the slot stack's input tokens and of its
    reconstruction target.
  grid: the patch grid (rows, columns); N = rows * columns patches, row-major.
  patch_size: pixels per patch side (0 for token input).
  frozen: the encoder's params are not trained and no gradient flows into it.
  target: 'features' (reconstruct the encoder's tokens) or 'patches' (the frame's
    patch pixels, [N, p * p * 3]).
  load_weights: config -> the pretrained params['encoder'] (or None when the config
    asks for a random backbone), or None for an encoder without pretrained weights.
  """
  kind: str
  module: nn.Module | None
  input_key: str
  input_dim: int
  target_dim: int
  grid: tuple[int, int]
  patch_size: int
  frozen: bool
  target: str
  load_weights: Callable[[Any], Any] | None = None

  @property
  def num_patches(self) -> int:
    return self.grid[0] * self.grid[1]

  def example_input(self, config) -> jnp.ndarray:
    """A zero batch of one clip for `model.init`: [1, T, ...] of the input_key's layout."""
    t = config.data.train_clip_len
    if self.input_key == 'features':
      return jnp.zeros((1, t, self.num_patches, self.input_dim), jnp.float32)
    r = config.data.resolution
    return jnp.zeros((1, t, r, r, 3), jnp.float32)


def _dinov2_spec(config) -> EncoderSpec:
  ec = config.model.encoder
  arch = variant_architecture(ec.variant)
  grid = check_grid((config.data.resolution, config.data.resolution), dinov2.PATCH_SIZE)
  module = dinov2.DinoV2(arch['embed_dim'], arch['depth'], arch['num_heads'],
                         dtype=layers.dtype_from_name(ec.dtype))
  return EncoderSpec(kind='dinov2', module=module, input_key='video',
                     input_dim=arch['embed_dim'], target_dim=arch['embed_dim'], grid=(grid, grid),
                     patch_size=dinov2.PATCH_SIZE, frozen=True, target='features',
                     load_weights=_load_dinov2)


def _cnn_spec(config) -> EncoderSpec:
  ec = config.model.encoder
  grid = check_grid((config.data.resolution, config.data.resolution), ec.cnn_patch_size)
  module = CNNEncoder(ec.cnn_patch_size, ec.cnn_features, dtype=layers.dtype_from_name(ec.dtype))
  return EncoderSpec(kind='cnn', module=module, input_key='video', input_dim=ec.cnn_features,
                     target_dim=ec.cnn_patch_size ** 2 * 3, grid=(grid, grid),
                     patch_size=ec.cnn_patch_size, frozen=False, target='patches')


def _tokens_spec(config) -> EncoderSpec:
  """Precomputed frozen-backbone tokens (batch['features']): they are both the slot
  stack's input and its reconstruction target, as with the frozen DINOv2."""
  ec = config.model.encoder
  if ec.token_dim < 1 or ec.token_grid < 1:
    raise ValueError(f'model.encoder.kind=\'tokens\' needs model.encoder.token_dim and '
                     f'token_grid (got {ec.token_dim}, {ec.token_grid}): the width and the '
                     'patch-grid side of the precomputed tokens')
  return EncoderSpec(kind='tokens', module=None, input_key='features', input_dim=ec.token_dim,
                     target_dim=ec.token_dim, grid=(ec.token_grid, ec.token_grid), patch_size=0,
                     frozen=True, target='features')


# The encoder registry: model.encoder.kind -> spec builder. Adding an encoder family is
# one entry here and its own module.
ENCODERS = {'dinov2': _dinov2_spec, 'cnn': _cnn_spec, 'tokens': _tokens_spec}


def encoder_spec(config) -> EncoderSpec:
  """The EncoderSpec of `config.model.encoder.kind` (see ENCODERS)."""
  kind = config.model.encoder.kind
  if kind not in ENCODERS:
    raise ValueError(f'model.encoder.kind={kind!r}; use one of {sorted(ENCODERS)}')
  return ENCODERS[kind](config)


def variant_architecture(variant: str) -> dict:
  if variant not in dinov2.VARIANTS:
    raise ValueError(f'model.encoder.variant={variant!r}; use one of {sorted(dinov2.VARIANTS)}')
  return dinov2.VARIANTS[variant]


# ------------------------------------------------------------------ weights

def default_weights_path(variant: str) -> pathlib.Path:
  return DEFAULT_WEIGHTS_DIR / f'{variant}.npz'


def load_encoder_params(config, spec: EncoderSpec | None = None) -> Any | None:
  """Pretrained params for params['encoder'] by `spec.load_weights`, or None when the
  init's random ones stand (spec: the run's EncoderSpec; built from config when None).

  An encoder without pretrained weights (the CNN, trained from scratch; token input)
  says so in one log line, and model.encoder.weights given for it is an error.
  """
  spec = spec or encoder_spec(config)
  if spec.load_weights is None:
    if config.model.encoder.weights:
      raise ValueError(f'model.encoder.kind={spec.kind!r} has no pretrained weights to load; '
                       'leave model.encoder.weights empty')
    logging.info('model.encoder.kind=%r has no pretrained weights: it starts from its init',
                 spec.kind)
    return None
  return spec.load_weights(config)


def _load_dinov2(config) -> Any | None:
  """The DINOv2 weights of model.encoder, or None with encoder.random_init=True (tests and
  benchmarks only). Otherwise they must be found: a missing file is fetched with
  huggingface_hub when this machine is online, else a FileNotFoundError says where to put
  which file. Never silently random.
  """
  ec = config.model.encoder
  arch = variant_architecture(ec.variant)
  if ec.random_init:
    return None
  path = pathlib.Path(os.path.expanduser(ec.weights)) if ec.weights else default_weights_path(
      ec.variant)
  if not path.exists() and ec.weights:  # a path the user named: never fetched over the network
    raise FileNotFoundError(f'DINOv2 weights not found at {path} (config.model.encoder.weights). '
                            + _how_to_get(ec.variant, path))
  if not path.exists():
    _download_from_hub(ec.variant, path)
  params = read_weights(path)
  if 'blocks_0' not in params:  # a flat timm / HF state dict, not our converted tree
    params = dinov2.state_dict_to_params(params)
  got = dinov2.architecture_of(params)
  want = dict(embed_dim=arch['embed_dim'], depth=arch['depth'])
  if got != want:
    raise ValueError(f'DINOv2 weights {path} have {got}, but model.encoder.variant='
                     f'{ec.variant!r} needs {want}')
  return params


def _how_to_get(variant: str, path: pathlib.Path) -> str:
  arch = dinov2.VARIANTS[variant]
  return (f'Get the timm weights `{arch["timm"]}` (https://huggingface.co/timm/{arch["timm"]}, '
          f'file model.safetensors) or the Hugging Face checkpoint '
          f'https://huggingface.co/{arch["hf"]} (model.safetensors), then run\n'
          f'  python -m slotcurri_jax.tools.convert_dinov2 SRC {path}\n'
          f'or point config.model.encoder.weights at SRC directly.')


def _hub_unreachable(timeout_s: float = 1.0) -> str | None:
  """Why the Hugging Face hub cannot be reached (one TCP connection, `timeout_s`), or None.
  Behind an HTTP(S) proxy the hub library's own connection decides: None."""
  if any(os.environ.get(v) for v in ('HTTPS_PROXY', 'https_proxy', 'ALL_PROXY', 'all_proxy')):
    return None
  url = urllib.parse.urlparse(hf_constants.ENDPOINT)
  try:
    port = url.port or (80 if url.scheme == 'http' else 443)
    socket.create_connection((url.hostname, port), timeout=timeout_s).close()
  except OSError as e:
    return f'{url.hostname} cannot be reached from this machine ({type(e).__name__}: {e})'
  return None


def _download_from_hub(variant: str, path: pathlib.Path) -> None:
  """Fetch facebook/dinov2-* with huggingface_hub (from its local cache, else when online)
  and convert it."""
  arch = dinov2.VARIANTS[variant]
  how = _how_to_get(variant, path)
  cached = huggingface_hub.try_to_load_from_cache(arch['hf'], 'model.safetensors')
  if isinstance(cached, str):  # downloaded before (an offline node with a filled cache)
    save_params_npz(dinov2.state_dict_to_params(read_weights(pathlib.Path(cached))), path)
    return
  if os.environ.get('HF_HUB_OFFLINE', '') not in ('', '0'):
    raise FileNotFoundError(f'DINOv2 weights not found at {path} (HF_HUB_OFFLINE is set). {how}')
  offline = _hub_unreachable()  # about a second offline, instead of the hub's retries
  if offline:
    raise FileNotFoundError(f'DINOv2 weights not found at {path} and {offline}. {how}')
  try:
    src = huggingface_hub.hf_hub_download(arch['hf'], 'model.safetensors')
  except Exception as e:  # network errors come in many types
    raise FileNotFoundError(f'DINOv2 weights not found at {path} and the download of '
                            f'{arch["hf"]} failed ({type(e).__name__}: {e}). {how}') from e
  save_params_npz(dinov2.state_dict_to_params(read_weights(pathlib.Path(src))), path)


def read_weights(path: pathlib.Path) -> Mapping[str, Any]:
  """A weights file as a flat {name: array} state dict, or our nested params tree.

  .npz: flattened 'a/b/c' paths (ours) are unflattened; other names are returned flat.
  .msgpack: flax.serialization. .safetensors: flat. .pth/.pt/.bin/.ckpt: torch
  (weights_only=True), a 'state_dict' / 'model' entry is unwrapped.
  """
  suffix = path.suffix.lower()
  if suffix == '.npz':
    return load_params_npz(path)
  if suffix == '.msgpack':
    return flax.serialization.msgpack_restore(path.read_bytes())
  if suffix == '.safetensors':
    return dict(safetensors.numpy.load_file(str(path)))
  if suffix in ('.pth', '.pt', '.bin', '.ckpt'):
    try:
      import torch  # pylint: disable=import-outside-toplevel  (optional: only for .pth files)
    except ImportError:
      raise ImportError(f'reading {path} needs torch (pip install torch); or convert it to '
                        '.safetensors / .npz on a machine that has torch') from None
    sd = torch.load(str(path), map_location='cpu', weights_only=True)
    for key in ('state_dict', 'model'):
      if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
        sd = sd[key]
    return {k: v.detach().float().numpy() for k, v in sd.items() if hasattr(v, 'detach')}
  raise ValueError(f'unknown weights format {path.suffix!r} for {path}; use .npz, .msgpack, '
                   '.safetensors, .pth, .pt, .bin or .ckpt')


def save_params_npz(params: Any, path: str | os.PathLike) -> None:
  """Write a params pytree as an .npz of '/'-joined paths (atomically)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep='/')
  tmp = path.with_name(path.name + '.tmp.npz')
  np.savez(tmp, **{k: np.asarray(v) for k, v in flat.items()})
  os.replace(tmp, path)


def load_params_npz(path: str | os.PathLike) -> dict:
  """Inverse of save_params_npz (keys without '/' come back flat, e.g. a timm state dict)."""
  with np.load(path, allow_pickle=False) as z:
    flat = {k: z[k] for k in z.files}
  if any('/' in k for k in flat):
    return flax.traverse_util.unflatten_dict(flat, sep='/')
  return flat
