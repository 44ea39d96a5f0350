"""Test-wide setup: 8 fake CPU devices, a persistent compilation cache, fixtures path."""
import os
import pathlib

# Must be set before jax is imported anywhere.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import jax  # noqa: E402
import pytest  # noqa: E402

_CACHE = pathlib.Path(os.environ.get(
    'SLOTCURRI_TEST_JAX_CACHE', pathlib.Path.home() / '.cache' / 'slotcurri_jax' / 'jax_test_cache'))
jax.config.update('jax_compilation_cache_dir', str(_CACHE))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)

REPO = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = pathlib.Path(os.environ.get(
    'SLOTCURRI_FIXTURES', REPO.parent / 'shared' / 'fixtures' / 'reference'))


@pytest.fixture(scope='session')
def fixtures_dir() -> pathlib.Path:
  if not FIXTURES.is_dir():
    pytest.fail(f'golden fixtures not found at {FIXTURES}; set SLOTCURRI_FIXTURES')
  return FIXTURES
