r"""Check our implementation against golden reference fixtures.

  python -m slotcurri_jax.tools.check_fixture [FILE.npz ...]

Without arguments every file under the repository's fixtures/ (or $SLOTCURRI_FIXTURES)
is checked. For each file: detect its kind (slot_model, dinov2_vit, spawn, ssync,
ssync_merge, metrics, resize, and the whole-run slotcurri_trajectory /
ssync_trajectory), rebuild what it tests from the file's own `config` (never from fixed
sizes), run it, and print one JSON line per output:
  {"file", "kind", "output", ..., "ok"}
Single-step kinds give max_abs_err, rel_l2_err and tol; trajectories are replayed
through the train step that trains (tools/trajectory.py), padded and with
train.active_slots_only (the record's "train_step"), and give, per quantity, the
worst step with its error and tolerance. The exit status is 1 when any output exceeds
its tolerance (fixtures/README.md; exact equality for labels, masks and indices), 2 when
a file cannot be checked (one line on stderr names the file and the problem), else 0.
"""
from __future__ import annotations

import functools
import json
import pathlib
import sys
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from slotcurri_jax import config as config_lib
from slotcurri_jax import curriculum
from slotcurri_jax import fixtures
from slotcurri_jax import metrics
from slotcurri_jax import ssync
from slotcurri_jax import train
from slotcurri_jax.data import device_preprocess
from slotcurri_jax.data import ytvis
from slotcurri_jax.models import dinov2
from slotcurri_jax.tools import import_reference
from slotcurri_jax.tools import trajectory

# Tolerances of the fixture README ("Tolerances to expect").
TOL_FORWARD = dict(atol=1e-5, rtol=1e-4)
TOL_LOSS = dict(atol=1e-5, rtol=0.0)
TOL_SSIM = dict(atol=2e-5, rtol=0.0)
TOL_GRAD = dict(atol=1e-5, rtol=1e-3)
TOL_SLOT_ERROR = dict(atol=1e-6, rtol=0.0)
TOL_TOKENS = dict(atol=1e-5, rtol=0.0)
TOL_POS_EMBED = dict(atol=1e-6, rtol=0.0)
TOL_EXACT = dict(atol=0.0, rtol=0.0)
TOL_IOU = dict(atol=1e-6, rtol=0.0)
TOL_RESIZE = dict(atol=1e-5, rtol=0.0)  # normalised units; fixtures/README.md

FORWARD_KEYS = ('features', 'slots', 'slots_predicted', 'sa_masks', 'sa_logits', 'dec_masks',
                'dec_alpha', 'recon')
PER_SLOT_KEYS = ('slots', 'slots_predicted', 'sa_masks', 'sa_logits', 'dec_masks', 'dec_alpha')
# (fixture prefix, our rollout, all slots active?) of slot_model.npz.
ROLLOUTS = (('fwd', 'forward', False), ('fwdN', 'forward', True), ('cyc', 'cyclic', True))


def compare(ours, ref, atol: float, rtol: float) -> dict:
  """max |ours - ref|, relative L2 error and whether |ours - ref| <= atol + rtol*|ref|."""
  ours = np.asarray(ours, np.float64)
  ref = np.asarray(ref, np.float64)
  if ours.shape != ref.shape:
    return dict(max_abs_err=None, rel_l2_err=None, tol=dict(atol=atol, rtol=rtol), ok=False,
                note=f'shape {ours.shape} != reference {ref.shape}')
  diff = np.abs(ours - ref)
  norm = np.linalg.norm(ref)
  return dict(max_abs_err=float(diff.max()) if diff.size else 0.0,
              rel_l2_err=float(np.linalg.norm(ours - ref) / norm) if norm > 0 else float(
                  np.linalg.norm(ours - ref)),
              tol=dict(atol=atol, rtol=rtol),
              ok=bool(np.all(diff <= atol + rtol * np.abs(ref))))


def fixture_config(data) -> dict:
  return json.loads(str(data['config']))


# ------------------------------------------------------------------ slot_model

