r"""One process of a multi-process CPU training run, started by tests/test_distributed.py.

  python tests/_distributed_worker.py --process_id=0 --num_processes=2 --port=PORT \
      --local_devices=2 --out=DIR [--steps=3] [--checkpoint_dir=DIR]

Every process builds the same global batches (`fake_batches`), passes only its own
contiguous rows through `parallel.host_to_global`, and runs `train.jit_train_step`.
Process 0 alone writes DIR/metrics.json (the per-step metrics, whether the global
batch reassembled in process order, whether every process saw the same metrics and
holds the same placeholders after the spawn at update 2, the initial placeholders) and
DIR/final_params.npz (the gathered params after the last step, keyed by param path).
With --checkpoint_dir every process takes part in one orbax save of the final state
(orbax decides which process writes what).

  python tests/_distributed_worker.py ... --train_loop=WORKDIR --data_dir=DIR --sigterm_at=N

instead runs the training loop itself (`train.train_and_evaluate`, synthetic data
already generated in DIR); process 1 sends itself SIGTERM while dispatching step N.
Each process writes DIR_out/process_<i>.json with what the loop returned.

Compilation. Every process compiles its own programs. On CPU the persistent cache
key differs between processes and only process 0 writes entries, so only process 0
gets cache hits; jax_share_binary_between_hosts cannot help on CPU (it waits for the
binary under process 1's own key, which process 0 never sends, and hangs). XLA's LLVM
backend runs at -O0 here: it cuts compile time about 3x and leaves the losses
unchanged (the test's single-process reference uses the default level).

Environment (XLA_FLAGS, JAX_PLATFORMS) is set here before jax is imported, so the
parent's 8-device test setting does not leak in.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import signal
import sys
import time

_START = time.time()

import numpy as np

METRIC_KEYS = ('loss_total', 'loss_mse', 'loss_ss', 'loss_ssim', 'grad_norm')


def worker_config():
  """tiny_config with a global batch of 8 in two contrastive groups of 4, and one
  slot-attention iteration per frame (halves compile time; the numerics under test
  are the distribution's, not the model's)."""
  from conftest import tiny_config  # tests/ is on sys.path (pytest, or __main__ below)
  c = tiny_config()
  c.data.batch_size = 8
  c.loss.contrast_group_size = 4
  c.model.slot_attention.iters_first = 1
  c.model.slot_attention.iters = 1
  return c


def fake_batches(config, n: int, seed: int = 0) -> list[dict]:
  """n global batches {'video': [batch_size, T, R, R, 3] float32} (same on every process)."""
  rng = np.random.default_rng(seed)
  r, t = config.data.resolution, config.data.train_clip_len
  return [{'video': rng.normal(size=(config.data.batch_size, t, r, r, 3)).astype(np.float32)}
          for _ in range(n)]


def _parse(argv):
  p = argparse.ArgumentParser()
  p.add_argument('--process_id', type=int, required=True)
  p.add_argument('--num_processes', type=int, required=True)
  p.add_argument('--port', type=int, required=True)
  p.add_argument('--local_devices', type=int, default=1)
  p.add_argument('--out', required=True)
  p.add_argument('--steps', type=int, default=3)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--checkpoint_dir', default='')
  p.add_argument('--train_loop', default='')
  p.add_argument('--data_dir', default='')
  p.add_argument('--sigterm_at', type=int, default=-1)
  return p.parse_args(argv)


def _log(message: str) -> None:
  """Phase timings on stderr: the test prints them when a worker fails or times out."""
  print(f'[worker {time.time() - _START:6.1f}s] {message}', file=sys.stderr, flush=True)


def main(argv) -> None:
  args = _parse(argv)
  os.environ['XLA_FLAGS'] = (f'--xla_force_host_platform_device_count={args.local_devices} '
                             '--xla_backend_optimization_level=0')
  os.environ['JAX_PLATFORMS'] = 'cpu'
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  import jax
  # Bounded: a peer that never shows up fails the run instead of hanging it.
  jax.distributed.initialize(coordinator_address=f'127.0.0.1:{args.port}',
                             num_processes=args.num_processes, process_id=args.process_id,
                             initialization_timeout=60, heartbeat_timeout_seconds=30,
                             shutdown_timeout_seconds=30)
  _log('distributed initialised')
  from jax.experimental import multihost_utils

  from slotcurri_jax import checkpoint as checkpoint_lib
  from slotcurri_jax import parallel
  from slotcurri_jax import train

  config = worker_config()  # imports conftest, which sets the tests' persistent cache

  _log('imported')
  if args.train_loop:
    _train_loop(args, config, train)
    jax.distributed.shutdown()
    return
  pid, count = jax.process_index(), jax.process_count()
  if count != args.num_processes or len(jax.local_devices()) != args.local_devices:
    raise RuntimeError(f'{count} processes with {len(jax.local_devices())} devices each, '
                       f'expected {args.num_processes} with {args.local_devices}')
  mesh = parallel.mesh_from_config(config)
  run = train.Run.from_config(config)
  state, shardings = train.create_state(run, mesh, jax.random.PRNGKey(config.seed))
  step_fn = train.jit_train_step(run, mesh, shardings)
  _log('state created')

  initial_placeholders = _local_placeholders(state)
  rows = config.data.batch_size // count
  batch_order_ok = True
  history = []
  for batch in fake_batches(config, args.steps, args.seed):
    local = jax.tree.map(lambda x: x[pid * rows:(pid + 1) * rows], batch)
    global_batch = parallel.host_to_global(local, mesh)
    # Host p's rows must land at global rows [p*rows, (p+1)*rows): the contrastive groups
    # (and the single-process equivalence) depend on the global order.
    batch_order_ok &= bool(np.array_equal(parallel.global_to_host(global_batch)['video'],
                                          batch['video']))
    state, metrics = step_fn(state, global_batch)
    history.append({k: float(v) for k, v in jax.device_get(metrics).items()})
    _log(f'step {len(history)} done')

  # Metrics are replicated outputs: every process must hold the same numbers.
  mine = np.asarray([[h[k] for k in METRIC_KEYS] for h in history], np.float64)
  everyone = multihost_utils.process_allgather(mine)  # [processes, steps, keys]
  same_on_all = bool(np.all(everyone == everyone[0]))
  # Each process's own copy of the replicated placeholders, which the spawn at update 2
  # wrote from the state's key: every process must have written the same children.
  copies = multihost_utils.process_allgather(_local_placeholders(state))
  same_placeholders = bool(np.all(copies == copies[0]))

  final_params = parallel.global_to_host(state.params)  # a collective: every process calls it

  if args.checkpoint_dir:
    ckpt = checkpoint_lib.Checkpointer(args.checkpoint_dir, config, async_save=False)
    ckpt.save(state)
    ckpt.close()

  _log('checkpoint saved')
  if pid == 0:
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / 'metrics.json').write_text(json.dumps({
        'process_count': count, 'device_count': jax.device_count(),
        'batch_order_ok': batch_order_ok, 'same_on_all_processes': same_on_all,
        'same_placeholders_on_all_processes': same_placeholders,
        'initial_placeholders': initial_placeholders.tolist(),
        'history': history, 'final_step': int(jax.device_get(state.step))}))
    flat = jax.tree_util.tree_flatten_with_path(final_params)[0]
    np.savez(out / 'final_params.npz', **{parallel.path_name(k): np.asarray(v) for k, v in flat})
  jax.distributed.shutdown()
  _log('shut down')


def _local_placeholders(state) -> np.ndarray:
  """This process's copy of the placeholders [max_slots, D_s] (replicated: one shard)."""
  return np.asarray(state.params['initializer']['placeholders'].addressable_shards[0].data)


def _train_loop(args, config, train) -> None:
  """The real loop, preempted by a SIGTERM that only process 1 receives."""
  import jax
  config.data.data_dir = args.data_dir
  config.train.steps = 1000  # never reached: the preemption ends the run
  config.train.log_every_steps = 1000
  config.train.checkpoint_every_steps = 1000
  stage_train_steps = train.stage_train_steps

  def signalling(*a, **kw):  # process 1: SIGTERM while dispatching step sigterm_at
    for_step = stage_train_steps(*a, **kw)

    def step_fn(step):
      if jax.process_index() == 1 and step == args.sigterm_at:
        os.kill(os.getpid(), signal.SIGTERM)
      return for_step(step)
    return step_fn

  train.stage_train_steps = signalling
  result = train.train_and_evaluate(config, args.train_loop, evaluate_at_end=False)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / f'process_{jax.process_index()}.json').write_text(json.dumps(result))
  _log(f'loop returned {result}')


if __name__ == '__main__':
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
  main(sys.argv[1:])
