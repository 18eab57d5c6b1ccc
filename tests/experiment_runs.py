"""Tiny real runs shared by the tests of `experiments/`, `lbjax/analysis` and the notebook.

Training is the slow part of those tests, so each run of `tests/tiny_sweep_config.py` trains once
per pytest process, in a temporary directory removed at exit; the summary a run returned when it
actually trained is kept, so a later sweep that skips it still reports how it finished.
"""

import atexit
import os
import shutil
import tempfile

from experiments import run as run_lib

CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny_sweep_config.py")
_ROOT = None
_FIRST_RESULTS: dict[str, dict] = {}  # run name -> summary of the call that trained it


def root() -> str:
  global _ROOT
  if _ROOT is None:
    _ROOT = tempfile.mkdtemp(prefix="lbjax_tiny_runs_")
    atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)
  return _ROOT


def sweep(arg=None, only=None) -> tuple[str, dict[str, dict]]:
  """Runs ``tiny_sweep_config.py[:arg]`` (runs named ``only``) under `root`; returns the root and
  each run's summary from when it trained."""
  spec = CONFIG if arg is None else f"{CONFIG}:{arg}"
  results = run_lib.run_sweep(spec, root(), only=only)
  for name, result in results.items():
    _FIRST_RESULTS.setdefault(name, result)
  return root(), {name: _FIRST_RESULTS[name] for name in results}


def workdir(name: str) -> str:
  """The workdir of run ``name`` (``seed=0`` or ``seed=1``), trained if not yet."""
  sweep(only=name)
  return os.path.join(root(), name)
