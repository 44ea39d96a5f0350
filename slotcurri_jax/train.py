"""The training loop, top to bottom: model and state, the jitted step, the loop.

    data/pipeline (host batches) -> parallel.host_to_global -> train_step(state, batch)
      -> metric writers / periodic evaluation / checkpoints

`train_step` is compiled once: curriculum stage changes only rewrite rows of
the padded placeholder array and flip bits of the active-slot mask (SPEC §17.2),
and the SSync switch multiplies by a traced 0/1. With `train.active_slots_only` it is
compiled once per curriculum stage instead, and computes only that stage's slots.
"""
from __future__ import annotations

import json
import re
import time
from typing import Any, Callable, Sequence

from absl import logging
from clu import metric_writers
import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath

from slotcurri_jax import checkpoint as checkpoint_lib
from slotcurri_jax import cli
from slotcurri_jax import curriculum
from slotcurri_jax import evaluate as evaluate_lib
from slotcurri_jax import losses
from slotcurri_jax import parallel
from slotcurri_jax import ssync
from slotcurri_jax import train_state as train_state_lib
from slotcurri_jax.data import pipeline
from slotcurri_jax.models import encoders
from slotcurri_jax.models import video_model

TrainState = train_state_lib.TrainState


# --------------------------------------------------------------------------- model and state

def create_state(config, model, mesh, rng: jax.Array) -> tuple[TrainState, Any]:
  """A fresh TrainState placed on `mesh`, and the state's shardings.

  The state is created inside one jit with out_shardings: each device only ever holds
  its own shards (fsdp), and no multi-process device_put (which checks every leaf for
  equality across hosts, one collective per leaf) is needed. Pretrained encoder weights
  are then placed shard by shard from host memory.
  """
  params_rng, state_rng = jax.random.split(rng)
  pretrained = encoders.load_encoder_params(config)  # first: missing weights fail before compiling
  t, r = config.data.train_clip_len, config.data.resolution

  def init():
    video = jnp.zeros((1, t, r, r, 3), jnp.float32)
    active = jnp.ones((config.model.max_slots,), bool)
    params = model.init(params_rng, video, active)['params']
    params = scale_init(params, config.model.init_gains)
    return train_state_lib.create_train_state(config, params, state_rng)

  shardings = state_shardings(jax.eval_shape(init), config, mesh)
  state = jax.jit(init, out_shardings=shardings)()
  if pretrained is not None:
    params = dict(state.params)
    params['encoder'] = jax.tree.map(_place_from_host, pretrained, state.params['encoder'])
    state = state.replace(params=params)
  return state, shardings


def scale_init(params: Any, gains: Sequence[tuple[str, float]]) -> Any:
  """Multiplies the initial value of every param whose '/'-joined path fully matches a
  regex of `gains` ((regex, gain) pairs; the first match wins; () = reference init)."""
  if not gains:
    return params
  compiled = [(re.compile(pattern), float(gain)) for pattern, gain in gains]

  def scale(path, x):
    name = parallel.path_name(path)
    gain = next((g for rx, g in compiled if rx.fullmatch(name)), 1.0)
    return x * gain if gain != 1.0 else x

  return jax.tree_util.tree_map_with_path(scale, params)


def _place_from_host(value, like: jax.Array) -> jax.Array:
  """A host array as a global jax.Array in `like`'s sharding (each host fills its shards)."""
  value = np.asarray(value, dtype=like.dtype)
  if value.shape != like.shape:
    raise ValueError(f'pretrained encoder weight of shape {value.shape} where the model '
                     f'has {like.shape}: check model.encoder.variant')
  return jax.make_array_from_callback(like.shape, like.sharding, lambda index: value[index])


def state_shardings(state: TrainState, config, mesh) -> Any:
  """Params and optimizer moments by config.mesh.param_rules; everything else replicated."""
  rules = [tuple(r) for r in config.mesh.param_rules]
  param_sh = parallel.param_shardings(state.params, mesh, rules)
  # Optimizer moments mirror the params' tree, so the same rules apply to them.
  opt_sh = jax.tree.map(lambda _: parallel.replicated(mesh), state.opt_state)
  if rules:
    opt_sh = parallel.param_shardings(state.opt_state, mesh, rules)
  rep = parallel.replicated(mesh)
  return TrainState(step=rep, params=param_sh, opt_state=opt_sh, active_mask=rep, stage=rep,
                    slot_error=rep, rng=rep)


