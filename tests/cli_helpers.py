"""Run a CLI's main in-process, as `python -m slotcurri_jax.main ARGS` would, and snapshot
workdirs (a subprocess costs ~10 s of imports; in-process the imports are already done)."""
import hashlib
import os
import pathlib
import sys

from absl import flags
import pytest

from conftest import REPO


def run_main(capsys, *args) -> tuple[int, str, str]:
  """Runs slotcurri_jax.main with argv `args` through cli.run; returns (status, stdout, stderr)."""
  from absl import logging
  from slotcurri_jax import cli
  from slotcurri_jax import main
  logging.get_absl_handler().python_handler.stream = sys.stderr  # this test's captured stderr
  flags.FLAGS.unparse_flags()  # values of an earlier in-process run must not leak in
  for name in [n for n in flags.FLAGS if n.startswith('config.')]:
    delattr(flags.FLAGS, name)  # the config flag registers one flag per override
  cwd, argv = os.getcwd(), sys.argv
  os.chdir(REPO)
  try:
    with pytest.raises(SystemExit) as exit_info:
      # --verbosity=0 (INFO) as in `python -m`, where absl starts at INFO (pytest: WARNING).
      cli.run(main.main, argv=['slotcurri_jax.main', '--verbosity=0', *args])
  finally:
    os.chdir(cwd)
    sys.argv = argv  # cli.run sets it for ml_collections
    logging.get_absl_handler().python_handler.stream = sys.__stderr__  # capsys closes its own
  code = exit_info.value.code
  out, err = capsys.readouterr()
  return (0 if code is None else int(code)), out, err


def error_lines(stderr: str) -> list[str]:
  """The `error: ...` message (with its continuation lines) at the end of stderr."""
  lines = stderr.rstrip('\n').splitlines()
  start = max(i for i, l in enumerate(lines) if l.startswith('error: '))
  return lines[start:]


def snapshot(path: pathlib.Path) -> dict[str, str]:
  """relative path -> content hash of every file under `path` ({} when it does not exist)."""
  path = pathlib.Path(path)
  if not path.exists():
    return {}
  return {str(p.relative_to(path)): hashlib.sha1(p.read_bytes()).hexdigest()
          for p in sorted(path.rglob('*')) if p.is_file()}


@pytest.fixture(scope='session')
def tiny_data_dir() -> pathlib.Path:
  """The CLI tests' synthetic_movi data_dir, kept between sessions like the compilation
  cache (generated on first use; the builder's name encodes every setting, so a change of
  the tiny config never reads stale data). $SLOTCURRI_TEST_TFDS overrides the place."""
  path = pathlib.Path(os.environ.get(
      'SLOTCURRI_TEST_TFDS', pathlib.Path.home() / '.cache' / 'slotcurri_jax' / 'test_tfds'))
  path.mkdir(parents=True, exist_ok=True)
  return path
