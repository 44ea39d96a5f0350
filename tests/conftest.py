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


@pytest.fixture(scope='session')
def fixtures_dir() -> pathlib.Path:
  """The single-step golden fixtures (fixtures/reference, or $SLOTCURRI_FIXTURES)."""
  from slotcurri_jax import fixtures
  return fixtures.fixtures_dir('reference')


@pytest.fixture(scope='session')
def trajectory_dir() -> pathlib.Path:
  """The whole-run golden fixtures (fixtures/trajectory, or $SLOTCURRI_FIXTURES)."""
  from slotcurri_jax import fixtures
  return fixtures.fixtures_dir('trajectory')


def tiny_config(variant=None, **data_overrides):
  """configs/demo.py shrunk to compile and run in seconds: 16 px frames, 4x4 patches."""
  from slotcurri_jax import config as config_lib
  c = config_lib.load(f'{REPO / "configs" / "demo.py"}:{variant or ""}')
  c.data.resolution = 16
  c.data.batch_size = 4
  c.data.eval_batch_size = 8
  c.data.shuffle_buffer = 8
  c.data.prefetch = 1
  c.data.synthetic.resolution = 16
  c.data.synthetic.num_train = 8
  c.data.synthetic.num_validation = 8
  c.data.synthetic.min_objects = 2
  c.data.synthetic.max_objects = 3
  c.model.encoder.cnn_patch_size = 4
  c.model.encoder.cnn_features = 16
  c.model.slot_dim = 16
  c.model.max_slots = 5
  c.model.decoder.hidden = (32, 32)
  c.loss.contrast_group_size = 4
  c.train.steps = 6
  c.train.warmup_steps = 2
  c.train.log_every_steps = 1
  c.train.checkpoint_every_steps = 3
  c.train.image_summaries = 1
  c.curriculum.schedule = ((0, 2), (2, 3), (4, 5))
  for k, v in data_overrides.items():
    c.data[k] = v
  return c
