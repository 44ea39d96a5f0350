"""Scale: two processes through jax.distributed, fsdp-sharded params, checkpoints across meshes.

Every run trains `_distributed_worker.worker_config()` (tiny_config, global batch 8) on
the same fake batches, so all of them must give the single-device run's losses.
"""
import copy
import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import _distributed_worker as worker
from slotcurri_jax import checkpoint as checkpoint_lib
from slotcurri_jax import parallel
from slotcurri_jax import train
from slotcurri_jax.data import pipeline

TESTS = pathlib.Path(__file__).resolve().parent
STEPS = 3
WORKER_TIMEOUT_S = 300  # both workers together; a hung collective fails the test instead
# float32 arithmetic in another reduction order (as tests/test_train.py).
RTOL, ATOL = 2e-5, 1e-6
# The decoder's kernels split on their input dimension, one corrector kernel on its output
# dimension; everything else stays replicated.
FSDP_RULES = ((r'decoder/mlp/dense_\d+/kernel', ('fsdp', None)),
              (r'corrector/mlp/dense_0/kernel', (None, 'fsdp')))


def _assert_same_losses(got, want, steps):
  for i in range(steps):
    for key in worker.METRIC_KEYS:
      np.testing.assert_allclose(got[i][key], want[i][key], rtol=RTOL, atol=ATOL,
                                 err_msg=f'{key} at step {i + 1}')


def _host_history(metrics_list):
  return [{k: float(v) for k, v in jax.device_get(m).items()} for m in metrics_list]


def _abstract_state(config, mesh):
  """Restore target on `mesh` from shapes alone (nothing compiled, nothing allocated)."""
  run = train.Run.from_config(config)
  shapes = jax.eval_shape(lambda: train.create_state(run, mesh, jax.random.PRNGKey(0))[0])
  shardings = train.state_shardings(shapes, config, mesh)
  return checkpoint_lib.abstract_like(jax.tree.map(
      lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings))


@pytest.fixture(scope='module')
def batches():
  return worker.fake_batches(worker.worker_config(), STEPS + 1)


@pytest.fixture(scope='module')
def reference(batches):
  """One process, one device: STEPS + 1 steps; the step function is kept to continue
  restored checkpoints without compiling again."""
  config = worker.worker_config()
  mesh = parallel.create_mesh(devices=jax.devices()[:1])
  run = train.Run.from_config(config)
  state, shardings = train.create_state(run, mesh, jax.random.PRNGKey(config.seed))
  abstract = checkpoint_lib.abstract_like(state)
  step_fn = train.jit_train_step(run, mesh, shardings)
  metrics, params_after = [], None
  for i, batch in enumerate(batches):
    state, m = step_fn(state, parallel.host_to_global(batch, mesh))
    metrics.append(m)
    if i + 1 == STEPS:
      params_after = jax.device_get(state.params)
  return dict(history=_host_history(metrics), params=params_after, abstract=abstract,
              mesh=mesh, step_fn=step_fn)