def slot_model_config(cfg: dict):
  """Our config for slot_model.npz's slot stack (sizes from the fixture's config)."""
  c = config_lib.default_config()
  sizes = cfg['sizes']
  c.model.encoder.kind = 'tokens'  # the fixture's tokens are the backbone's output
  c.model.encoder.token_dim = sizes['D_f']
  grid = int(round(sizes['N_patch'] ** 0.5))
  if grid * grid != sizes['N_patch']:
    raise trajectory.FixtureError(f'N_patch={sizes["N_patch"]} is not a square patch grid')
  c.model.encoder.token_grid = grid
  c.model.slot_dim = sizes['D_s']
  c.model.max_slots = sizes['N_slots_total']
  c.model.feature_mlp_hidden = cfg['feature_mlp']['hidden']
  c.model.decoder.hidden = tuple(cfg['decoder']['hidden'])
  sa, pc = cfg['slot_attention'], cfg['predictor']
  c.model.slot_attention.iters_first = sa['n_iters_first_frame']
  c.model.slot_attention.iters = sa['n_iters']
  c.model.slot_attention.eps = sa['eps']
  c.model.slot_attention.gru_hidden = 'normed' if sa['gru_hidden_is_normed_slots'] else 'raw'
  if sa['mlp_hidden'] != 4 * sizes['D_s'] or sa['kvq_dim'] != sizes['D_s']:
    raise ValueError(f'slot attention with mlp_hidden={sa["mlp_hidden"]}, kvq_dim='
                     f'{sa["kvq_dim"]} is not our architecture (4*D_s, D_s)')
  c.model.predictor.num_blocks = pc['n_blocks']
  c.model.predictor.num_heads = pc['n_heads']
  c.model.predictor.mlp_ratio = pc['ffn_hidden'] // sizes['D_s']
  c.loss.ss_temperature = cfg['losses']['ss']['temperature']
  c.loss.contrast_group_size = sizes['B']  # the original pooled its whole batch
  weights = cfg['losses']['weights']
  c.loss.mse_weight, c.loss.ss_weight, c.loss.ssim_weight = (
      weights['mse'], weights['ss'], weights['ssim'])
  return c


def slot_model_from_fixture(data):
  """(config, run, params, X, K) of a slot_model fixture: the run's model takes the
  fixture's tokens through the 'tokens' encoder, and its objective is the one that trains."""
  cfg = fixture_config(data)
  config = slot_model_config(cfg)
  sizes = cfg['sizes']
  state_dict = {k[len('param/'):]: data[k] for k in data.files if k.startswith('param/')}
  params = import_reference.state_dict_to_params(state_dict, config)
  x = jnp.asarray(data['in/X'])
  if x.shape[2:] != (sizes['N_patch'], sizes['D_f']):
    raise trajectory.FixtureError(f'in/X has shape {x.shape}, but the sizes in config give '
                                  f'[B, T, {sizes["N_patch"]}, {sizes["D_f"]}]')
  return config, train.Run.from_config(config), params, x, sizes['K_active_train']


def total_loss_fn(run: train.Run) -> Callable:
  """loss(params, tokens, active, rollout) -> (total, (terms, outputs)): the run's model
  on tokens [B, T, N, D_f] and the run's objective (train.make_train_step's)."""

  def loss(params, x, active, rollout):
    out = run.model.apply({'params': params}, x, active, rollout)
    total, terms, _ = run.objective(out, active, 0)
    return total, (terms, out)

  return loss


def slot_model_outputs(data) -> dict[str, np.ndarray]:
  """Our values for every checked key of a slot_model fixture, under the fixture's names
  ('fwd/slots' ... with per-slot outputs sliced to the active rows, 'grad/<key>', ...)."""
  config, run, params, x, k = slot_model_from_fixture(data)
  max_slots = config.model.max_slots
  value_and_grad = jax.jit(jax.value_and_grad(total_loss_fn(run), has_aux=True),
                           static_argnums=3)
  ours = {}
  for prefix, rollout, all_slots in ROLLOUTS:
    n_active = max_slots if all_slots else k
    active = jnp.arange(max_slots) < n_active
    (_, (terms, out)), grads = value_and_grad(params, x, active, rollout)
    for key in FORWARD_KEYS:
      value = np.asarray(out[key])
      ours[f'{prefix}/{key}'] = value[:, :, :n_active] if key in PER_SLOT_KEYS else value
    for key, value in terms.items():
      ours[f'{prefix}/{key}'] = np.asarray(value)
    grad_prefix = {'fwd': 'grad', 'cyc': 'grad_cyc'}.get(prefix)
    if grad_prefix:
      for key, value in import_reference.params_to_state_dict(grads, config).items():
        ours[f'{grad_prefix}/{key}'] = value
    if prefix == 'fwd':
      ours['fwd/slot_error'] = _slot_error(out, n_active)
  return ours


