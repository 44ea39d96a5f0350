"""The library is free of the command line: importing it registers no absl flag."""
import json
import os
import pathlib
import subprocess
import sys

import slotcurri_jax

PACKAGE = pathlib.Path(slotcurri_jax.__file__).parent
# The front doors: programs with flags of their own (and cli.py, which they share).
FRONT_DOORS = {'slotcurri_jax.main', 'slotcurri_jax.infer', 'slotcurri_jax.cli'}

_PROBE = r'''
import importlib, json, sys
from absl import flags
before = {name for name in flags.FLAGS}
for module in sys.argv[1:]:
  importlib.import_module(module)
new = sorted({name for name in flags.FLAGS} - before)
owners = sorted(m for m in flags.FLAGS.flags_by_module_dict() if m.startswith('slotcurri_jax'))
# A program of the user's that defines its own --debug must still work.
flags.DEFINE_bool('debug', False, 'the user program\'s own flag')
print(json.dumps({'new': new, 'owners': owners}))
'''


def _library_modules() -> list[str]:
  modules = []
  for path in sorted(PACKAGE.rglob('*.py')):
    parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
    name = '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)
    if name in FRONT_DOORS or name.startswith('slotcurri_jax.tools.'):
      continue
    modules.append(name)
  return modules


def _flags_after_importing(modules: list[str]) -> dict:
  out = subprocess.run([sys.executable, '-c', _PROBE, *modules], capture_output=True, text=True,
                       check=False, env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3'})
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_the_library_registers_no_flag():
  modules = _library_modules()
  assert {'slotcurri_jax.train', 'slotcurri_jax.evaluate', 'slotcurri_jax.checkpoint',
          'slotcurri_jax.params', 'slotcurri_jax.data.pipeline', 'slotcurri_jax.data.movi',
          'slotcurri_jax.errors'} <= set(modules)
  result = _flags_after_importing(modules)
  assert result['owners'] == [], result
  assert 'debug' not in result['new'], result


def test_the_probe_sees_a_flag_the_command_line_registers():
  # The check above can fail: the front doors' shared module does register --debug.
  out = subprocess.run([sys.executable, '-c', _PROBE, 'slotcurri_jax.cli'], capture_output=True,
                       text=True, check=False,
                       env=os.environ)
  assert out.returncode != 0 and 'DuplicateFlagError' in out.stderr
