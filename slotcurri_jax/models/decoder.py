"""The MLP broadcast decoder with alpha masks (SPEC §4.6)."""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from slotcurri_jax.models import layers


class MLPDecoder(nn.Module):
  """Decodes each slot at every patch position; alpha masks mix the per-slot outputs.

  Params: 'pos_emb' [N, D_s] (reference [1, 1, N, D_s]), 'mlp' (dense_0 ... dense_L;
  the last one has D_f + 1 outputs, the alpha logit is the **last** channel).

  Attributes:
    num_patches: N, the patch count of the frame.
    output_dim: D_f, the reconstruction width.
    hidden: hidden widths of the MLP (ReLU after each).
    dtype: compute dtype of the MLP; the masks are a float32 softmax.
  """
  num_patches: int
  output_dim: int
  hidden: Sequence[int] = (1024, 1024, 1024)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, slots: jax.Array, active: jax.Array) -> dict[str, jax.Array]:
    """slots: [..., K, D_s] corrected slots; active: [K] bool.

    Returns recon [..., N, D_f]; masks [..., K, N] (softmax over active slots, exactly
    0 on inactive rows); alpha [..., K, N] (alpha logits, unmasked).
    """
    d = slots.shape[-1]
    pos_emb = self.param('pos_emb', layers.scaled_normal_init(d), (self.num_patches, d))
    x = slots[..., :, None, :] + pos_emb  # broadcast: [..., K, N, D_s]
    out = layers.MLP(hidden=tuple(self.hidden), out_features=self.output_dim + 1,
                     dtype=self.dtype, name='mlp')(x)
    per_slot, alpha = out[..., :self.output_dim], out[..., self.output_dim].astype(jnp.float32)
    masks = jax.nn.softmax(layers.mask_slots(alpha, active, axis=alpha.ndim - 2), axis=-2)
    recon = jnp.einsum('...kn,...knd->...nd', masks, per_slot.astype(jnp.float32))
    return {'recon': recon, 'masks': masks, 'alpha': alpha}
