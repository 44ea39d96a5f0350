"""A model's param tree: its fresh values, its shapes, and the one check that a given
tree fits it.

Every tree that enters a model from outside (a checkpoint for evaluation or inference,
imported reference weights, pretrained encoder weights, a golden fixture's params, a
workdir being resumed) is compared with the model's own tree here, so a config that
does not match the weights gets one message listing the differing params by their
'/'-joined names ('decoder/mlp/dense_0/kernel').
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from slotcurri_jax import errors
from slotcurri_jax import parallel


def init(model, spec, config, rng: jax.Array) -> Any:
  """Freshly initialised params of `model` (a VideoSlotModel with encoder `spec`, an
  `encoders.EncoderSpec`): the reference init, then `config.model.init_gains`."""
  active = jnp.ones((config.model.max_slots,), bool)
  params = model.init(rng, spec.example_input(config), active)['params']
  return scale_init(params, config.model.init_gains)


def template(model, spec, config) -> Any:
  """`init`'s tree as ShapeDtypeStructs: nothing computed, nothing allocated."""
  return jax.eval_shape(lambda: init(model, spec, config, jax.random.PRNGKey(0)))


def scale_init(params: Any, gains: Sequence[tuple[str, float]]) -> Any:
  """Multiplies the initial value of every param whose '/'-joined path fully matches a
  regex of `gains` ((regex, gain) pairs; the first match wins; () = reference init)."""
  if not gains:
    return params
  compiled = [(re.compile(pattern), float(gain)) for pattern, gain in gains]

  def scale(path, x):
    name = parallel.path_name(path)
    gain = next((g for rx, g in compiled if rx.fullmatch(name)), 1.0)
    return x * gain if gain != 1.0 else x

  return jax.tree_util.tree_map_with_path(scale, params)


def shapes(tree: Any) -> dict[str, tuple]:
  """'/'-joined path -> shape of every leaf (arrays, ShapeDtypeStructs, orbax metadata)."""
  return {parallel.path_name(path): tuple(leaf.shape) if hasattr(leaf, 'shape') else np.shape(leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def differences(given: Mapping[str, tuple], model: Mapping[str, tuple],
                given_name: str = 'given') -> list[str]:
  """Every param where two `shapes` maps differ: missing from `given`, not in the model,
  or of another shape; sorted by name."""
  out = []
  for name in sorted(set(given) | set(model)):
    if name not in given:
      out.append(f'{name}: not in the {given_name}')
    elif name not in model:
      out.append(f'{name}: not in the model')
    elif tuple(given[name]) != tuple(model[name]):
      out.append(f'{name}: {given_name} {tuple(given[name])}, model {tuple(model[name])}')
  return out


def check_fits(given: Any, expected: Any, *, source: str, fix: str) -> None:
  """Raise a user error (ValueError) if the tree `given` does not have the names and
  shapes of `expected` (the model's params or their `template`).

  source: what `given` is, for the message ('checkpoint /tmp/run'); fix: what to do.
  """
  diffs = differences(shapes(given), shapes(expected))
  if diffs:
    raise errors.mark(ValueError(
        f'{source} does not fit the model of this config ({len(diffs)} params differ, e.g. '
        f'{"; ".join(diffs[:4])}): {fix}'))