def _slot_error(out, n_active):
  error = curriculum.slot_error(out['dec_masks'], out['recon'], out['targets'])
  return np.asarray(error)[:n_active]


def _slot_model_tolerance(name: str) -> dict:
  if name.startswith(('grad/', 'grad_cyc/')):
    return TOL_GRAD
  if name.endswith('loss_ssim'):
    return TOL_SSIM
  if '/loss_' in name:
    return TOL_LOSS
  if name.endswith('slot_error'):
    return TOL_SLOT_ERROR
  return TOL_FORWARD


def check_slot_model(path: pathlib.Path, data) -> Iterator[dict]:
  ours = slot_model_outputs(data)
  for name, value in ours.items():
    if f'out/{name}' in data.files:
      ref = data[f'out/{name}']
    elif name in data.files:
      ref = data[name]
    else:
      continue
    yield dict(output=name, **compare(value, ref, **_slot_model_tolerance(name)))
  # Rows K..N-1 of the placeholders take no part in training: exactly zero gradient.
  k = fixture_config(data)['sizes']['K_active_train']
  yield dict(output='grad/initializer.slots[K:] == 0',
             **compare(ours['grad/initializer.slots'][:, k:],
                       np.zeros_like(ours['grad/initializer.slots'][:, k:]), **TOL_EXACT))


# ------------------------------------------------------------------ dinov2_vit

def check_dinov2_vit(path: pathlib.Path, data) -> Iterator[dict]:
  arch = fixture_config(data)['arch']
  state_dict = {k[len('param/'):]: data[k] for k in data.files if k.startswith('param/')}
  params = dinov2.state_dict_to_params(state_dict)
  model = dinov2.DinoV2(arch['embed_dim'], arch['depth'], arch['num_heads'],
                        patch_size=arch['patch_size'], native_grid=arch['pos_grid_native'][0],
                        mlp_ratio=arch['mlp_ratio'])
  images = jnp.asarray(data['in/images']).transpose(0, 2, 3, 1)  # NCHW -> NHWC
  tokens = jax.jit(lambda p, x: model.apply({'params': p}, x))(params, images)
  yield dict(output='tokens', **compare(tokens, data['out/tokens'], **TOL_TOKENS))
  grid = images.shape[1] // arch['patch_size']
  pos = dinov2.resample_pos_embed(jnp.asarray(params['pos_embed']), grid)
  yield dict(output='pos_embed_resampled',
             **compare(pos, data['out/pos_embed_resampled'], **TOL_POS_EMBED))


# ------------------------------------------------------------------ spawn

def check_spawn(path: pathlib.Path, data) -> Iterator[dict]:
  """Each stageK case: curriculum.spawn with the fixture's unit directions injected."""
  del path
  spawn = jax.jit(curriculum.spawn, static_argnames=('scale', 'neighbor', 'norm_rows', 'mode'))
  for case in sorted({k.split('/')[0] for k in data.files if k.startswith('stage')}):
    d = {k[len(case) + 1:]: data[k] for k in data.files if k.startswith(case + '/')}
    p = d['in/P']
    k_max, dim = p.shape
    k_old, k_new = int(d['in/K_old']), int(d['in/K_new'])
    errors = np.zeros((k_max,), np.float32)
    errors[:k_old] = d['in/e']
    directions = np.zeros((k_max, dim), np.float32)
    directions[:k_new - k_old] = d['in/directions_unit']
    new_p, info = spawn(p, errors, k_old, k_new, jax.random.PRNGKey(0), directions=directions)
    yield dict(output=f'{case}/P_new', **compare(new_p, d['out/P_new'], **TOL_SLOT_ERROR))
    for name, ours in (('counts', info['counts'][:k_old]),
                       ('child_parent', info['child_parent'][:k_new - k_old]),
                       ('nn_idx', info['nn_idx'][:k_old])):
      yield dict(output=f'{case}/{name}', **compare(ours, d[f'out/{name}'], **TOL_EXACT))
    for name in ('distance', 'mean_norm', 'sigma'):
      yield dict(output=f'{case}/{name}',
                 **compare(np.asarray(info[name])[:k_old], d[f'out/{name}'], **TOL_SLOT_ERROR))


# ------------------------------------------------------------------ ssync

