"""One prediction for evaluation and inference, compiled once per run; a run builds its
dataset and encoder once."""
import dataclasses

from conftest import tiny_config
from slotcurri_jax import evaluate
from slotcurri_jax import train
from slotcurri_jax.data import datasets
from slotcurri_jax.models import encoders


def _counted(function, counts: dict, key: str):
  """`function`, counting its calls in counts[key]."""

  def counted(*args, **kwargs):
    counts[key] += 1
    return function(*args, **kwargs)

  return counted


def test_periodic_evaluation_compiles_once_per_run(tmp_path, monkeypatch):
  """Three evaluations (steps 2, 4 and the final 6) of 8 videos: one compiled rollout, one
  dataset spec lookup, one TFDS builder and one encoder spec for the whole run."""
  config = tiny_config()
  config.data.data_dir = str(tmp_path / 'tfds')
  config.data.batch_size = 8
  config.train.eval_every_steps = 2  # evaluations at steps 2 and 4, and the final one at 6
  config.eval.steps = -1
  made, calls = [], []
  make, run_eval = evaluate.make_predictor, evaluate.evaluate

  def recording_make(*args, **kwargs):
    made.append(make(*args, **kwargs))
    return made[-1]

  def recording_evaluate(config, predictor, *args, **kwargs):
    calls.append(predictor)
    return run_eval(config, predictor, *args, **kwargs)

  monkeypatch.setattr(evaluate, 'make_predictor', recording_make)
  monkeypatch.setattr(evaluate, 'evaluate', recording_evaluate)
  counts = {'dataset_spec': 0, 'builder': 0, 'encoder_spec': 0}
  for module, name in ((datasets, 'dataset_spec'), (encoders, 'encoder_spec')):
    monkeypatch.setattr(module, name, _counted(getattr(module, name), counts, name))
  spec = datasets.DATASETS[config.data.name]
  monkeypatch.setitem(datasets.DATASETS, config.data.name, dataclasses.replace(
      spec, builder=_counted(spec.builder, counts, 'builder')))
  metrics = train.train_and_evaluate(config, str(tmp_path / 'work'))
  assert 'ari' in metrics and metrics['num_videos'] == 8
  assert len(calls) == 3 and all(p is made[0] for p in calls) and len(made) == 1
  assert made[0].compilations() == 1  # three evaluations, one compiled rollout
  assert counts == {'dataset_spec': 1, 'builder': 1, 'encoder_spec': 1}
