"""The dataset registry: config.data.name -> the DatasetSpec its module declares."""
from __future__ import annotations

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
