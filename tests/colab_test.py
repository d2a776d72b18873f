"""Executes every notebook in colab/ and fails on any cell error.

Each notebook runs top to bottom in a fresh `python3` kernel (nbclient), with
a per-cell timeout. Notebooks take a `TINY = True` flag in their first code
cell and stay fast with it; they must be stored without outputs.
"""

import pathlib
import time

import pytest

nbformat = pytest.importorskip('nbformat')
nbclient = pytest.importorskip('nbclient')

COLAB_DIR = pathlib.Path(__file__).resolve().parents[1] / 'colab'
NOTEBOOKS = sorted(COLAB_DIR.glob('*.ipynb'))
# Executed in the default run (the CI budget); the others are `slow`. The
# quickstart is the README's first stop and generation the whole chain
# (tokenizer -> pretokenize -> generator -> samples).
DEFAULT_RUN = ('quickstart.ipynb', 'generation.ipynb')
CELL_TIMEOUT_S = 300
# Wall-time budget of one notebook run (kernel start included).
NOTEBOOK_BUDGET_S = 120


def _code_cells(nb):
  return [c for c in nb.cells if c.cell_type == 'code']


def test_there_are_notebooks():
  assert NOTEBOOKS, f'no notebooks found in {COLAB_DIR}'


@pytest.mark.parametrize('path', NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_without_outputs(path):
  nb = nbformat.read(path, as_version=4)
  dirty = [i for i, c in enumerate(_code_cells(nb))
           if c.get('outputs') or c.get('execution_count') is not None]
  assert not dirty, (f'{path.name}: code cells {dirty} have outputs; clear them '
                     '(jupyter nbconvert --clear-output --inplace) before committing')


@pytest.mark.parametrize('path', [
    pytest.param(p, id=p.name,
                 marks=() if p.name in DEFAULT_RUN else pytest.mark.slow)
    for p in NOTEBOOKS])
def test_notebook_runs_tiny(path):
  nb = nbformat.read(path, as_version=4)
  cells = _code_cells(nb)
  assert cells and 'TINY = True' in cells[0].source, (
      f'{path.name}: the first code cell must set TINY = True')
  client = nbclient.NotebookClient(
      nb, kernel_name='python3', timeout=CELL_TIMEOUT_S,
      resources={'metadata': {'path': str(path.parent)}})
  start = time.perf_counter()
  try:
    client.execute()
  except nbclient.exceptions.CellExecutionError as e:
    pytest.fail(f'{path.name}: a cell failed:\n{e}')
  elapsed = time.perf_counter() - start
  assert elapsed < NOTEBOOK_BUDGET_S, (
      f'{path.name} took {elapsed:.0f} s with TINY = True '
      f'(budget {NOTEBOOK_BUDGET_S} s)')
