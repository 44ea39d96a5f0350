"""launch/colab.ipynb executed top to bottom in a Jupyter kernel, as a user runs it.

The notebook reads SLOTCURRI_NOTEBOOK_STEPS (its 1200 when unset) and
SLOTCURRI_NOTEBOOK_WORKDIR; here 2 steps into a temporary workdir. Its Colab-only cells
skip themselves where they have nothing to do: the repository is the working directory
(no clone) and slotcurri_jax is installed (no pip install). The kernel is this test's
Python, started without the tests' 8 fake devices (a user's runtime has one CPU device).
Marked slow: 1 to 2 minutes with synthetic_movi already generated (README "Tests").
"""
import json
import sys
import warnings

import nbclient
import nbformat
import pytest

from conftest import REPO

NOTEBOOK = REPO / 'launch' / 'colab.ipynb'
STEPS = 2


def _kernel(tmp_path, monkeypatch) -> str:
  """A kernelspec for this Python (a user's own 'python3' spec may point elsewhere)."""
  spec = tmp_path / 'jupyter' / 'kernels' / 'slotcurri_test'
  spec.mkdir(parents=True)
  (spec / 'kernel.json').write_text(json.dumps({
      'argv': [sys.executable, '-m', 'ipykernel_launcher', '-f', '{connection_file}'],
      'display_name': 'slotcurri_jax tests', 'language': 'python'}))
  monkeypatch.setenv('JUPYTER_PATH', str(tmp_path / 'jupyter'))
  return 'slotcurri_test'


def _text(cell) -> str:
  return ''.join(o.get('text', '') for o in cell.outputs if o.output_type == 'stream')


@pytest.mark.slow
def test_colab_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
  with warnings.catch_warnings():
    warnings.simplefilter('error')  # e.g. cells without ids, a future hard error of nbformat
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
  workdir = tmp_path / 'demo'
  monkeypatch.setenv('SLOTCURRI_NOTEBOOK_STEPS', str(STEPS))
  monkeypatch.setenv('SLOTCURRI_NOTEBOOK_WORKDIR', str(workdir))
  monkeypatch.delenv('XLA_FLAGS', raising=False)
  client = nbclient.NotebookClient(nb, timeout=1200, kernel_name=_kernel(tmp_path, monkeypatch),
                                   resources={'metadata': {'path': str(REPO)}})
  client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error

  cells = {cell.id: cell for cell in nb.cells}
  assert _text(cells['get-code']).strip() == str(REPO)
  assert 'is already installed' in _text(cells['install'])
  assert "'frames': ((16, 24, 64, 64, 3)" in _text(cells['data'])  # an evaluation batch
  metrics = json.loads((workdir / 'eval' / 'metrics_latest.json').read_text())
  assert metrics['settings']['step'] == STEPS and metrics['metrics']['num_videos'] == 64
  shown = cells['show']
  assert '"ari"' in _text(shown)
  images = [o for o in shown.outputs if o.output_type == 'display_data' and 'image/png' in o.data]
  assert len(images) == 3  # two evaluation clips and the training curves
