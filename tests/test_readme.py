"""The README Quickstart and CI must not drift apart."""
import re

from conftest import REPO


def _quickstart_commands():
  text = (REPO / 'README.md').read_text()
  section = text.split('## Quickstart', 1)[1].split('\n## ', 1)[0]
  blocks = re.findall(r'```(?:bash|sh)?\n(.*?)```', section, flags=re.S)
  return [line.strip() for block in blocks for line in block.splitlines()
          if line.strip() and not line.strip().startswith('#')]


def test_quickstart_has_exactly_two_commands():
  commands = _quickstart_commands()
  assert len(commands) == 2, commands
  assert 'slotcurri_jax.main' in commands[0] and 'configs/demo.py' in commands[0]
  assert 'pytest' in commands[1]


def test_ci_runs_the_readme_test_command():
  ci_lines = [l.strip() for l in (REPO / '.ci' / 'run').read_text().splitlines()]
  assert _quickstart_commands()[1] in ci_lines
