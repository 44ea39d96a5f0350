"""Device mesh, shardings and host-local <-> global array conversion.

The mesh has two axes: 'data' (the batch is split along it) and 'fsdp'
(parameters may be split along it by rules; the batch is split over both, so
fsdp devices also do data parallelism). One device is a 1x1 mesh: the same
code path runs everywhere.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import jax
from jax.experimental import multihost_utils
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXES = ('data', 'fsdp')  # the batch dimension is split over both axes


def create_mesh(data: int = -1, fsdp: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ('data', 'fsdp') mesh over `devices` (default: all devices of all hosts)."""
  devices = list(jax.devices() if devices is None else devices)
  if fsdp < 1 or len(devices) % fsdp:
    raise ValueError(f'mesh.fsdp={fsdp} must be >= 1 and divide the {len(devices)} devices')
  if data == -1:
    data = len(devices) // fsdp
  if data * fsdp != len(devices):
    raise ValueError(f'mesh.data={data} x mesh.fsdp={fsdp} != {len(devices)} devices')
  return Mesh(np.asarray(devices).reshape(data, fsdp), ('data', 'fsdp'))


def mesh_from_config(config) -> Mesh:
  return create_mesh(config.mesh.data, config.mesh.fsdp)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over every device, the rest replicated."""
  return NamedSharding(mesh, P(DATA_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def host_to_global(batch: Any, mesh: Mesh) -> Any:
  """Host-local numpy batch pytree -> global jax.Arrays sharded on the batch axis.

  Each process passes its own `global_batch / process_count` examples; the
  result has the global batch as leading dimension. Works unchanged with one
  process.
  """
  sharding = batch_sharding(mesh)

  def to_global(x):
    x = np.asarray(x)
    local_devices = len(mesh.local_devices)
    if x.shape[0] % local_devices:
      raise ValueError(
          f'host batch of {x.shape[0]} examples does not split over {local_devices} local devices')
    return jax.make_array_from_process_local_data(sharding, x)

  return jax.tree.map(to_global, batch)


def global_to_host(x: Any) -> Any:
  """Global (possibly multi-host) arrays -> full numpy arrays on every host."""
  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, x)
  return multihost_utils.process_allgather(x, tiled=True)


def path_name(path) -> str:
  """A pytree key path as the '/'-joined name param_rules match: 'decoder/mlp/dense_0/kernel'."""
  return jax.tree_util.keystr(tuple(path), simple=True, separator='/')


def param_specs(params: Any, rules: Sequence[tuple[str, tuple]] = ()) -> Any:
  """PartitionSpecs for a param pytree: the first rule whose regex matches the
  '/'-joined path gives the spec; unmatched params are replicated."""
  compiled = [(re.compile(pattern), tuple(spec)) for pattern, spec in rules]

  def spec_for(path, leaf):
    name = path_name(path)
    for pattern, spec in compiled:
      if pattern.search(name):
        if len(spec) > np.ndim(leaf):
          raise ValueError(f'param rule {pattern.pattern!r} gives {spec} for {name} of shape {np.shape(leaf)}')
        return P(*spec)
    return P()

  return jax.tree_util.tree_map_with_path(spec_for, params)


def largest_dim_rules(params: Any, ways: int) -> tuple:
  """param_rules that split every param of 2 or more dimensions over 'fsdp' on its largest
  dimension that `ways` divides; the rest stays replicated. Each rule matches one param's
  path, also as the end of a longer path (its optimizer moments')."""
  rules = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    shape = np.shape(leaf)
    dims = [int(d) for d in np.argsort(shape, kind='stable')[::-1] if shape[d] % ways == 0]
    if len(shape) >= 2 and dims:
      spec = tuple('fsdp' if d == dims[0] else None for d in range(len(shape)))
      rules.append((f'(^|/){re.escape(path_name(path))}$', spec))
  return tuple(rules)


def param_shardings(params: Any, mesh: Mesh, rules: Sequence[tuple[str, tuple]] = ()) -> Any:
  """NamedShardings of `param_specs`; every split dimension must divide evenly."""
  specs = param_specs(params, rules)

  def sharding_for(path, leaf, spec):
    shape = np.shape(leaf)
    for dim, axes in enumerate(spec):
      axes = () if axes is None else (axes if isinstance(axes, tuple) else (axes,))
      parts = int(np.prod([mesh.shape[a] for a in axes]))
      if shape[dim] % parts:
        raise ValueError(
            f'param {path_name(path)} of shape {shape} cannot be split {parts} ways on '
            f'dimension {dim} by spec {spec} (mesh {dict(mesh.shape)}); change '
            f'config.mesh.param_rules to split a dimension that {parts} divides, or mesh.fsdp')
    return NamedSharding(mesh, spec)

  return jax.tree_util.tree_map_with_path(sharding_for, params, specs)
