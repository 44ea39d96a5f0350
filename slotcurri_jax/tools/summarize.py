r"""Results across seeds: mean +- std (and n) per method and dataset, from finished runs.

  python -m slotcurri_jax.tools.summarize /tmp/demo_s0 /tmp/demo_s1 /tmp/demo_s2 \
      /tmp/demo_sc_s0 /tmp/demo_sc_s1 /tmp/demo_sc_s2 [--format=json]

Reads each WORKDIR's eval/metrics_latest.json (written by evaluate.py: the metrics, and the
settings with the whole config). Runs are grouped by method (slotcurri / slotcontrast, with
"+ssync") and dataset; within a group every setting and config key must agree except the
seed and where the data is kept (IGNORED), so that a row is one setting over seeds, and a
difference is refused with the key named, as is a seed or a workdir given twice. std is the
sample standard deviation (n - 1); one run has none; a metric some run lacks is n/a (null in
JSON). FG-ARI and mBO are x 100, as everywhere.
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys

import numpy as np

from slotcurri_jax import cli
from slotcurri_jax import compat
from slotcurri_jax import errors

METRICS = {'ari': 'video FG-ARI', 'mbo': 'video mBO', 'image_ari': 'image FG-ARI',
           'image_mbo': 'image mBO', 'fragmentation': 'fragmentation'}
# Keys that may differ between the seeds of one row: the seed, and this machine's settings
# (compat.LOCAL: where data and weights are kept, how they are read and sharded), but not
# which videos are evaluated or which folder of videos was trained on.
IGNORED = ('config.seed', 'config.data.video_folder.rebuild', 'masks_dir') + tuple(
    f'config.{key}' for key in compat.LOCAL
    if key not in ('data.num_eval_videos', 'data.video_folder'))


def load_run(workdir: str) -> dict:
  """{'workdir', 'metrics', 'settings' (flat, the config under 'config.')} of one run."""
  path = pathlib.Path(workdir) / 'eval' / 'metrics_latest.json'
  if not path.is_file():
    raise errors.UserError(f'{workdir} has no eval/metrics_latest.json: is it a finished run '
                           '(python -m slotcurri_jax.main ... --mode=train_and_eval)?')
  try:
    payload = json.loads(path.read_text())
  except ValueError as e:
    raise errors.UserError(f'{path} is not valid JSON ({e}); evaluate the run again') from e
  metrics = payload.get('metrics', {})
  if 'ari' not in metrics:
    raise errors.UserError(f'{path} has no metrics (its evaluation videos had no masks)')
  return {'workdir': str(workdir), 'metrics': metrics, 'settings': compat.flatten(payload['settings'])}


def _row_key(run: dict) -> tuple[str, str]:
  s = run['settings']
  return s['method'] + ('+ssync' if s.get('ssync') else ''), s['dataset']


def check_same_setting(runs: list[dict]) -> None:
  """Raise naming the first key (other than IGNORED) on which two runs of a row differ."""
  first = runs[0]
  for other in runs[1:]:
    for key in sorted(set(first['settings']) | set(other['settings'])):
      if key.startswith(IGNORED) or key == 'num_videos':
        continue
      a, b = first['settings'].get(key, '<missing>'), other['settings'].get(key, '<missing>')
      if a != b:
        raise errors.UserError(
            f'{first["workdir"]} and {other["workdir"]} ({" on ".join(_row_key(first))}) differ '
            f'in {key}: {a!r} vs {b!r}; a row averages runs that differ only in their seed')
  seen = {}
  for run in runs:
    seed = run['settings'].get('config.seed')
    if seed in seen:
      raise errors.UserError(f'{seen[seed]} and {run["workdir"]} are the same seed ({seed}): '
                             'give each seed once')
    seen[seed] = run['workdir']


def summarize(workdirs: list[str]) -> list[dict]:
  """One row per (method, dataset): n, workdirs and each metric's mean and std."""
  rows: dict[tuple[str, str], list[dict]] = {}
  resolved = [pathlib.Path(w).resolve() for w in workdirs]
  twice = [w for i, w in enumerate(workdirs) if resolved[i] in resolved[:i]]
  if twice:
    raise errors.UserError(f'{twice[0]} is given twice; give each run once')
  for workdir in workdirs:
    run = load_run(workdir)
    rows.setdefault(_row_key(run), []).append(run)
  table = []
  for (method, dataset), runs in rows.items():
    check_same_setting(runs)
    stats = {}
    for key in METRICS:
      values = np.asarray([r['metrics'].get(key, math.nan) for r in runs], np.float64)
      std = float(np.std(values, ddof=1)) if len(values) > 1 else None
      stats[key] = {'mean': _number(np.mean(values)), 'std': None if std is None else _number(std)}
    table.append({'method': method, 'dataset': dataset, 'n': len(runs),
                  'workdirs': [r['workdir'] for r in runs], 'metrics': stats})
  return table


def _number(x) -> float | None:
  """A float, or None for NaN (a metric some run lacks), which JSON cannot hold."""
  return float(x) if np.isfinite(x) else None


def markdown(table: list[dict]) -> str:
  """The table as Markdown: mean +- std per metric (x 100 but fragmentation)."""
  lines = ['| method | dataset | n | ' + ' | '.join(METRICS.values()) + ' |',
           '|---|---|---|' + '---|' * len(METRICS)]
  for row in table:
    cells = []
    for key, s in row['metrics'].items():
      digits = 3 if key == 'fragmentation' else 1
      std = '' if s['std'] is None else f' ± {s["std"]:.{digits}f}'
      cells.append('n/a' if s['mean'] is None else f'{s["mean"]:.{digits}f}{std}')
    lines.append(f'| {row["method"]} | {row["dataset"]} | {row["n"]} | ' + ' | '.join(cells)
                 + ' |')
  return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('workdirs', nargs='+', help='run workdirs (each with eval/)')
  parser.add_argument('--format', choices=('markdown', 'json'), default='markdown')
  args = parser.parse_args(argv)
  try:
    table = summarize(args.workdirs)
  except errors.UserError as e:
    cli.fail(errors.message(e))
  print(markdown(table) if args.format == 'markdown' else json.dumps(table, indent=2))
  return 0


if __name__ == '__main__':
  sys.exit(main())
