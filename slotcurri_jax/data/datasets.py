"""The dataset registry (config.data.name -> the DatasetSpec its module declares) and
`Dataset`, the data side of a run: the spec looked up once and its builder built once."""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
from jax.experimental import multihost_utils

from slotcurri_jax.data import movi
from slotcurri_jax.data import spec as spec_lib
from slotcurri_jax.data import video_folder
from slotcurri_jax.data import ytvis

DATASETS: dict[str, spec_lib.DatasetSpec] = {
    'movi_c': movi.spec('movi_c'),
    'movi_e': movi.spec('movi_e'),
    'synthetic_movi': movi.spec('synthetic_movi', movi.synthetic_builder),
    'ytvis': ytvis.DATASET_SPEC,
    'video_folder': video_folder.DATASET_SPEC,
}


def dataset_spec(config) -> spec_lib.DatasetSpec:
  """The DatasetSpec of config.data.name."""
  name = config.data.name
  if name not in DATASETS:
    raise ValueError(f'config.data.name={name!r}; choose one of {sorted(DATASETS)}')
  return DATASETS[name]


@dataclasses.dataclass(eq=False)  # one per run, compared by identity
class Dataset:
  """One dataset as a run reads it: `spec` (looked up when the Dataset is made) and
  `builder`, the prepared TFDS builder, built on first use and then kept (a MOVi builder
  reads its dataset_info.json, after a network probe for a gs:// data_dir; synthetic_movi
  and YT-VIS may generate or check their files). Shapes (`pipeline.batch_shapes`) need
  only the spec, so a Dataset that is never read never builds."""
  config: Any
  spec: spec_lib.DatasetSpec

  @classmethod
  def from_config(cls, config) -> 'Dataset':
    return cls(config=config, spec=dataset_spec(config))

  @functools.cached_property
  def builder(self) -> Any:
    """The prepared builder; raises FileNotFoundError with how to get the data.

    With several processes, process 0 prepares first and the others wait for it, then
    prepare theirs: a data_dir they share is built once (the others find it built), one
    on each host's own disk is built by each. Every process reads the builder at the same
    point of a run, so the barrier is met by all."""
    if jax.process_count() == 1:
      return self.spec.builder(self.config)
    first = self.spec.builder(self.config) if jax.process_index() == 0 else None
    multihost_utils.sync_global_devices(f'dataset {self.config.data.name} prepared')
    return first if first is not None else self.spec.builder(self.config)
