r"""SSync's losses against a dense all-pairs patch alignment, as the patch grid grows.

docs/method.md §9.8: SSync's labels, merge, regions and losses cost O(B T K N) (merge
O(B T K^2 N)), while the dense encoder-decoder patch contrast it replaces (SRL-style)
builds a (g N) x (g N) similarity matrix per group of g frames, O(B T g N^2 D).

Both are timed forward + backward on CPU:
* ssync: `ssync.ssync_losses` (Brier, one pool) on logits z_enc, z_dec [B, T, K, N],
  gradient of loss_bd + loss_in wrt both;
* dense: L2-normalised encoder and decoder patch embeddings [B, T, N, D] grouped g
  frames at a time, cosine similarity / 0.1 of every encoder patch with every decoder
  patch of the group, symmetric InfoNCE with the same patch as the positive; gradient
  wrt both embeddings.

Peak memory is the compiled executable's own estimate (XLA buffer assignment):
argument + output + temp bytes of `jax.jit(f).lower(...).compile().memory_analysis()`.
The dense method is compiled but not run where that estimate exceeds --memory_cap_gib.
Times are the median of several runs after one warm-up run. Slopes are least-squares
fits of log(time) and log(memory) against log(N).

  python benchmarks/ssync_scaling.py            # ~1.5 min on 2 CPU cores
  python benchmarks/ssync_scaling.py --grids 8,16 --runs 3   # smoke run

Writes benchmarks/results/ssync_scaling.{json,png}.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import time

os.environ.setdefault('JAX_PLATFORMS', 'cpu')  # read when jax is imported

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from matplotlib import figure  # noqa: E402  (no pyplot: no GUI backend)
import numpy as np  # noqa: E402

import measure  # noqa: E402  (benchmarks/measure.py)
from slotcurri_jax import ssync  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / 'results'


def ssync_step(z_enc, z_dec, *, grid: int, tau_merge: float):
  """loss_bd + loss_in and its gradient wrt (z_enc [B,T,K,N], z_dec [B,T,K,N]), N = grid^2."""
  active = jnp.ones(z_enc.shape[2], bool)

  def total(a, d):
    loss_bd, loss_in, _ = ssync.ssync_losses(a, d, active, grid=(grid, grid),
                                             tau_merge=tau_merge, group_size=a.shape[0])
    return loss_bd + loss_in
  return jax.value_and_grad(total, argnums=(0, 1))(z_enc, z_dec)


def dense_step(enc, dec, *, frames_per_group: int, temperature: float = 0.1):
  """SRL-style dense patch contrast and its gradient wrt (enc, dec): [B, T, N, D].

  Each group of `frames_per_group` frames forms a (g N) x (g N) cosine-similarity
  matrix between encoder and decoder patches; symmetric InfoNCE, positives on the
  diagonal (same frame and patch).
  """
  def loss(e, d):
    b, t, n, dim = e.shape
    g = frames_per_group
    e = e.reshape(b * t // g, g * n, dim)
    d = d.reshape(b * t // g, g * n, dim)
    e = e / jnp.linalg.norm(e, axis=-1, keepdims=True)
    d = d / jnp.linalg.norm(d, axis=-1, keepdims=True)
    sim = jnp.einsum('gid,gjd->gij', e, d) / temperature
    diag = jnp.diagonal(sim, axis1=1, axis2=2)
    rows = jax.nn.logsumexp(sim, axis=2) - diag
    cols = jax.nn.logsumexp(sim, axis=1) - diag
    return 0.5 * (jnp.mean(rows) + jnp.mean(cols))
  return jax.value_and_grad(loss, argnums=(0, 1))(enc, dec)


def ssync_inputs(rng, b, t, k, grid):
  """Blob-like logits so that the labels have regions, boundaries and some merges."""
  n = grid * grid
  ys, xs = np.meshgrid(np.arange(grid), np.arange(grid), indexing='ij')
  centres = rng.uniform(0, grid, size=(b, 1, k, 2)) + rng.normal(0, 0.05 * grid, (b, t, k, 2))
  dist2 = ((ys.reshape(1, 1, 1, n) - centres[..., :1]) ** 2
           + (xs.reshape(1, 1, 1, n) - centres[..., 1:]) ** 2)
  z = -dist2 / (0.05 * grid ** 2)
  z_enc = z + 0.3 * rng.normal(size=z.shape)
  z_dec = z + 0.1 * rng.normal(size=z.shape)
  return jnp.asarray(z_enc, jnp.float32), jnp.asarray(z_dec, jnp.float32)


def compile_and_time(fn, args, runs: int, memory_cap: float | None):
  """Compile fn(*args); if it fits, time it. Returns a result dict."""
  compile_s, compiled = measure.compile_timed(jax.jit(fn), *args)
  mem = compiled.memory_analysis()
  peak = mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
  out = dict(peak_bytes=int(peak), temp_bytes=int(mem.temp_size_in_bytes),
             argument_bytes=int(mem.argument_size_in_bytes), compile_s=compile_s)
  if memory_cap is not None and peak > memory_cap:
    out.update(skipped=f'estimated peak {peak / 2**30:.2f} GiB > cap {memory_cap / 2**30:.2f} GiB')
    return out
  # One warm-up run; fewer runs for the slowest cases (at least 3, then a 20 s budget).
  timing = measure.time_calls(lambda: compiled(*args), steps=runs, warmup=1, budget_s=20.0,
                              min_steps=3)
  out.update(median_s=timing.median_s, runs=len(timing.times_s), times_s=timing.times_s)
  return out


def fit_slope(ns, values):
  if len(ns) < 2:
    return None
  return float(np.polyfit(np.log(ns), np.log(values), 1)[0])


def slopes(rows, key, min_patches=0):
  pts = [(r['num_patches'], r[key]) for r in rows if key in r and r['num_patches'] >= min_patches]
  return fit_slope([p[0] for p in pts], [p[1] for p in pts])


def plot(results, path):
  fig = figure.Figure(figsize=(11, 4.2))
  axes = fig.subplots(1, 2)
  for ax, key, label in ((axes[0], 'median_s', 'forward+backward time [s]'),
                         (axes[1], 'peak_bytes', 'compiled peak memory [bytes]')):
    for method, style in (('ssync', 'o-'), ('dense', 's-')):
      rows = [r for r in results['rows'][method] if key in r]
      ns = np.array([r['num_patches'] for r in rows], float)
      vals = np.array([r[key] for r in rows], float)
      if not len(ns):
        continue
      slope = results['slopes'][method][key]
      slope_txt = 'n/a' if slope is None else f'{slope:.2f}'
      ax.loglog(ns, vals, style, label=f'{method} (slope {slope_txt})')
      if len(ns) >= 2:
        coef = np.polyfit(np.log(ns), np.log(vals), 1)
        ax.loglog(ns, np.exp(np.polyval(coef, np.log(ns))), ':', color=ax.lines[-1].get_color())
      for r in results['rows'][method]:
        if 'skipped' in r and key == 'peak_bytes':
          ax.loglog([r['num_patches']], [r['peak_bytes']], 'x', color='gray')
    ax.set_xlabel('patches per frame N (grid side^2)')
    ax.set_ylabel(label)
    ax.grid(True, which='both', alpha=0.3)
    ax.legend()
  cfg = results['config']
  fig.suptitle(f"SSync vs dense patch contrast, CPU, B={cfg['batch']} T={cfg['frames']} "
               f"K={cfg['slots']} D={cfg['dim']} g={cfg['frames_per_group']} "
               '(x: dense compiled but skipped)')
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  # 64..128: beyond the dense method's memory cap; they show SSync's asymptotic slope
  # once fixed per-call overheads no longer dominate its sub-10 ms small sizes.
  p.add_argument('--grids', default='8,16,24,32,40,48,64,96,128')
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--frames', type=int, default=4)
  p.add_argument('--slots', type=int, default=11)
  p.add_argument('--dim', type=int, default=64)
  p.add_argument('--frames_per_group', type=int, default=4)
  p.add_argument('--tau_merge', type=float, default=0.7)
  p.add_argument('--runs', type=int, default=7)
  p.add_argument('--memory_cap_gib', type=float, default=4.0)
  p.add_argument('--out', default=str(RESULTS / 'ssync_scaling'))
  a = p.parse_args()
  grids = [int(x) for x in a.grids.split(',')]
  cap = a.memory_cap_gib * 2**30
  rng = np.random.default_rng(0)
  rows = {'ssync': [], 'dense': []}
  start, load_before = time.perf_counter(), os.getloadavg()
  for grid in grids:
    n = grid * grid
    z_enc, z_dec = ssync_inputs(rng, a.batch, a.frames, a.slots, grid)
    r = compile_and_time(lambda x, y: ssync_step(x, y, grid=grid, tau_merge=a.tau_merge),
                         (z_enc, z_dec), a.runs, None)
    rows['ssync'].append(dict(grid=grid, num_patches=n, **r))
    emb = lambda: jnp.asarray(rng.normal(size=(a.batch, a.frames, n, a.dim)), jnp.float32)
    r = compile_and_time(lambda x, y: dense_step(x, y, frames_per_group=a.frames_per_group),
                         (emb(), emb()), a.runs, cap)
    rows['dense'].append(dict(grid=grid, num_patches=n, **r))
    for m in ('ssync', 'dense'):
      r = rows[m][-1]
      timing = (f"{r['median_s'] * 1e3:9.2f} ms (median of {r['runs']})" if 'median_s' in r
                else f"skipped: {r['skipped']}")
      print(f'{grid:3d}x{grid:<3d} N={n:5d} {m:6s} peak {r["peak_bytes"] / 2**20:10.2f} MiB  {timing}',
            flush=True)
  results = dict(
      config=dict(vars(a), grids=grids),
      environment={**measure.jax_info(), **measure.machine_info(load_before)},
      rows=rows,
      slopes={m: {key: slopes(rows[m], key) for key in ('median_s', 'peak_bytes')} for m in rows},
      slopes_n_ge_256={m: {key: slopes(rows[m], key, 256) for key in ('median_s', 'peak_bytes')}
                       for m in rows},
      slopes_n_ge_1024={m: {key: slopes(rows[m], key, 1024) for key in ('median_s', 'peak_bytes')}
                        for m in rows},
      wall_s=time.perf_counter() - start,
  )
  out = pathlib.Path(a.out)
  measure.write_json(out.with_suffix('.json'), results)
  plot(results, out.with_suffix('.png'))
  print('log-log slopes (all sizes):', json.dumps(results['slopes']))
  print('log-log slopes (N >= 256):', json.dumps(results['slopes_n_ge_256']))
  print('log-log slopes (N >= 1024):', json.dumps(results['slopes_n_ge_1024']))
  print(f"wrote {out.with_suffix('.png')}; {results['wall_s']:.0f} s in all")


if __name__ == '__main__':
  main()
