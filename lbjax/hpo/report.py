"""Seed 002 Table 1 from TPE studies: the best trial per optimizer and batch size, and plots.

    python -m lbjax.hpo report --storage=URL [--study=sgd_512,adam_512] [--out=DIR]

writes ``DIR/hpo_report.md`` (one section per optimizer, one row per batch size, the tuned values
under the search space's labels) and Optuna's optimization-history and parameter-importance plots
``DIR/<study>_{history,importance}.png``. Studies are read from the database the workers of
`lbjax.hpo` fill; the URL is shown with its password masked.
"""

import math
import os
from typing import Any
import warnings

import optuna
from optuna.trial import TrialState

from lbjax.errors import ConfigError
from lbjax.hpo import storage as storage_lib
from lbjax.hpo import worker

# Section titles of the report (Table 1's); other optimizers use their registry name.
TITLES = {"sgd": "Momentum SGD", "adam": "Adam", "kfac": "K-FAC"}


def _format(value) -> str:
  if isinstance(value, float):
    return f"{value:.6g}"
  return str(value)


def summarize(study: optuna.Study) -> dict[str, Any]:
  """One report row: the study's optimizer, batch size, best trial and trial counts."""
  trials = study.get_trials(deepcopy=False)
  complete = [t for t in trials if t.state == TrialState.COMPLETE]
  best = max(complete, key=lambda t: t.value) if complete else None
  attrs = study.user_attrs
  return {"study": study.study_name, "optimizer": attrs.get("optimizer", "?"),
          "batch_size": attrs.get("batch_size", 0),
          "columns": attrs.get(worker.STUDY_COLUMNS, []), "best": best,
          "counts": worker.counts(trials)}


def table(rows: list[dict[str, Any]]) -> str:
  """Markdown shaped like seed 002 Table 1: one section per optimizer, one row per batch size
  (the best study when several share one), the tuned values in the search space's labels."""
  sections = []
  for optimizer in sorted({r["optimizer"] for r in rows}):
    mine = [r for r in rows if r["optimizer"] == optimizer]
    labels = []
    for r in mine:
      labels += [c[1] for c in r["columns"] if c[1] not in labels]
    header = ["batch size", "val-acc", *labels, "trial", "complete/pruned/diverged/failed",
              "study"]
    lines = [f"### {TITLES.get(optimizer, optimizer)}", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for batch_size in sorted({r["batch_size"] for r in mine}):
      candidates = [r for r in mine if r["batch_size"] == batch_size]
      row = max(candidates, key=lambda r: -math.inf if r["best"] is None else r["best"].value)
      best, c = row["best"], row["counts"]
      names = {label: name for name, label, _ in row["columns"]}
      values = ["—", *[""] * len(labels), "—"]
      if best is not None:
        values = [_format(best.value)]
        values += [_format(best.params[names[l]]) if l in names else "" for l in labels]
        values += [str(best.number)]
      lines.append("| " + " | ".join(
          [str(batch_size), *values,
           f"{c['complete']}/{c['pruned']}/{c['diverged']}/{c['failed']}", row["study"]]) + " |")
    sections.append("\n".join(lines))
  return "\n\n".join(sections) + "\n"


def save_plots(study: optuna.Study, out_dir: str) -> list[str]:
  """Optimization history and parameter importances of ``study`` as PNGs; notes for the rest."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")  # before pyplot: no display on a cluster node
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from optuna.visualization import matplotlib as ovm  # pylint: disable=g-import-not-at-top
  notes = []
  plots = {"history": ovm.plot_optimization_history, "importance": ovm.plot_param_importances}
  n_complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
  for kind, plot in plots.items():
    path = os.path.join(out_dir, f"{study.study_name}_{kind}.png")
    if kind == "importance" and n_complete < 2:
      notes.append(f"{study.study_name}: no importance plot ({n_complete} completed trial(s), "
                   "needs 2)")
      continue
    try:
      ax = plot(study)
    except (ValueError, RuntimeError) as e:  # e.g. every trial has the same value
      notes.append(f"{study.study_name}: no {kind} plot ({e})")
      continue
    ax.figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(ax.figure)
  return notes


def report(storage: str, study_names: list[str] | None = None, out_dir: str = "hpo_report"
           ) -> tuple[str, list[dict[str, Any]]]:
  """Writes ``out_dir/hpo_report.md`` and the plots; returns the markdown and the rows."""
  shown = storage_lib.shown(storage)
  if (storage_lib.backend(storage) == "sqlite"
      and not os.path.exists(storage_lib.parse(storage).database or "")):
    raise ConfigError("--storage", f"{shown}: no such database file")
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    rdb = storage_lib.open_storage(storage)
    every = optuna.study.get_all_study_names(rdb)
    known = set(every)
    names = study_names or every
    for name in names:
      if name not in known:
        raise ConfigError("--study", f"no study {name!r} in {shown}; it has: "
                          f"{', '.join(sorted(known)) or 'none'}")
    os.makedirs(out_dir, exist_ok=True)
    studies = [optuna.load_study(study_name=n, storage=rdb) for n in names]
    rows = [summarize(s) for s in studies]
    notes = [n for s in studies for n in save_plots(s, out_dir)]
  text = "## TPE search results (seed 002 Table 1)\n\n" + table(rows)
  if notes:
    text += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
  with open(os.path.join(out_dir, "hpo_report.md"), "w") as f:
    f.write(text)
  return text, rows
