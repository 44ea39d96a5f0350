r"""Convert DINOv2 weights (timm, torch hub or Hugging Face) into our .npz params.

  python -m slotcurri_jax.tools.convert_dinov2 SRC DST [--variant vit_small_patch14]

SRC, any of:
  * timm `vit_small_patch14_dinov2.lvd142m` / `vit_base_patch14_dinov2.lvd142m`
    (https://huggingface.co/timm/<name>, file model.safetensors);
  * Hugging Face facebook/dinov2-small / facebook/dinov2-base (model.safetensors);
  * the torch-hub files dinov2_vits14_pretrain.pth / dinov2_vitb14_pretrain.pth
    (https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_pretrain.pth;
    reading .pth needs torch).
DST: an .npz of '/'-joined param paths; the default location the model looks in is
~/.cache/slotcurri_jax/dinov2/<variant>.npz (config.model.encoder.weights='' ).
"""
from __future__ import annotations

import argparse
import pathlib
import sys

from slotcurri_jax.models import dinov2
from slotcurri_jax.models import encoders


def convert(src: str | pathlib.Path, dst: str | pathlib.Path, variant: str | None = None) -> dict:
  """Read SRC, convert to our params, check the architecture, write DST. Returns the arch."""
  params = encoders.read_weights(pathlib.Path(src))
  if 'blocks_0' not in params:
    params = dinov2.state_dict_to_params(params)
  arch = dinov2.architecture_of(params)
  if variant is not None:
    want = encoders.variant_architecture(variant)
    if (arch['embed_dim'], arch['depth']) != (want['embed_dim'], want['depth']):
      raise ValueError(f'{src} holds a ViT with {arch}, not {variant} '
                       f'(embed_dim={want["embed_dim"]}, depth={want["depth"]})')
  encoders.save_params_npz(params, dst)
  return arch


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('src', help='timm/torch-hub/HF weights (.safetensors, .pth, .bin, .npz)')
  parser.add_argument('dst', help='output .npz')
  parser.add_argument('--variant', default=None, choices=sorted(dinov2.VARIANTS),
                      help='check that the weights are this variant')
  args = parser.parse_args(argv)
  arch = convert(args.src, args.dst, args.variant)
  print(f'wrote {args.dst}: DINOv2 ViT embed_dim={arch["embed_dim"]} depth={arch["depth"]}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