# --------------------------------------------------------------------------- losses

def compute_losses(config, outputs: dict, active_mask: jax.Array,
                   step: jax.Array) -> tuple[jax.Array, dict]:
  """The weighted objective of the configured method (SPEC §6.4) and its terms.

  outputs: the model's dict ([B, T, ...] arrays); active_mask: [max_slots] bool.
  """
  lc = config.loss
  batch = outputs['slots'].shape[0]
  group = min(lc.contrast_group_size, batch)
  terms = {
      'loss_mse': losses.feature_mse(outputs['recon'], outputs['targets']),
      'loss_ss': losses.slot_contrast(outputs['slots'], active_mask,
                                      temperature=lc.ss_temperature, group_size=group),
  }
  total = lc.mse_weight * terms['loss_mse'] + lc.ss_weight * terms['loss_ss']
  if lc.ssim_weight > 0:
    grid = int(round(outputs['recon'].shape[2] ** 0.5))
    terms['loss_ssim'] = losses.ssim3d(outputs['recon'], outputs['targets'], (grid, grid))
    total = total + lc.ssim_weight * terms['loss_ssim']
  if config.ssync.enabled:
    sc = config.ssync
    loss_bd, loss_in, aux = ssync.ssync_losses(
        outputs['sa_logits'], outputs['dec_alpha'], active_mask,
        tau_merge=sc.tau_merge, n_bd=sc.n_bd, n_noise=sc.n_noise, n_nbd=sc.n_nbd,
        temperature=sc.temperature, loss=sc.loss, group_size=group, reduction=sc.reduction)
    gate = ssync.ssync_weight(step, ssync_start_step(config))
    terms.update(loss_bd=loss_bd, loss_in=loss_in, ssync_gate=gate)
    for name in ('boundary_fraction', 'interior_fraction'):
      if name in aux:
        terms[name] = aux[name]
    total = total + gate * (sc.bd_weight * loss_bd + sc.in_weight * loss_in)
  terms['loss_total'] = total
  return total, terms


def ssync_start_step(config) -> int:
  total = config.ssync.total_steps or config.train.steps
  return int(config.ssync.start_fraction * total)


# --------------------------------------------------------------------------- the step

def make_train_step(config, model, num_slots: int | None = None
                    ) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """train_step(state, batch) -> (state, metrics); batch['video']: [B, T, H, W, 3].

  num_slots: None computes all max_slots rows (inactive ones masked): one compilation
  for the whole run. An int K computes only rows 0..K-1, for the stages where K slots
  are active (`train.active_slots_only`; one compilation per stage, same results).
  """
  max_slots = config.model.max_slots
  cc = config.curriculum
  schedule = curriculum.build_schedule(cc, max_slots, config.train.steps)
  boundaries = jnp.asarray([s for s, _ in schedule[1:]], jnp.int32)
  old_counts = jnp.asarray([k for _, k in schedule[:-1]], jnp.int32)
  new_counts = jnp.asarray([k for _, k in schedule[1:]], jnp.int32)
  placeholders_path = train_state_lib.PLACEHOLDERS
  tx = train_state_lib.make_optimizer(config, model_params_template(config, model))
  lr_fn = train_state_lib.learning_rate_schedule(config.train)

  def active_at(step):
    return jnp.arange(max_slots) < curriculum.num_active_slots(
        step, schedule, cc.boundary_uses_old_count)

  def maybe_spawn(params, state):
    """At the start of a boundary step s_j, children are written into the padded rows
    from the slot-wise error of step s_j - 1 (SPEC §7.3-7.5)."""
    if len(schedule) == 1:
      return params
    hit = state.step == boundaries
    idx = jnp.argmax(hit)
    errors = jnp.mean(state.slot_error, axis=0)
    key = jax.random.fold_in(state.rng, state.step)
    placeholders = params[placeholders_path[0]][placeholders_path[1]]

    def spawn(p):
      new_p, _ = curriculum.spawn(
          p, errors, old_counts[idx], new_counts[idx], key, scale=cc.spawn_scale,
          neighbor=cc.neighbor, norm_rows=cc.norm_rows, mode=cc.spawn)
      return new_p

    placeholders = jax.lax.cond(jnp.any(hit), spawn, lambda p: p, placeholders)
    params = dict(params)
    params[placeholders_path[0]] = dict(params[placeholders_path[0]], **{placeholders_path[1]: placeholders})
    return params

  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    params = maybe_spawn(state.params, state)
    active = active_at(state.step)

    computed = active if num_slots is None else active[:num_slots]

    def loss_fn(p):
      outputs = model.apply({'params': p}, batch['video'], active, rollout='forward',
                            num_slots=num_slots)
      total, terms = compute_losses(config, outputs, computed, state.step)
      error = curriculum.slot_error(jax.lax.stop_gradient(outputs['dec_masks']),
                                    jax.lax.stop_gradient(outputs['recon']),
                                    outputs['targets'])
      return total, (terms, jnp.pad(error, (0, max_slots - error.shape[0])))

    (_, (terms, error)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, state.opt_state, params)
    params = optax.apply_updates(params, updates)
    window = state.slot_error.shape[0]
    slot_error = state.slot_error.at[state.step % window].set(error)
    step = state.step + 1
    new_state = state.replace(
        step=step, params=params, opt_state=opt_state, active_mask=active_at(step),
        stage=jnp.sum(step >= boundaries).astype(jnp.int32) if len(schedule) > 1 else state.stage,
        slot_error=slot_error)
    labels = train_state_lib.param_labels(grads, config)
    trainable_grads = jax.tree.map(lambda g, l: g if l == 'trainable' else jnp.zeros_like(g),
                                   grads, labels)
    metrics = dict(terms, grad_norm=optax.tree.norm(trainable_grads),
                   learning_rate=lr_fn(state.step), active_slots=jnp.sum(active))
    return new_state, metrics

  return train_step


