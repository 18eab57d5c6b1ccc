"""notebooks/inspect_checkpoint.ipynb runs top to bottom (nbclient) on a tiny quickstart run."""

import os
import re

import nbclient
import nbformat
import numpy as np
import pytest

from lbjax import metrics as metrics_lib
from lbjax.analysis import runs
from tests import experiment_runs
from tests.hang import HANG_SECONDS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "inspect_checkpoint.ipynb")


def _output(nb, tag: str) -> str:
  cell = next(c for c in nb.cells if tag in c.get("metadata", {}).get("tags", []))
  return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def test_notebook_runs_on_a_quickstart_checkpoint(monkeypatch):
  workdir = experiment_runs.workdir("seed=0")  # quickstart config, 12 steps, digits 8x8
  monkeypatch.setenv("LBJAX_WORKDIR", workdir)  # read by the notebook's parameter cell
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbclient.NotebookClient(nb, timeout=HANG_SECONDS, kernel_name="python3",
                          resources={"metadata": {"path": ROOT}}).execute()
  for cell in nb.cells:
    for output in cell.get("outputs", []):
      assert output.output_type != "error", output

  assert f"restored {workdir} at step 12 of 12" in _output(nb, "restore")

  # Evaluation reproduces the loss and accuracy train_and_evaluate recorded.
  evaluated = dict(re.findall(r"^(\w+): ([0-9.]+)$", _output(nb, "evaluate"), re.MULTILINE))
  status = metrics_lib.read_status(workdir)
  assert float(evaluated["test_loss"]) == pytest.approx(status["test_loss"], abs=2e-6)
  assert float(evaluated["test_accuracy"]) == pytest.approx(status["test_accuracy"], abs=2e-6)

  # Every tensor is listed with its norm; the trust ratio is ||w|| / (||g|| + beta ||w||).
  params = dict(runs.restore(workdir).params)
  norms = {f"{layer}/{name}": float(np.linalg.norm(x))
           for layer, leaves in params.items() for name, x in leaves.items()}
  text = _output(nb, "trust-ratios")
  beta = float(re.search(r"weight decay beta = ([0-9.e-]+)", text).group(1))
  assert beta == 5e-4  # the quickstart's weight decay
  rows = re.findall(r"^(\S+/\S+)\s+([0-9.]+)\s+([0-9.e+-]+)\s+(\S+)$", text, re.MULTILINE)
  assert {r[0] for r in rows} == set(norms)
  for name, w_norm, g_norm, ratio in rows:
    assert float(w_norm) == pytest.approx(norms[name], abs=1e-4)
    if name.endswith("kernel"):
      expected = float(w_norm) / (float(g_norm) + beta * float(w_norm))
      assert float(ratio) == pytest.approx(expected, rel=1e-3)
    else:
      assert ratio == "-"  # biases: LARS leaves them alone
  assert f"{sum(x.size for v in params.values() for x in v.values()):,} parameters" in _output(
      nb, "parameter-statistics")
