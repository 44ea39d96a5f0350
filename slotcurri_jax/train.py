"""The training loop, top to bottom: what a run is made of, the jitted step, the loop.

    data/pipeline (host batches) -> parallel.host_to_global -> train_step(state, batch)
      -> metric writers / periodic evaluation / checkpoints

A run is made of a few objects built once from the config (`Run.from_config`): the
encoder spec, the model, the curriculum, the objective and the dataset. The train step, the
golden-trajectory replay (tools/check_fixture.py) and the benchmarks call these same
objects, so the step that is checked against the original is the step that trains.

`train_step` is compiled once: curriculum stage changes only rewrite rows of the
padded placeholder array and flip bits of the active-slot mask (docs/method.md §17.2),
and the SSync switch multiplies by a traced 0/1. With `train.active_slots_only` it is
compiled once per curriculum stage instead, and computes only that stage's slots.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath

from slotcurri_jax import checkpoint as checkpoint_lib
from slotcurri_jax import compat
from slotcurri_jax import errors
from slotcurri_jax import curriculum as curriculum_lib
from slotcurri_jax import evaluate as evaluate_lib
from slotcurri_jax import objective as objective_lib
from slotcurri_jax import parallel
from slotcurri_jax import params as params_lib
from slotcurri_jax import train_log
from slotcurri_jax import train_state as train_state_lib
from slotcurri_jax import visualize
from slotcurri_jax.data import datasets
from slotcurri_jax.data import device_preprocess
from slotcurri_jax.data import pipeline
from slotcurri_jax.models import encoders
from slotcurri_jax.models import video_model

TrainState = train_state_lib.TrainState


# --------------------------------------------------------------------------- what a run is made of

@dataclasses.dataclass(frozen=True)
class Run:
  """The objects a training run is made of, each built once from the config: the model
  side (encoder spec, model, curriculum, objective) and the data side (`data`: the
  dataset's spec, and its builder once read)."""
  config: Any
  spec: encoders.EncoderSpec
  model: video_model.VideoSlotModel
  curriculum: curriculum_lib.Curriculum
  objective: objective_lib.Objective
  data: datasets.Dataset

  @classmethod
  def from_config(cls, config) -> 'Run':
    spec = encoders.encoder_spec(config)
    return cls(config=config, spec=spec, model=video_model.build_model(config, spec),
               curriculum=curriculum_lib.Curriculum.from_config(config),
               objective=objective_lib.Objective.from_config(config, spec.grid),
               data=datasets.Dataset.from_config(config))


# --------------------------------------------------------------------------- state

def create_state(run: Run, mesh, rng: jax.Array, params: Any = None) -> tuple[TrainState, Any]:
  """A fresh TrainState placed on `mesh`, and the state's shardings.

  The state is created inside one jit with out_shardings: each device only ever holds
  its own shards (fsdp), and no multi-process device_put (which checks every leaf for
  equality across hosts, one collective per leaf) is needed. Pretrained encoder weights,
  or all of `params` when given (host arrays of the model's tree: imported weights, a
  golden fixture's initial params), are then placed shard by shard from host memory.
  """
  config = run.config
  # First: missing weights fail before compiling.
  pretrained = encoders.load_encoder_params(config, run.spec) if params is None else None
  init = _state_init(run, rng)
  shardings = state_shardings(jax.eval_shape(init), config, mesh)
  state = jax.jit(init, out_shardings=shardings)()
  if params is not None:
    params_lib.check_fits(params, state.params, source='the given param tree',
                          fix="check the config's model sizes")
    state = state.replace(params=jax.tree.map(_place_from_host, params, state.params))
  elif pretrained is not None:
    params_lib.check_fits(pretrained, state.params['encoder'], source='the pretrained encoder',
                          fix='check model.encoder.variant (and model.encoder.weights)')
    new = dict(state.params)
    new['encoder'] = jax.tree.map(_place_from_host, pretrained, state.params['encoder'])
    state = state.replace(params=new)
  return state, shardings


def _state_init(run: Run, rng: jax.Array) -> Callable[[], TrainState]:
  """init() -> a fresh TrainState (call it inside jit or eval_shape)."""
  params_rng, state_rng = jax.random.split(rng)
  tx = train_state_lib.make_optimizer(run.config, run.spec.frozen)

  def init():
    p = params_lib.init(run.model, run.spec, run.config, params_rng)
    return TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=tx.init(p),
                      slot_error=run.curriculum.init_error_record(), rng=state_rng, tx=tx)

  return init