def model_params_template(config, model) -> Any:
  """Param shapes (no values): the optimizer only needs the tree and labels."""
  t, r = config.data.train_clip_len, config.data.resolution
  return jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, t, r, r, 3)),
                         jnp.ones((config.model.max_slots,), bool))['params'])


def jit_train_step(config, model, mesh, shardings, num_slots: int | None = None):
  step_fn = make_train_step(config, model, num_slots)
  return jax.jit(step_fn,
                 in_shardings=(shardings, parallel.batch_sharding(mesh)),
                 out_shardings=(shardings, parallel.replicated(mesh)),
                 donate_argnums=(0,))


def stage_train_steps(config, model, mesh, shardings) -> Callable[[int], Callable]:
  """host step -> the jitted train_step for it: one for the run, or one per stage."""
  if not config.train.active_slots_only:
    step_fn = jit_train_step(config, model, mesh, shardings)
    return lambda step: step_fn
  schedule = curriculum.build_schedule(config.curriculum, config.model.max_slots,
                                       config.train.steps)
  compiled: dict[int, Callable] = {}

  def for_step(step: int) -> Callable:
    k = curriculum.num_active_slots_host(step, schedule,
                                         config.curriculum.boundary_uses_old_count)
    if k not in compiled:
      compiled[k] = jit_train_step(config, model, mesh, shardings, num_slots=k)
    return compiled[k]

  return for_step


# --------------------------------------------------------------------------- the loop

