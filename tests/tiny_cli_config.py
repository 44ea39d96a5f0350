"""conftest.tiny_config as a config file, for CLI tests: --config=tests/tiny_cli_config.py[:variant]."""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from conftest import tiny_config  # noqa: E402  pylint: disable=wrong-import-position


def get_config(variant=None):
  c = tiny_config(None if variant in (None, '', 'slotcurri') else variant)
  c.data.batch_size = 8  # one clip per fake test device
  c.train.active_slots_only = False  # one compilation for the run, not one per stage
  return c
