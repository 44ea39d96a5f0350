"""tools/summarize.py: mean +- std per method and dataset, refusing runs of different settings."""
import json

import pytest

from slotcurri_jax import errors
from slotcurri_jax.tools import summarize


def _run(path, seed, ari, method='slotcurri', ssync=False, dataset='synthetic_movi', lr=8e-4):
  """A workdir with an eval/metrics_latest.json as evaluate.py writes it."""
  (path / 'eval').mkdir(parents=True)
  metrics = {'ari': ari, 'mbo': ari / 2, 'image_ari': ari + 1, 'image_mbo': ari - 1,
             'fragmentation': ari / 1000, 'num_videos': 64}
  settings = {'dataset': dataset, 'step': 1200, 'method': method, 'ssync': ssync,
              'num_videos': 64, 'config': {'seed': seed, 'data': {'data_dir': f'/d{seed}'},
                                           'train': {'learning_rate': lr}}}
  (path / 'eval' / 'metrics_latest.json').write_text(
      json.dumps({'metrics': metrics, 'settings': settings}))
  return str(path)


def test_mean_std_and_n_per_method(tmp_path, capsys):
  runs = [_run(tmp_path / f'c{s}', s, ari) for s, ari in enumerate((10.0, 20.0, 30.0))]
  runs += [_run(tmp_path / f's{s}', s, 5.0 + s, ssync=True) for s in range(2)]
  table = summarize.summarize(runs)
  curri, ssync = table
  assert (curri['method'], curri['n'], ssync['method'], ssync['n']) == (
      'slotcurri', 3, 'slotcurri+ssync', 2)
  assert curri['metrics']['ari'] == {'mean': 20.0, 'std': 10.0}  # sample std (n - 1)
  assert curri['metrics']['mbo'] == {'mean': 10.0, 'std': 5.0}
  assert ssync['metrics']['ari']['std'] == pytest.approx(0.5 ** 0.5)
  assert summarize.main([*runs]) == 0
  out = capsys.readouterr().out
  assert '| slotcurri | synthetic_movi | 3 | 20.0 ± 10.0 | 10.0 ± 5.0 | 21.0 ± 10.0 |' in out
  summarize.main(['--format=json', runs[0]])
  row, = json.loads(capsys.readouterr().out)
  assert row['n'] == 1 and row['metrics']['ari'] == {'mean': 10.0, 'std': None}


def test_refuses_runs_that_differ_in_more_than_the_seed(tmp_path, capsys):
  a = _run(tmp_path / 'a', 0, 10.0)
  b = _run(tmp_path / 'b', 1, 12.0, lr=4e-4)
  with pytest.raises(errors.UserError, match=r'differ in config\.train\.learning_rate: 0\.0008 vs 0\.0004'):
    summarize.summarize([a, b])
  with pytest.raises(errors.UserError, match='same seed'):
    summarize.summarize([a, _run(tmp_path / 'c', 0, 11.0)])
  with pytest.raises(SystemExit):
    summarize.main([a, str(tmp_path / 'missing')])
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and 'has no eval/metrics_latest.json' in err[0]


def test_a_seed_or_a_workdir_given_twice_is_refused(tmp_path):
  a, b = _run(tmp_path / 'a', 0, 10.0), _run(tmp_path / 'b', 1, 12.0)
  c = _run(tmp_path / 'c', 1, 11.0)  # seed 1 again, third in the row: not next to the first
  with pytest.raises(errors.UserError, match=r'b and .*c are the same seed \(1\)'):
    summarize.summarize([a, b, c])
  with pytest.raises(errors.UserError, match='is given twice'):
    summarize.summarize([a, b, str(tmp_path / 'x' / '..' / 'b')])


def test_a_metric_some_run_lacks_is_null_in_json(tmp_path, capsys):
  runs = [_run(tmp_path / f'r{s}', s, 10.0 + s) for s in range(2)]
  path = tmp_path / 'r1' / 'eval' / 'metrics_latest.json'
  payload = json.loads(path.read_text())
  del payload['metrics']['image_mbo']
  path.write_text(json.dumps(payload))
  assert summarize.main(['--format=json', *runs]) == 0
  row, = json.loads(capsys.readouterr().out)  # a NaN would load as nan, not None
  assert row['metrics']['image_mbo'] == {'mean': None, 'std': None}
  assert summarize.main(runs) == 0
  assert '| n/a |' in capsys.readouterr().out