def check_ssync(path: pathlib.Path, data) -> Iterator[dict]:
  """Every case of ssync.npz (keys without a prefix, and 'slotmodel_case/...')."""
  del path
  config = fixture_config(data)
  for case, cc in config['cases'].items():
    prefix = '' if case == 'main' else case
    case = case.rstrip('/')
    f = {k[len(prefix):]: data[k] for k in data.files
         if k.startswith(prefix) and (prefix or not k.startswith('slotmodel_case/'))}
    z_enc, z_dec = jnp.asarray(f['in/zA']), jnp.asarray(f['in/zD'])
    active = jnp.ones(z_enc.shape[2], bool)
    # The reference pooled the whole batch in one process: group_size = B.
    kw = dict(grid=tuple(cc['grid']), tau_merge=cc['tau'], n_bd=config['n_bd'], n_noise=config['n_noise'],
              n_nbd=config['n_nbd'], temperature=config['loss_temperature'],
              group_size=z_enc.shape[0])

    def total(a, d, kw=kw):
      loss_bd, loss_in, aux = ssync.ssync_losses(a, d, active, **kw)
      return loss_bd + loss_in, (loss_bd, loss_in, aux)

    (_, (loss_bd, loss_in, aux)), (grad_enc, grad_dec) = jax.jit(jax.value_and_grad(
        total, argnums=(0, 1), has_aux=True))(z_enc, z_dec)
    exact = {key: aux[key] for key in ('labels_enc', 'labels_dec', 'labels_enc_merged',
                                       'labels_dec_merged')}
    exact.update(merge_mapping=aux['mapping'], boundary_mask=aux['boundary'],
                 interior_mask=aux['interior'])
    for name, ours in exact.items():
      yield dict(output=f'{case}/{name}', **compare(ours, f[f'out/{name}'], **TOL_EXACT))
    for name, ours, tol in (('loss_bd', loss_bd, TOL_LOSS), ('loss_in', loss_in, TOL_LOSS),
                            ('grad_zA', grad_enc, TOL_GRAD), ('grad_zD', grad_dec, TOL_GRAD)):
      yield dict(output=f'{case}/{name}', **compare(ours, f[f'out/{name}'], **tol))


def ssync_merge_outputs(data) -> dict[str, dict[str, np.ndarray]]:
  """Our labels, IoU, areas and merge of every case of ssync_merge.npz: {case: {output: array}}.

  Each case runs ssync.pseudo_labels on its logits with its first `active` rows active. The
  original only had those rows, so its arrays cover them: the mapping [B, active], the IoU
  [B, active, active], the areas [B, active]. Ours over all K rows are sliced to match;
  'inactive_rows_map_to_themselves' is our rule for the rest (ssync.merge_mapping).
  """
  config = fixture_config(data)
  ours = {}
  for case, cc in config['cases'].items():
    z_enc, z_dec = jnp.asarray(data[f'{case}/in/zA']), jnp.asarray(data[f'{case}/in/zD'])
    k, a = z_enc.shape[2], cc['active']
    active = jnp.arange(k) < a
    aux = jax.jit(functools.partial(ssync.pseudo_labels, grid=tuple(cc['grid']),
                                    tau_merge=cc['tau']))(z_enc, z_dec, active)
    mapping = np.asarray(aux['mapping'])
    ours[case] = {
        'labels_enc': aux['labels_enc'], 'labels_dec': aux['labels_dec'],
        'enc_area': np.asarray(ssync.label_areas(aux['labels_enc'], k))[:, :a],
        'slot_iou': np.asarray(aux['slot_iou'])[:, :a, :a],
        'merge_mapping': mapping[:, :a],
        'labels_enc_merged': aux['labels_enc_merged'],
        'labels_dec_merged': aux['labels_dec_merged'],
        'inactive_rows_map_to_themselves': mapping[:, a:] == np.arange(a, k)}
  return ours


def check_ssync_merge(path: pathlib.Path, data) -> Iterator[dict]:
  """The merge winner in the original's visiting order (both cases of ssync_merge.npz)."""
  del path
  for case, outputs in ssync_merge_outputs(data).items():
    for name, ours in outputs.items():
      if name == 'inactive_rows_map_to_themselves':
        ref, tol = np.ones_like(ours), TOL_EXACT
      else:
        ref = data[f'{case}/out/{name}']
        tol = TOL_IOU if name == 'slot_iou' else TOL_EXACT
      yield dict(output=f'{case}/{name}', **compare(ours, ref, **tol))