@pytest.fixture(scope='module')
def fsdp_run(batches, tmp_path_factory):
  """8 devices as data 2 x fsdp 4 with FSDP_RULES: STEPS steps, a checkpoint, one more step."""
  config = worker.worker_config()
  config.mesh.fsdp = 4
  config.mesh.param_rules = FSDP_RULES
  mesh = parallel.mesh_from_config(config)
  run = train.Run.from_config(config)
  state, shardings = train.create_state(run, mesh, jax.random.PRNGKey(config.seed))
  step_fn = train.jit_train_step(run, mesh, shardings)
  metrics = []
  for batch in batches[:STEPS]:
    state, m = step_fn(state, parallel.host_to_global(batch, mesh))
    metrics.append(m)
  workdir = tmp_path_factory.mktemp('fsdp_checkpoint')
  ckpt = checkpoint_lib.Checkpointer(str(workdir), config, async_save=False)
  ckpt.save(state)
  ckpt.close()
  saved = jax.device_get(state)
  shardings_after = jax.tree.map(lambda x: x.sharding, state)
  state, m = step_fn(state, parallel.host_to_global(batches[STEPS], mesh))
  metrics.append(m)
  return dict(config=config, history=_host_history(metrics), saved=saved,
              shardings=shardings_after, workdir=str(workdir))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _run_workers(tmp_path, num_processes=2, local_devices=2, extra=()):
  """Start the worker processes, wait (bounded), kill stragglers; fail with their logs."""
  port = _free_port()
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}  # the worker sets its own
  procs, logs = [], []
  for i in range(num_processes):
    logs.append(tmp_path / f'worker_{i}.log')
    with open(logs[-1], 'w') as log:
      procs.append(subprocess.Popen(
          [sys.executable, str(TESTS / '_distributed_worker.py'), f'--process_id={i}',
           f'--num_processes={num_processes}', f'--port={port}',
           f'--local_devices={local_devices}', f'--out={tmp_path / "out"}',
           f'--checkpoint_dir={tmp_path / "ckpt"}', f'--steps={STEPS}', *extra],
          stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(TESTS.parent)))
  deadline = time.monotonic() + WORKER_TIMEOUT_S
  try:
    for p in procs:
      p.wait(timeout=max(0.1, deadline - time.monotonic()))
  except subprocess.TimeoutExpired:
    pass
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  codes = [p.returncode for p in procs]
  if any(codes):
    tails = '\n'.join(f'--- worker {i} (exit {c}):\n' + log.read_text()[-3000:]
                      for i, (c, log) in enumerate(zip(codes, logs)))
    pytest.fail(f'distributed workers failed or exceeded {WORKER_TIMEOUT_S}s: {codes}\n{tails}')
  return tmp_path / 'out', tmp_path / 'ckpt'


def test_two_processes_give_the_one_process_losses(reference, tmp_path):
  out, ckpt_dir = _run_workers(tmp_path)
  result = json.loads((out / 'metrics.json').read_text())
  assert (result['process_count'], result['device_count']) == (2, 4)
  assert result['batch_order_ok'], 'host rows did not land at their global batch positions'
  assert result['same_on_all_processes'], 'processes disagree on the replicated metrics'
  # The spawn at update 2 drew its directions from the state's key, the same on every
  # process (docs/method.md §7.5): the same children everywhere (and, by the params check
  # below, the one-process ones).
  assert result['same_placeholders_on_all_processes'], 'processes spawned different children'
  final = reference['params']['initializer']['placeholders']
  assert not np.allclose(final[2], result['initial_placeholders'][2]), 'no spawn at update 2'
  assert result['final_step'] == STEPS
  _assert_same_losses(result['history'], reference['history'], STEPS)
  assert sorted(p.name for p in out.iterdir()) == ['final_params.npz', 'metrics.json']

  # The checkpoint both processes wrote restores, complete, on one device of this process.
  config = worker.worker_config()
  restored = checkpoint_lib.Checkpointer(str(ckpt_dir), config, async_save=False).restore(
      reference['abstract'])
  assert int(restored.step) == STEPS
  with np.load(out / 'final_params.npz') as written:
    flat = jax.tree_util.tree_flatten_with_path(jax.device_get(restored.params))[0]
    assert sorted(written.files) == sorted(parallel.path_name(k) for k, _ in flat)
    for path, value in flat:
      np.testing.assert_array_equal(value, written[parallel.path_name(path)])
  # Close to the one-process params (Adam's first steps are ~lr * sign(g), so not tighter).
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-4),
               jax.device_get(restored.params), reference['params'])


def test_sigterm_on_one_host_stops_every_host_at_one_saved_step(tmp_path):
  """jax's preemption service (no per-step collective): process 1 alone gets SIGTERM
  during step 3; both processes save the same step, later than 3, and return."""
  config = worker.worker_config()
  config.data.data_dir = str(tmp_path / 'data')
  pipeline.check_available(config, splits=('train',))  # generate the data once, here
  workdir = tmp_path / 'run'
  out, _ = _run_workers(tmp_path, extra=(f'--train_loop={workdir}',
                                         f'--data_dir={config.data.data_dir}', '--sigterm_at=3'))
  results = [json.loads((out / f'process_{i}.json').read_text()) for i in range(2)]
  assert results[0] == results[1], results
  saved = results[0]['preempted_at_step']
  assert 3 < saved < 1000
  ckpt = checkpoint_lib.Checkpointer(str(workdir), config, async_save=False)
  assert ckpt.latest_step() == saved
  ckpt.close()


