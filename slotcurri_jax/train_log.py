"""The training loop's bookkeeping: the progress bar, the metric windows, the history file.

`TrainLog` is opened around the loop (train.train_and_evaluate) and told of each
dispatched step (`dispatched`) and each log step (`write`):
  * the bar counts *computed* steps: the loop keeps at most two steps in flight, waiting
    for the older one before the next is dispatched;
  * every train.log_every_steps the window's metrics are averaged (clu's Average) and
    written to TensorBoard / the log (clu's default writer), to train_history.jsonl
    (process 0) and to the bar's postfix (the window's mean loss, the active slots now).
Resuming at step k drops the history rows logged after k (they are logged again).
"""
from __future__ import annotations

import json
from typing import Any

from clu import metric_writers
from clu import metrics as clu_metrics
import flax
import jax
from etils import epath

from slotcurri_jax import progress


class TrainLog:
  """The bar, the writer and the history of one training run, from `start_step` on."""

  def __init__(self, config, workdir: epath.Path, start_step: int):
    self.is_chief = jax.process_index() == 0
    self.writer = metric_writers.create_default_writer(str(workdir / 'tensorboard'),
                                                       just_logging=not self.is_chief)
    if start_step == 0:
      self.writer.write_hparams(_flat_hparams(config))
    self.history_path = workdir / 'train_history.jsonl'
    if self.is_chief:
      _truncate_history(self.history_path, start_step)
    self._bar_context = progress.progress_bar(config.train.steps, start_step, desc='train',
                                              enabled=self.is_chief)
    self.bar = None
    self._window: list[dict] = []  # metrics of the steps since the last log line
    self._in_flight = None  # metrics of the step dispatched before the newest one

  def __enter__(self) -> 'TrainLog':
    self.bar = self._bar_context.__enter__()
    return self

  def __exit__(self, *exc_info) -> None:
    self._bar_context.__exit__(*exc_info)

  def dispatched(self, metrics: dict) -> None:
    """A step was dispatched: wait for the one before it (at most two steps in flight, so
    the host never runs ahead of the device and a signal is answered within one or two
    steps), and count that one on the bar."""
    if self._in_flight is not None:
      jax.block_until_ready(self._in_flight)
      self.bar.update(1)
    self._in_flight = metrics
    self._window.append(metrics)

  def write(self, step: int) -> None:
    """Average the window's metrics and write them at `step` (blocks on that step)."""
    scalars = _mean_metrics(self._window)
    self.caught_up(step)
    self.bar.set_postfix(loss=f'{scalars["loss_total"]:.4g}',  # the window's mean loss
                         slots=int(jax.device_get(self._window[-1]['active_slots'])),  # now
                         refresh=False)
    self._window = []
    rate = None if self.bar.disable else self.bar.format_dict.get('rate')  # computed steps/s
    self.writer.write_scalars(step, dict(scalars, **({'steps_per_sec': rate} if rate else {})))
    if self.is_chief:
      with self.history_path.open('a') as f:
        f.write(json.dumps({'step': step, **scalars}) + '\n')

  def caught_up(self, step: int) -> None:
    """`step` is computed: the bar shows it."""
    self.bar.update(step - self.bar.n)

  def history(self) -> dict:
    """{metric: [(step, value), ...]} of train_history.jsonl."""
    return _read_history(self.history_path)


def _mean_metrics(pending: list[dict]) -> dict:
  """The mean of each scalar metric over the steps since the last log line (clu's Average)."""
  fetched = jax.device_get(pending)
  averages = clu_metrics.Collection.create(
      **{k: clu_metrics.Average.from_output(k) for k in fetched[0]})
  merged = averages.single_from_model_output(**fetched[0])
  for m in fetched[1:]:
    merged = merged.merge(averages.single_from_model_output(**m))
  return {k: float(v) for k, v in merged.compute().items()}


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


def _flat_hparams(config) -> dict[str, Any]:
  """The config as {'train.steps': 1200, ...}: scalars as they are, the rest as text."""
  flat = flax.traverse_util.flatten_dict(json.loads(config.to_json_best_effort()), sep='.')
  return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flat.items()}