# ------------------------------------------------------------------ metrics

def check_metrics(path: pathlib.Path, data) -> Iterator[dict]:
  """The 'movi' and 'ytvis' cases: resize, argmax, video and per-frame FG-ARI / mBO."""
  del path
  config = fixture_config(data)
  for case in ('movi', 'ytvis'):
    d = {k[len(case) + 1:]: data[k] for k in data.files if k.startswith(case + '/')}
    if not d:
      continue
    if case == 'ytvis':  # instance channels -> ids (channel c is id c + 1, 0 = none)
      mask = d['in/true_mask'].astype(bool)
      true = np.where(mask.any(2), mask.argmax(2) + 1, 0).astype(np.int32)
    else:
      true = d['in/true_ids']
    soft = jnp.asarray(d['in/pred_soft'])  # [B, T, K, N] -> [B, T, K, G_h, G_w]
    soft = soft.reshape(soft.shape[:3] + tuple(config['cases'][case]['patch_grid']))
    out_hw = true.shape[-2:]
    yield dict(output=f'{case}/pred_resized',
               **compare(metrics.upsample_masks(soft, out_hw), d['out/pred_resized'],
                         **TOL_TOKENS))
    pred = np.asarray(metrics.masks_to_ids(soft, jnp.ones((soft.shape[2],), bool), out_hw))
    yield dict(output=f'{case}/pred_labels', **compare(pred, d['out/pred_labels'], **TOL_EXACT))
    ours = dict(ari=metrics.fg_ari(pred, true), mbo=metrics.mbo(pred, true))
    for name in ('ari', 'mbo'):
      yield dict(output=f'{case}/{name}_per_video',
                 **compare(ours[name], d[f'out/{name}_per_video'], **TOL_TOKENS))
    for name, fn in (('image_ari', metrics.image_fg_ari), ('image_mbo', metrics.image_mbo)):
      values, counted = fn(pred, true, ignore_background=True, convention=case)
      yield dict(output=f'{case}/{name}_per_frame_counted',
                 **compare(counted, d[f'out/{name}_per_frame_counted'], **TOL_EXACT))
      per_video = [values[b][counted[b]].mean() for b in range(values.shape[0])]
      yield dict(output=f'{case}/{name}_per_video',
                 **compare(per_video, d[f'out/{name}_per_video'], **TOL_TOKENS))


# ------------------------------------------------------------------ resize

def resize_outputs(data) -> dict[str, np.ndarray]:
  """Our on-device preprocessing (data/device_preprocess.py) of resize.npz's uint8 frames,
  fed as the raw batches of data/movi.py and data/ytvis.py (the whole MOVi frame; the
  stored-pixel window a YT-VIS training crop reads; the centre square for evaluation), at
  the fixture's kept output rows and columns: {'movi/video': float32 [T, rows, cols, 3], ...}.
  """
  cases = fixture_config(data)['cases']
  resize = jax.jit(device_preprocess.video_from_raw, static_argnums=4)

  def ours(prefix, frames, size, crop, flip, resolution):
    out = resize(frames[None], np.asarray([size], np.int32), np.asarray([crop], np.int32),
                 np.asarray([flip]), resolution)
    return np.asarray(out[0])[:, data[f'{prefix}/in/rows']][:, :, data[f'{prefix}/in/cols']]

  r = cases['movi']['resolution']
  h, w = cases['movi']['stored']
  outputs = {f'movi/{name}': ours('movi', data['movi/in/frames'], (h, w, r, r), (0, 0, 0, 0),
                                  flip, r)
             for name, flip in (('video', False), ('video_flip', True))}
  r = cases['ytvis']['resolution']
  h, w = cases['ytvis']['stored']
  frames = data['ytvis/in/frames']
  new_h, new_w = (int(n) for n in ytvis._short_side(h, w, r))
  pad = min(h, w) + 4  # ytvis.raw_window: the pre-pass short side + 4
  for k, (top, left) in enumerate(data['ytvis/in/crops']):
    row0 = int(ytvis._window_start(h, new_h, int(top), r, pad))
    col0 = int(ytvis._window_start(w, new_w, int(left), r, pad))
    window = np.zeros(frames.shape[:1] + (pad, pad, 3), np.uint8)
    stored = frames[:, row0:row0 + pad, col0:col0 + pad]
    window[:, :stored.shape[1], :stored.shape[2]] = stored
    outputs[f'ytvis/train_crop{k}'] = ours('ytvis', window, (h, w, new_h, new_w),
                                           (top, left, row0, col0), False, r)
  top, left, side = (int(n) for n in ytvis._centre_crop(h, w))
  outputs['ytvis/eval'] = ours('ytvis', frames[:, top:top + side, left:left + side],
                               (side, side, r, r), (0, 0, 0, 0), False, r)
  return outputs


