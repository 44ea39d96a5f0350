"""One prediction for evaluation and inference, compiled once per run."""
from conftest import tiny_config
from slotcurri_jax import evaluate
from slotcurri_jax import train


def test_periodic_evaluation_compiles_once_per_run(tmp_path, monkeypatch):
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
  metrics = train.train_and_evaluate(config, str(tmp_path / 'work'))
  assert 'ari' in metrics
  assert len(calls) == 3 and all(p is made[0] for p in calls) and len(made) == 1
  assert made[0].compilations() == 1  # three evaluations, one compiled rollout
