"""Where the golden fixtures live: `fixtures/` at the repository root.

`fixtures/reference/*.npz` pin single steps of the original code (forward, losses,
gradients, spawn, SSync labels, metrics, ViT tokens); `fixtures/trajectory/*.npz` pin
whole training runs. `fixtures/README.md` says what each file pins. The environment
variable SLOTCURRI_FIXTURES overrides the root: a folder holding `reference/` and
`trajectory/`, or (older layout) a folder of single-step `*.npz` files.
"""
from __future__ import annotations

import os
import pathlib

KINDS = ('reference', 'trajectory')
REPO_FIXTURES = pathlib.Path(__file__).resolve().parents[1] / 'fixtures'


def fixtures_dir(kind: str = 'reference') -> pathlib.Path:
  """The folder of `kind` ('reference' or 'trajectory'); FileNotFoundError names the fix."""
  if kind not in KINDS:
    raise ValueError(f'fixture kind {kind!r}; choose one of {KINDS}')
  override = os.environ.get('SLOTCURRI_FIXTURES')
  root = pathlib.Path(override) if override else REPO_FIXTURES
  folder = root / kind
  if not folder.is_dir() and override and kind == 'reference' and any(root.glob('*.npz')):
    folder = root
  if not folder.is_dir():
    where = '$SLOTCURRI_FIXTURES' if override else 'the repository'
    raise FileNotFoundError(
        f'golden fixtures not found at {folder} (from {where}); they ship in the repository '
        f'under fixtures/{kind}/: run from a full clone, or point SLOTCURRI_FIXTURES at a '
        'folder holding reference/ and trajectory/')
  return folder