def abstract_state(run: Run, mesh) -> tuple[TrainState, Any]:
  """The state as jax.ShapeDtypeStructs placed on `mesh`, and its shardings: what the
  steps compile for, with nothing allocated (tools/aot.py)."""
  shapes = jax.eval_shape(_state_init(run, jax.random.PRNGKey(0)))
  shardings = state_shardings(shapes, run.config, mesh)
  return jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                      shapes, shardings), shardings


def _place_from_host(value, like: jax.Array) -> jax.Array:
  """A host array as a global jax.Array in `like`'s sharding (each host fills its shards)."""
  value = np.asarray(value, dtype=like.dtype)
  return jax.make_array_from_callback(like.shape, like.sharding, lambda index: value[index])


def state_shardings(state: TrainState, config, mesh) -> Any:
  """Params and optimizer moments by config.mesh.param_rules; everything else replicated."""
  rules = [tuple(r) for r in config.mesh.param_rules]
  if config.mesh.fsdp_all_params:
    rules += parallel.largest_dim_rules(state.params, mesh.shape['fsdp'])
  param_sh = parallel.param_shardings(state.params, mesh, rules)
  # Optimizer moments mirror the params' tree, so the same rules apply to them.
  opt_sh = jax.tree.map(lambda _: parallel.replicated(mesh), state.opt_state)
  if rules:
    opt_sh = parallel.param_shardings(state.opt_state, mesh, rules)
  rep = parallel.replicated(mesh)
  return TrainState(step=rep, params=param_sh, opt_state=opt_sh, slot_error=rep, rng=rep,
                    tx=state.tx)


# --------------------------------------------------------------------------- the step