@pytest.mark.slow  # about 40 s with its fixture on 2 cores
def test_fsdp_matches_the_replicated_run_and_shards_params(reference, fsdp_run):
  # The one-device run is the replicated run (tests/test_train.py checks 8 replicated
  # devices against it).
  _assert_same_losses(fsdp_run['history'], reference['history'], STEPS + 1)
  params, shardings = fsdp_run['saved'].params, fsdp_run['shardings'].params
  assert shardings['decoder']['mlp']['dense_1']['kernel'].spec == P('fsdp', None)
  assert shardings['corrector']['mlp']['dense_0']['kernel'].spec == P(None, 'fsdp')
  assert shardings['decoder']['pos_emb'].spec == P()
  for name in ('dense_0', 'dense_1', 'dense_2'):
    sharding = shardings['decoder']['mlp'][name]['kernel']
    full = params['decoder']['mlp'][name]['kernel'].shape
    assert sharding.shard_shape(full) == (full[0] // 4, full[1])
  # Adam's moments of a sharded kernel are sharded the same way.
  opt_specs = {parallel.path_name(path): s.spec for path, s in
               jax.tree_util.tree_flatten_with_path(fsdp_run['shardings'].opt_state)[0]}
  moments = [spec for name, spec in opt_specs.items()
             if name.endswith('decoder/mlp/dense_1/kernel')]
  assert len(moments) == 2 and all(spec == P('fsdp', None) for spec in moments)


@pytest.mark.parametrize('devices,fsdp', [(1, 1), (4, 2)])
def test_checkpoint_from_eight_devices_restores_on_fewer(reference, fsdp_run, batches,
                                                         devices, fsdp):
  config = copy.deepcopy(fsdp_run['config'])
  config.mesh.fsdp = fsdp
  if devices == 1:
    target, mesh = reference['abstract'], reference['mesh']  # a state created on 1 device
  else:
    mesh = parallel.create_mesh(fsdp=fsdp, devices=jax.devices()[:devices])
    target = _abstract_state(config, mesh)
  restored = checkpoint_lib.Checkpointer(fsdp_run['workdir'], config,
                                         async_save=False).restore(target)
  jax.tree.map(lambda got, want: np.testing.assert_array_equal(np.asarray(got), want),
               restored, fsdp_run['saved'])
  jax.tree.map(lambda got, want: _assert_same_sharding(got, want.sharding), restored, target)
  kernel = restored.params['decoder']['mlp']['dense_1']['kernel']
  assert len(kernel.sharding.device_set) == devices
  assert kernel.addressable_shards[0].data.shape[0] == kernel.shape[0] // fsdp
  if devices == 1:  # training continues: the 8-device run's next step, on one device
    state, metrics = reference['step_fn'](restored,
                                          parallel.host_to_global(batches[STEPS], mesh))
    assert int(state.step) == STEPS + 1
    _assert_same_losses(_host_history([metrics]), fsdp_run['history'][STEPS:], 1)


def _assert_same_sharding(array, want):
  assert array.sharding.is_equivalent_to(want, array.ndim), (array.sharding, want)


def test_param_rule_that_does_not_divide_names_the_param():
  mesh = parallel.create_mesh(fsdp=4)
  params = {'decoder': {'kernel': jnp.zeros((6, 8))}}
  with pytest.raises(ValueError, match=r'decoder/kernel of shape \(6, 8\) cannot be split 4'):
    parallel.param_shardings(params, mesh, ((r'decoder/kernel', ('fsdp', None)),))
  sharding = parallel.param_shardings(params, mesh, ((r'decoder/kernel', (None, 'fsdp')),))
  assert sharding['decoder']['kernel'].spec == P(None, 'fsdp')