def check_resize(path: pathlib.Path, data) -> Iterator[dict]:
  """resize.npz: PyTorch's bicubic resize, clamp, normalisation, crops and flip."""
  del path
  for name, ours in resize_outputs(data).items():
    case, output = name.split('/')
    yield dict(output=name, **compare(ours, data[f'{case}/out/{output}'], **TOL_RESIZE))


CHECKS: dict[str, Callable[[pathlib.Path, Any], Iterator[dict]]] = {
    'slot_model': check_slot_model,
    'dinov2_vit': check_dinov2_vit,
    'spawn': check_spawn,
    'ssync': check_ssync,
    'ssync_merge': check_ssync_merge,
    'metrics': check_metrics,
    'resize': check_resize,
    'slotcurri_trajectory': trajectory.check_every_train_step,
    'ssync_trajectory': trajectory.check_every_train_step,
}


def detect_kind(data) -> str:
  """The fixture kind from config['fixture'], else from characteristic keys."""
  if 'config' in data.files:
    kind = fixture_config(data).get('fixture')
    if kind in CHECKS:
      return kind
  files = set(data.files)
  by_key = (('slotcurri_trajectory', 'spawn1/directions_unit'),
            ('ssync_trajectory', 'out/step/ssync_on'),
            ('slot_model', 'param/initializer.slots'), ('dinov2_vit', 'out/tokens'),
            ('spawn', 'stage1/in/P'), ('ssync', 'in/zA'), ('metrics', 'movi/out/ari'))
  for kind, key in by_key:
    if key in files:
      return kind
  raise trajectory.FixtureError(
      f'unknown fixture kind (config "fixture" is not one of {sorted(CHECKS)}, and no '
      f'characteristic key among {sorted(files)[:6]}...)')


def check_file(path: str | pathlib.Path) -> list[dict]:
  """Every record of one fixture file. Raises FixtureError (one line) when it cannot
  be checked: not an .npz, unknown kind, a missing key, shapes or sizes that do not fit."""
  path = pathlib.Path(path)
  try:
    with np.load(path, allow_pickle=False) as z:
      data = _Loaded(z)
  except (OSError, ValueError) as e:
    raise trajectory.FixtureError(f'not a readable .npz archive ({e})') from None
  kind = detect_kind(data)
  try:
    return [dict(file=str(path), kind=kind, **record) for record in CHECKS[kind](path, data)]
  except trajectory.FixtureError:
    raise
  except KeyError as e:
    raise trajectory.FixtureError(f'{kind} fixture without the key {e}') from None
  except (ValueError, TypeError) as e:  # shapes or sizes our model cannot take
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise trajectory.FixtureError(f'{kind} fixture that our code cannot take: {first}') from None


def all_fixture_files() -> list[pathlib.Path]:
  """Every .npz under the fixtures folders (fixtures/reference, fixtures/trajectory)."""
  return sorted(p for kind in fixtures.KINDS for p in fixtures.fixtures_dir(kind).glob('*.npz'))


class _Loaded:
  """An np.load result read into memory (so the file can be closed), same interface."""

  def __init__(self, npz):
    self.files = list(npz.files)
    self._arrays = {k: npz[k] for k in self.files}

  def __getitem__(self, key):
    return self._arrays[key]


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if argv and argv[0] in ('-h', '--help'):
    print(__doc__)
    return 0
  try:
    paths = argv or all_fixture_files()
  except FileNotFoundError as e:
    print(f'check_fixture: {e}', file=sys.stderr)
    return 2
  failed, broken = False, False
  for path in paths:
    try:
      records = check_file(path)
    except trajectory.FixtureError as e:
      print(f'check_fixture: {path}: {e}', file=sys.stderr)
      broken = True
      continue
    for record in records:
      print(json.dumps(record), flush=True)
      failed |= record['ok'] is False
  return 2 if broken else (1 if failed else 0)


if __name__ == '__main__':
  sys.exit(main())