def train_and_evaluate(config, workdir: str, *, evaluate_at_end: bool = True) -> dict:
  """Train (resuming from workdir's last checkpoint) and evaluate; returns the final eval metrics."""
  workdir = epath.Path(workdir)
  with cli.user_errors():  # bad config values, missing data or weights
    pipeline.check_available(config, splits=('train', 'validation') if evaluate_at_end else ('train',))
    mesh = parallel.mesh_from_config(config)
    model = video_model.build_model(config)
    curriculum.build_schedule(config.curriculum, config.model.max_slots, config.train.steps)
  workdir.mkdir(parents=True, exist_ok=True)
  ckpt = checkpoint_lib.Checkpointer(str(workdir), config)
  ckpt.check_compatible(model_params_template(config, model))

  # Missing or mismatched pretrained weights are the user's; other errors of the init are bugs.
  with cli.user_errors(FileNotFoundError, ImportError, ValueError,
                       match=r'weights|model\.encoder|not found'):
    state, shardings = create_state(config, model, mesh, jax.random.PRNGKey(config.seed))
  if ckpt.latest_step() is not None:
    state = ckpt.restore(checkpoint_lib.abstract_like(state))
    logging.info('resumed from step %d', int(state.step))
  start_step = int(jax.device_get(state.step))
  train_step_for = stage_train_steps(config, model, mesh, shardings)

  is_chief = jax.process_index() == 0
  writer = metric_writers.create_default_writer(str(workdir / 'tensorboard'), just_logging=not is_chief)
  if start_step == 0:
    writer.write_hparams(_flat_hparams(config))
  total_steps = config.train.steps
  history_path = workdir / 'train_history.jsonl'
  if is_chief:
    _truncate_history(history_path, start_step)

  batches = pipeline.prefetch_to_device(
      pipeline.train_iterator(config, start_step=start_step), mesh, config.data.prefetch)
  pending: list[dict] = []
  final_metrics: dict = {}
  with checkpoint_lib.PreemptionGuard() as guard, cli.progress_bar(
      total_steps, start_step, desc='train', enabled=is_chief) as bar:
    step = start_step
    in_flight = None  # metrics of the step dispatched before the newest one
    while step < total_steps:
      state, metrics = train_step_for(step)(state, next(batches))
      step += 1
      # At most two steps in flight: the host never runs ahead of the device, so a
      # signal is answered within one or two steps, and the bar counts computed steps.
      if in_flight is not None:
        jax.block_until_ready(in_flight)
        bar.update(1)
      in_flight = metrics
      pending.append(metrics)
      if step % config.train.log_every_steps == 0 or step == total_steps:
        scalars = _mean_metrics(pending)  # blocks on this step: the bar catches up
        bar.update(step - bar.n)
        pending = []
        bar.set_postfix(loss=f'{scalars["loss_total"]:.4g}', slots=int(scalars['active_slots']),
                        refresh=False)
        rate = None if bar.disable else bar.format_dict.get('rate')  # computed steps/s
        writer.write_scalars(step, dict(scalars, **({'steps_per_sec': rate} if rate else {})))
        if is_chief:
          with history_path.open('a') as f:
            f.write(json.dumps({'step': step, **scalars}) + '\n')
      preempted = _any_process(guard.requested)
      if (step % config.train.checkpoint_every_steps == 0 or step == total_steps or preempted):
        ckpt.save(state, force=preempted)
      if preempted:
        ckpt.close()
        bar.update(step - bar.n)  # the saved step is computed
        logging.warning('%s: saved step %d in %s; run the same command to resume',
                        guard.signal_name, step, ckpt.directory)
        writer.flush()
        return {'preempted_at_step': step}
      if (config.train.eval_every_steps > 0 and step % config.train.eval_every_steps == 0
          and step != total_steps):
        evaluate_lib.evaluate(config, model, state, mesh, workdir=str(workdir), writer=writer,
                              max_batches=config.eval.steps)
  ckpt.close()
  if evaluate_at_end:
    final_metrics = evaluate_lib.evaluate(config, model, state, mesh, workdir=str(workdir),
                                          writer=writer, max_batches=-1)
    if is_chief:
      from slotcurri_jax import visualize
      visualize.training_curves(_read_history(history_path), str(workdir / 'training_curves.png'))
  writer.flush()
  return final_metrics


def _mean_metrics(pending: list[dict]) -> dict:
  fetched = jax.device_get(pending)
  return {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}


def _any_process(flag: bool) -> bool:
  """A preemption seen by any host stops every host at the same step."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils
  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


def _read_history(path) -> dict:
  history: dict = {}
  if not path.exists():
    return history
  for line in path.read_text().splitlines():
    row = json.loads(line)
    for k, v in row.items():
      if k != 'step':
        history.setdefault(k, []).append((row['step'], v))
  return history


def _truncate_history(path, start_step: int) -> None:
  """Drop rows logged after the checkpoint we resume from (they will be logged again)."""
  if path.exists():
    rows = [l for l in path.read_text().splitlines() if json.loads(l)['step'] <= start_step]
    path.write_text(''.join(r + '\n' for r in rows))


def _flat_hparams(config) -> dict:
  flat = {}

  def walk(prefix, d):
    for k, v in d.items():
      key = f'{prefix}{k}'
      if isinstance(v, dict):
        walk(key + '.', v)
      elif isinstance(v, (int, float, str, bool)):
        flat[key] = v
      else:
        flat[key] = str(v)

  walk('', json.loads(config.to_json_best_effort()))
  return flat
