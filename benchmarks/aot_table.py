r"""docs/scaling.md's TPU table, from the TPU compiler: every paper config on four slices.

  python benchmarks/aot_table.py [--jobs=2] [--topologies=v5e-8,v5p-8,v4-8,v5p-128]
      [--only=movi_c] [--out_dir=benchmarks/results] [--doc=docs/scaling.md]

For each paper config x method (configs/movi_c.py, movi_e.py, ytvis.py; slotcontrast,
slotcurri, ssync, slotcurri_ssync) at its paper global batch and each slice, the train
and eval steps are compiled for the slice with XLA's TPU compiler on this machine
(slotcurri_jax/aot.py, as `python -m slotcurri_jax.tools.aot` does), with the default
options; a step that does not fit gets `aot.plan_fit`'s cheapest options that fit. A
program already compiled for a slice (the eval step of two methods with the same
rollout, a candidate seen before) is not compiled again: its lowered text is the key.
On a slice whose chips do not divide the paper's evaluation batch, the evaluation batch
is raised to the number of chips (the row says so).

Every result is saved as it comes (`<out_dir>/aot_table_<slice>.json`; a rerun skips what
they hold), and the Markdown table between the markers in `--doc` is rewritten from all of
them. SlotCurri is compiled on every slice first, then SSync, SlotContrast and SlotCurri +
SSync; --jobs deals the slices to that many processes.
Needs libtpu (`pip install -e ".[aot]"`). Each compile takes 0.5-3 minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import subprocess
import sys
import time

os.environ.setdefault('JAX_PLATFORMS', 'cpu')  # the TPU devices are compile-only
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from slotcurri_jax import aot  # noqa: E402
from slotcurri_jax import config as config_lib  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'benchmarks'))
import measure  # noqa: E402  (benchmarks/measure.py)

DATASETS = ('movi_c', 'movi_e', 'ytvis')
METHODS = ('slotcurri', 'ssync', 'slotcontrast', 'slotcurri_ssync')  # the order they are run
TOPOLOGIES = ('v5e-8', 'v5p-8', 'v4-8', 'v5p-128')
# Rows of the table in this order; h100-8 needs jax's CUDA plugin (slotcurri_jax/aot_gpu.py),
# so it runs in its own environment: --topologies=h100-8.
TABLE_ORDER = TOPOLOGIES + ('h100-8',)
BEGIN, END = '<!-- aot-table:begin -->', '<!-- aot-table:end -->'


class Compiler:
  """aot compiles, each distinct (topology, lowered program) once."""

  def __init__(self):
    self.memo: dict = {}

  def __call__(self, config, topo, step: str, options: dict | None = None):
    program = aot.Program.build(config, topo)
    lowered = program.lower(step)
    key = (topo.name, hashlib.sha256(lowered.as_text().encode()).hexdigest())
    if key not in self.memo:
      self.memo[key] = program.compile(step, options, lowered=lowered)
    report = self.memo[key]
    return aot.StepReport(**{**report.__dict__, 'options': dict(options or {})})


def config_for(dataset: str, method: str, topo) -> tuple:
  """The paper config, with the evaluation batch raised to the chips where they do not
  divide it; (config, overrides made)."""
  config = config_lib.load(f'{REPO / "configs" / dataset}.py:{method}')
  overrides = {}
  chips = len(topo.devices)
  if config.data.eval_batch_size % chips:
    overrides['data.eval_batch_size'] = chips
  return aot.apply_overrides(config, overrides), overrides


def entry(dataset: str, method: str, topo, compiler: Compiler, saved: dict | None = None
          ) -> dict:
  """One config on one slice; the steps of `saved` (an earlier entry) are kept."""
  config, overrides = config_for(dataset, method, topo)
  program = aot.Program.build(config, topo)
  steps = dict(saved['steps']) if saved else {}
  for step in program.step_names():
    if step in steps:
      continue
    report = compiler(config, topo, step)
    row = {'default': report.as_json()}
    if not report.fits:
      plan = aot.plan_fit(config, topo, step,
                          compile_fn=lambda c, s, o: compiler(c, topo, s, o))
      row['tried'] = [dict(r.as_json(), names=list(n)) for n, r in plan.tried]
      row['cheapest_fit'] = (dict(plan.best[1].as_json(), names=list(plan.best[0]))
                             if plan.best else None)
      row['max_per_device_batch'] = plan.max_per_device_batch
    steps[step] = row
    print(f'  {dataset}:{method} {topo.name} {step}: {report.hbm_bytes_per_device / 2**30:.2f}'
          f' GiB, fits={report.fits}, {report.compile_seconds:.0f} s', flush=True)
  return {'config': f'configs/{dataset}.py:{method}', 'topology': topo.name,
          'chips': len(topo.devices), 'global_batch': config.data.batch_size,
          'eval_batch': config.data.eval_batch_size, 'overrides': overrides, 'steps': steps}


def _fit_cell(row: dict) -> str:
  """'13.6 ✓' or '17.3 ✗ → remat 14.1' (GiB per chip)."""
  d = row['default']
  cell = f'{d["hbm_bytes_per_device"] / 2**30:.1f} {"yes" if d["fits"] else "NO"}'
  if d['fits']:
    return cell
  best = row.get('cheapest_fit')
  if best:
    return cell + f' → {"+".join(best["names"])} {best["hbm_bytes_per_device"] / 2**30:.1f}'
  b = row.get('max_per_device_batch')
  return cell + (f' → ≤{b} clips/chip with remat+fsdp+bf16' if b else ' → nothing fits')


def markdown(results: list[dict]) -> str:
  lines = ['| config | slice (chips) | clips/chip | train GiB/chip | eval GiB/chip | '
           'train TFLOP/chip (compiled / traced) | ≥ ms/step at bf16 peak | '
           'collectives MB/step | compile s (train, eval) |',
           '|---|---|---|---|---|---|---|---|---|']
  for r in results:
    train = [v for k, v in r['steps'].items() if k.startswith('train')][-1]
    evaluation = r['steps'].get('eval')
    d = train['default']
    eval_seconds = f'{evaluation["default"]["compile_seconds"]:.0f}' if evaluation else '-'
    compiled = d['flops_per_device'] is not None  # None: the compiler ran out of HBM
    flops = f'{d["flops_per_device"] / 1e12:.2f}' if compiled else '-'
    bound = f'{1e3 * d["lower_bound_step_seconds"]:.0f}' if compiled else '-'
    note = ''.join(f' ({k}={v})' for k, v in r['overrides'].items())
    lines.append(
        f'| `{r["config"]}`{note} | {r["topology"]} ({r["chips"]}) | {d["per_device_batch"]} | '
        f'{_fit_cell(train)} | {_fit_cell(evaluation) if evaluation else "not compiled yet"} | '
        f'{flops} / {d["counted_flops_per_device"] / 1e12:.2f} | {bound} | '
        f'{sum(d["collective_bytes_per_device"].values()) / 1e6:.1f} | '
        f'{d["compile_seconds"]:.0f}, {eval_seconds} |')
  return '\n'.join(lines)


def write_doc(doc: pathlib.Path, out_dir: pathlib.Path) -> None:
  """Rewrite the table between the markers of `doc` from every saved slice."""
  results = all_results(out_dir)
  text = doc.read_text()
  if BEGIN not in text or END not in text:
    raise SystemExit(f'{doc} has no {BEGIN} ... {END} markers')
  head, rest = text.split(BEGIN, 1)
  _, tail = rest.split(END, 1)
  doc.write_text(f'{head}{BEGIN}\n{markdown(results)}\n{END}{tail}')


def result_path(out_dir: pathlib.Path, topology: str) -> pathlib.Path:
  return out_dir / f'aot_table_{topology}.json'


def run_slices(names: list[str], only: str, out_dir: pathlib.Path, doc: pathlib.Path) -> None:
  """Every paper config on these slices, SlotCurri on every slice first, then the other
  methods; each result saved as it comes (a rerun skips what is saved)."""
  topos = [aot.topology(name) for name in names]
  results = {}
  for topo in topos:
    path = result_path(out_dir, topo.name)
    results[topo.name] = {r['config']: r for r in
                          (json.loads(path.read_text())['results'] if path.exists() else [])}
  compiler = Compiler()
  start = time.time()
  for method in METHODS:
    for dataset in DATASETS:
      for topo in topos:
        config = f'configs/{dataset}.py:{method}'
        saved = results[topo.name].get(config)
        if only not in f'{dataset}:{method}' or (saved and 'eval' in saved['steps']):
          continue
        results[topo.name][config] = entry(dataset, method, topo, compiler, saved)
        measure.write_json(result_path(out_dir, topo.name), {
            'topology': topo.name, 'results': list(results[topo.name].values()),
            'jax': measure.jax_info(), 'machine': measure.machine_info(None),
            'seconds_this_run': time.time() - start})
        write_doc(doc, out_dir)


def all_results(out_dir: pathlib.Path) -> list[dict]:
  """Every saved row, in the order of TABLE_ORDER and DATASETS, SlotContrast first."""
  rows = [r for t in TABLE_ORDER if result_path(out_dir, t).exists()
          for r in json.loads(result_path(out_dir, t).read_text())['results']]
  order = [f'configs/{d}.py:{m}' for d in DATASETS
           for m in ('slotcontrast', 'slotcurri', 'ssync', 'slotcurri_ssync')]
  return sorted(rows, key=lambda r: (TABLE_ORDER.index(r['topology']), order.index(r['config'])))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--topologies', default=','.join(TOPOLOGIES))
  parser.add_argument('--only', default='', help='substring of "dataset:method" to run')
  parser.add_argument('--jobs', type=int, default=1, help='slices compiled at once')
  parser.add_argument('--out_dir', default=str(REPO / 'benchmarks/results'))
  parser.add_argument('--doc', default=str(REPO / 'docs/scaling.md'))
  args = parser.parse_args()
  out_dir, doc = pathlib.Path(args.out_dir), pathlib.Path(args.doc)
  names = args.topologies.split(',')
  if args.jobs > 1:  # the slices dealt round-robin to args.jobs processes
    jobs = [subprocess.Popen([sys.executable, __file__, f'--topologies={",".join(names[i::args.jobs])}',
                              f'--only={args.only}', f'--out_dir={out_dir}', f'--doc={doc}'])
            for i in range(min(args.jobs, len(names)))]
    for job in jobs:
      job.wait()
  else:
    run_slices(names, args.only, out_dir, doc)
  write_doc(doc, out_dir)


if __name__ == '__main__':
  main()