def make_train_step(run: Run, num_slots: int | None = None, *, diagnostics: bool = False
                    ) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """train_step(state, batch) -> (state, metrics).

  batch[run.spec.input_key]: video [B, T, H, W, 3] or tokens [B, T, N, D_in] (or the raw
  frames of data/device_preprocess.py). Optional batch['spawn_directions']:
  [B, max_slots, D_s], the same unit rows repeated for every example (so that it is
  sharded like the rest of the batch on any mesh), row r for the r-th child of a
  boundary step's spawn; by default the directions are drawn from fold_in(state.rng, step)
  (`curriculum.unit_directions`): the same on every process, since state.rng is replicated
  and the process index is not folded in, so all replicas write the same children.

  One update s = state.step, in the original's order (docs/method.md §10.3):
    1. at a boundary step, spawn children into the placeholders (error of step s - 1);
    2. forward with the K(s) active slots, the objective, its gradient;
    3. record the slot-wise error of this forward (consumed at the next boundary);
    4. clip by the global norm and take an Adam step with lr(s).

  num_slots: None computes all max_slots rows (inactive ones masked): one compilation
  for the whole run. An int K computes only rows 0..K-1, for the stages where K slots
  are active (`train.active_slots_only`; one compilation per stage, same results).
  diagnostics: also return the placeholders the update started from ('placeholders'
  [max_slots, D_s], after any spawn), the children per parent of a spawn
  ('spawn_counts' [max_slots]), the recorded 'slot_error' [max_slots] and the
  objective's aux (SSync labels, merge mapping, region masks).
  """
  config, curriculum, objective = run.config, run.curriculum, run.objective
  input_key = run.spec.input_key
  max_slots = config.model.max_slots
  # The model for the rows computed: all max_slots, or a clone at the stage's K that
  # takes the first K placeholder rows (the other rows get exactly zero gradient).
  model = run.model if num_slots is None else run.model.clone(max_slots=num_slots)
  lr_fn = train_state_lib.learning_rate_schedule(config.train)

  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    batch = device_preprocess.preprocess(batch, config)  # raw uint8 frames -> video
    key = jax.random.fold_in(state.rng, state.step)
    placeholders, spawn_counts = curriculum.spawn_at(
        state.step, video_model.get_placeholders(state.params), state.slot_error, key,
        batch['spawn_directions'][0] if 'spawn_directions' in batch else None)
    params = video_model.set_placeholders(state.params, placeholders)
    active = curriculum.active_mask(state.step)
    computed = active if num_slots is None else active[:num_slots]

    def loss_fn(p):
      if num_slots is not None:
        p = video_model.set_placeholders(p, video_model.get_placeholders(p)[:num_slots])
      outputs = model.apply({'params': p}, batch[input_key], computed, rollout='forward')
      total, terms, aux = objective(outputs, computed, state.step)
      error = curriculum_lib.slot_error(jax.lax.stop_gradient(outputs['dec_masks']),
                                        jax.lax.stop_gradient(outputs['recon']),
                                        outputs['targets'])
      return total, (terms, aux, error)

    (_, (terms, aux, error)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    # The norm of the trainable gradients: logged, and the clip's (computed once).
    labels = train_state_lib.param_labels(grads, run.spec.frozen)
    grad_norm = optax.tree.norm(
        jax.tree.map(lambda g, l: g if l == 'trainable' else None, grads, labels))
    updates, opt_state = state.tx.update(grads, state.opt_state, params, grad_norm=grad_norm)
    new_state = state.replace(
        step=state.step + 1, params=optax.apply_updates(params, updates), opt_state=opt_state,
        slot_error=curriculum.record_error(state.slot_error, state.step, error))
    metrics = dict(terms, grad_norm=grad_norm,
                   clip_coef=train_state_lib.clip_coefficient(grad_norm, config.train.clip_norm),
                   learning_rate=lr_fn(state.step), active_slots=jnp.sum(active))
    if diagnostics:
      metrics.update(aux, placeholders=placeholders, spawn_counts=spawn_counts,
                     slot_error=jnp.pad(error, (0, max_slots - error.shape[0])))
    return new_state, metrics

  return train_step


def jit_train_step(run: Run, mesh, shardings, num_slots: int | None = None, *,
                   diagnostics: bool = False):
  step_fn = make_train_step(run, num_slots, diagnostics=diagnostics)
  return jax.jit(step_fn,
                 in_shardings=(shardings, parallel.batch_sharding(mesh)),
                 out_shardings=(shardings, parallel.replicated(mesh)),
                 donate_argnums=(0,))


def stage_train_steps(run: Run, mesh, shardings, *, diagnostics: bool = False
                      ) -> Callable[[int], Callable]:
  """host step -> the jitted train_step for it: one for the run, or one per stage.

  With `train.active_slots_only`, a stage with all max_slots rows active takes the padded
  step itself (the same program, so a persistent compilation cache shares it)."""
  padded = jit_train_step(run, mesh, shardings, diagnostics=diagnostics)
  if not run.config.train.active_slots_only:
    return lambda step: padded
  compiled: dict[int, Callable] = {run.config.model.max_slots: padded}

  def for_step(step: int) -> Callable:
    k = run.curriculum.num_active_host(step)
    if k not in compiled:
      compiled[k] = jit_train_step(run, mesh, shardings, num_slots=k, diagnostics=diagnostics)
    return compiled[k]

  return for_step


# --------------------------------------------------------------------------- the loop

def train_and_evaluate(config, workdir: str, *, evaluate_at_end: bool = True) -> dict:
  """Train (resuming from workdir's last checkpoint) and evaluate; returns the final eval
  metrics, or {'preempted_at_step': k} when a signal stopped the run after saving step k."""
  workdir = epath.Path(workdir)
  run, mesh = _open_run(config, ('train', 'validation') if evaluate_at_end else ('train',))
  predictor = evaluate_lib.make_predictor(config, run, mesh)  # compiled once per run
  workdir.mkdir(parents=True, exist_ok=True)
  ckpt = checkpoint_lib.Checkpointer(str(workdir), config)
  ckpt.check_compatible(params_lib.template(run.model, run.spec, config))
  state, shardings = _start_state(run, mesh, ckpt)
  start_step, total_steps = int(jax.device_get(state.step)), config.train.steps
  train_step_for = stage_train_steps(run, mesh, shardings)
  batches = pipeline.prefetch_to_device(
      pipeline.train_iterator(config, start_step=start_step, data=run.data), mesh,
      config.data.prefetch)

  def evaluate(state, max_batches: int) -> dict:  # into workdir/eval and TensorBoard
    return evaluate_lib.evaluate(config, predictor, state, mesh, workdir=str(workdir),
                                 writer=log.writer, max_batches=max_batches, data=run.data)

  with checkpoint_lib.PreemptionGuard(ckpt) as guard, train_log.TrainLog(
      config, workdir, start_step) as log:
    for step in range(start_step + 1, total_steps + 1):  # step: updates done after this one
      state, metrics = train_step_for(step - 1)(state, next(batches))
      log.dispatched(metrics)
      if _due(step, config.train.log_every_steps, total_steps):
        log.write(step)
      preempted = guard.reached(step)
      if _due(step, config.train.checkpoint_every_steps, total_steps) or preempted:
        ckpt.save(state, force=preempted)
      if preempted:
        return _stop(ckpt, log, step, guard.signal_name)
      if _due(step, config.train.eval_every_steps) and step != total_steps:
        evaluate(state, config.eval.steps)
  ckpt.close()
  final_metrics = evaluate(state, -1) if evaluate_at_end else {}
  if evaluate_at_end and log.is_chief:
    visualize.training_curves(log.history(), str(workdir / 'training_curves.png'))
  log.writer.flush()
  return final_metrics


def _open_run(config, splits: tuple[str, ...]) -> tuple[Run, Any]:
  """The run and its mesh, after checking that the data's `splits` are there. Bad config
  values and missing data are the user's errors."""
  with errors.user_errors():
    run = Run.from_config(config)  # the encoder, model, curriculum, objective and dataset
    pipeline.check_available(config, splits, data=run.data)
    return run, parallel.mesh_from_config(config)


def _start_state(run: Run, mesh, ckpt: checkpoint_lib.Checkpointer) -> tuple[TrainState, Any]:
  """The state to train from (workdir's latest checkpoint, else a fresh one), and its
  shardings. Missing or mismatched pretrained weights are the user's errors; other
  errors of the init are bugs."""
  with errors.user_errors(FileNotFoundError, ImportError, ValueError,
                          match=r'weights|model\.encoder|not found'):
    state, shardings = create_state(run, mesh, jax.random.PRNGKey(run.config.seed))
  if ckpt.latest_step() is not None:
    state = ckpt.restore(checkpoint_lib.abstract_like(state))
    logging.info('resumed from step %d', int(state.step))
  return state, shardings


def _due(step: int, every: int, last: int | None = None) -> bool:
  """Whether `step` is a multiple of `every` (0: never), or the `last` step."""
  return (every > 0 and step % every == 0) or step == last


def _stop(ckpt: checkpoint_lib.Checkpointer, log: train_log.TrainLog, step: int,
          signal_name: str) -> dict:
  """End a signalled run whose step `step` was just saved."""
  ckpt.close()
  log.caught_up(step)  # the saved step is computed
  logging.warning('%s: saved step %d in %s; run the same command to resume', signal_name, step,
                  ckpt.directory)
  log.writer.flush()
  return {'preempted_at_step': step}


def evaluate_checkpoint(config, checkpoint: str, workdir: str, *,
                        use_checkpoint_config: bool = False) -> dict:
  """Evaluate any saved params (--mode=eval): a training workdir, its checkpoints dir,
  one step dir, or a params file (.npz from tools.import_reference, .msgpack).

  The checkpoint's saved config must agree with `config` on everything that changes
  what the params mean (else a user error lists the differences); with
  `use_checkpoint_config` the saved config is used instead. The step reported is the
  saved state's own step."""
  with errors.user_errors():  # a missing or unreadable checkpoint, a config that differs
    loaded = checkpoint_lib.load(checkpoint)
    config = compat.config_for_checkpoint(config, loaded.source, loaded.step, loaded.config,
                                          loaded.schedule, use_saved=use_checkpoint_config)
  run, mesh = _open_run(config, ('validation',))
  with errors.user_errors():  # missing weights
    params = dict(loaded.params)
    if 'encoder' not in params:  # imported reference checkpoints may leave out the frozen backbone
      pretrained = encoders.load_encoder_params(config, run.spec)
      if pretrained is not None:
        params['encoder'] = pretrained
    params_lib.check_fits(params, params_lib.template(run.model, run.spec, config),
                          source=f'checkpoint {checkpoint}',
                          fix='pass the --config (and overrides) it was trained with')
  state = _EvalState(params=jax.device_put(params, parallel.replicated(mesh)),
                     step=jnp.asarray(loaded.step))
  return evaluate_lib.evaluate(config, evaluate_lib.make_predictor(config, run, mesh), state,
                               mesh, workdir=workdir, max_batches=-1, data=run.data)


@dataclasses.dataclass
class _EvalState:
  """The two fields evaluation reads from a TrainState."""
  params: Any
  step: jax.Array
