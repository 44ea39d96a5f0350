"""Checksums of a checkpoint step: written after orbax finalizes the step, verified on restore.

A step directory of this version holds `checksums.json`: for every file orbax wrote
under it, its size and CRC-32 (zlib.crc32). The checksums guard against corruption (a
disk or copy error, bytes overwritten), not against tampering, so a CRC suffices: it
catches every error burst up to 32 bits and misses a random change with probability
2^-32, and it was the fastest of the three hashes `benchmarks/checkpoint_checksums.py`
measures (see the README for its numbers).

Atomicity: orbax writes the step into a temporary directory and renames it when
complete; the checksums are written after that rename (once the asynchronous save has
finished), into a temporary file renamed to `checksums.json`. A step saved by this
version carries a `resolved` item (the resolved curriculum schedule); such a step
without `checksums.json` was finalized by orbax (so complete) but the run stopped before
its checksums were written; it is restored unverified, with a warning, as is a step
without the `resolved` item (written by an older version).
"""
from __future__ import annotations

import json
import zlib
from typing import Any

from etils import epath

FILE = 'checksums.json'
ALGORITHM = 'crc32'
_CHUNK = 1 << 22  # bytes read at a time


class Mismatch(ValueError):
  """A step's files differ from its checksums (or the checksums are missing)."""


def file_digest(path: epath.Path) -> str:
  """CRC-32 of a file's bytes, as 8 hex digits."""
  crc = 0
  with path.open('rb') as f:
    while chunk := f.read(_CHUNK):
      crc = zlib.crc32(chunk, crc)
  return f'{crc:08x}'


def _files(directory: epath.Path) -> list[epath.Path]:
  """Every file under `directory` but the checksums themselves (epath has no rglob on GCS)."""
  found = []
  for p in sorted(directory.iterdir()):
    if p.is_dir():
      found += _files(p)
    elif not p.name.startswith(FILE):
      found.append(p)
  return found


def compute(step_dir: epath.Path) -> dict[str, Any]:
  """{'algorithm', 'files': {relative path: [size, digest]}} of every file under step_dir."""
  return {'algorithm': ALGORITHM,
          'files': {str(p.relative_to(step_dir)): [p.stat().length, file_digest(p)]
                    for p in _files(step_dir)}}


def write(step_dir: epath.Path) -> None:
  """Write step_dir/checksums.json (through a temporary file and a rename)."""
  step_dir = epath.Path(step_dir)
  tmp = step_dir / f'{FILE}.tmp'
  tmp.write_text(json.dumps(compute(step_dir), sort_keys=True))
  tmp.rename(step_dir / FILE)


def has_checksums(step_dir: epath.Path) -> bool:
  return (epath.Path(step_dir) / FILE).exists()


def verify(step_dir: epath.Path) -> None:
  """Raise Mismatch naming the first file whose size or digest differs from checksums.json,
  or that is missing. Files not listed (orbax's own later notes) are not read."""
  step_dir = epath.Path(step_dir)
  try:
    saved = json.loads((step_dir / FILE).read_text())
    files = saved['files']
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise Mismatch(f'{FILE} is unreadable ({type(e).__name__}: {e})') from e
  for name, (size, digest) in sorted(files.items()):
    path = step_dir / name
    if not path.exists():
      raise Mismatch(f'{name} is missing')
    if path.stat().length != size:
      raise Mismatch(f'{name} has {path.stat().length} bytes, its checksum was taken of {size}')
    if file_digest(path) != digest:
      raise Mismatch(f'{name} differs from its checksum ({ALGORITHM}): the file is corrupt')
