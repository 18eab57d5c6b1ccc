r"""Result tables and learning curves from run directories, shaped like the seeds' tables.

    python -m experiments.report --root=runs/seed003_table2 [--table=seed003_table2] [--out=DIR]

Reads every run under ``ROOT`` (a directory holding ``config.json``; its ``status.json`` and
``metrics.jsonl``), places each in the cell of `experiments.tables` ``--table`` whose row and
column its config matches, and writes to ``--out`` (default ``ROOT/report``):

* ``TABLE.md``: the table, each column as "seed | ours", ours = mean ± std over the cell's runs
  (seeds, sample std) with the count; a cell whose runs all diverged reads "diverged", runs
  still going are counted as unfinished, a cell without runs reads "—"; below it the mean and
  variance over the cells and the runs that fit no cell;
* ``TABLE.csv``: the same table, numbers only (per column: seed, mean, std, n, diverged);
* ``TABLE_runs.csv``: one line per run (cell, name, status, step, value);
* ``TABLE_curves.png``: training loss and test accuracy against epochs, one panel per column, one
  colour per row (every run drawn; SWAP runs join phase 1 and phase 2).

Where runs have them, sharpness and noise-scale columns: the top Hessian eigenvalue, the Hessian
trace and the ε-sharpness from ``RUN/sharpness.json`` (``python -m lbjax.analysis.sharpness``),
and the gradient noise scale B_simple over the second half of training (the per-window
estimates ``train_noise_g_sq`` and ``train_noise_trace_sigma`` of ``metrics.jsonl``, written
with ``config.log_noise_scale``, averaged over the windows ending in (S/2, S], S the last, then
their ratio: `lbjax.noise_scale.second_half_b_simple`): per cell (mean ± std) in a second
table of ``TABLE.md``, per run in ``TABLE_runs.csv``; and ``TABLE_noise_scale.png``, B_simple
against epochs for every run (one panel per column, one colour per row).

Runs trained with ``config.log_trust_ratios`` (LARS, LAMB) also get ``TABLE_trust_ratios.png``:
each run's per-layer trust ratios (``train_trust_ratio/<parameter path>``) against epochs, one
panel per run, one line per tensor.

Without ``--table`` the table is the one of the config recorded in ``ROOT/sweeps.json`` by
``experiments/run.py``, else one row per run name (seeds merged) and one column.
"""

from collections.abc import Mapping, Sequence
import csv
import json
import math
import os
import re
import sys
from typing import Any, NamedTuple

from absl import app
from absl import flags
import numpy as np

from experiments import tables as tables_lib
from experiments.tables import Table
from lbjax import metrics as metrics_lib
from lbjax import noise_scale
from lbjax.errors import ConfigError

MISSING = "—"
DIVERGED = "diverged"
_SEED_SUFFIX = re.compile(r"(^|,)seed=\d+$")


class RunResult(NamedTuple):
  name: str              # path under the root
  workdir: str
  config: dict[str, Any]  # flattened: dotted keys
  status: dict | None  # status.json, None before the run wrote one


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(_flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def collect(root: str) -> list[RunResult]:
  """Every run under ``root``: directories holding ``config.json`` (not searched further, so a
  SWAP run's ``phase1/`` is part of its run)."""
  found = []
  for directory, subdirs, files in os.walk(root):
    if "config.json" in files:
      with open(os.path.join(directory, "config.json")) as f:
        config = _flatten(json.load(f))
      found.append(RunResult(os.path.relpath(directory, root), directory, config,
                             metrics_lib.read_status(directory)))
      subdirs[:] = []
    else:
      subdirs.sort()
  return sorted(found, key=lambda r: r.name)


def _equal(value, expected) -> bool:
  if callable(expected):
    return bool(expected(value))
  if isinstance(expected, float) and isinstance(value, (int, float)) and not isinstance(value,
                                                                                      bool):
    return math.isclose(value, expected, rel_tol=1e-9, abs_tol=0.0) or value == expected
  if isinstance(expected, (tuple, list)) and isinstance(value, (tuple, list)):
    return len(value) == len(expected) and all(map(_equal, value, expected))
  return value == expected


def _run_label(run: RunResult) -> str:
  """The run's directory name without its seed (``a,seed=3`` → ``a``; ``seed=3`` → ``default``)."""
  return _SEED_SUFFIX.sub("", os.path.basename(run.name)) or "default"


def matches(run: RunResult, match: Mapping[str, Any]) -> bool:
  for key, expected in match.items():
    value = _run_label(run) if key == "run" else run.config.get(key)
    if not _equal(value, expected):
      return False
  return True


def place(table: Table, runs: Sequence[RunResult]
          ) -> tuple[dict[tuple[str, str], list[RunResult]], list[RunResult]]:
  """``{(row, column): runs}`` and the runs that fit no cell (first matching row and column)."""
  cells: dict[tuple[str, str], list[RunResult]] = {
      (r, c): [] for r, _ in table.rows for c, _ in table.columns}
  unplaced = []
  for run in runs:
    row = next((label for label, m in table.rows if matches(run, m)), None)
    col = next((label for label, m in table.columns if matches(run, m)), None)
    if row is None or col is None:
      unplaced.append(run)
    else:
      cells[(row, col)].append(run)
  return cells, unplaced


def value_of(run: RunResult, table: Table) -> float | None:
  """The run's metric (×100 for percent tables) if it completed, else None."""
  status = run.status or {}
  if status.get("status") not in ("completed", "stopped"):
    return None
  for metric in table.metrics:
    if isinstance(status.get(metric), (int, float)):
      return float(status[metric]) * (100.0 if table.percent else 1.0)
  return None


class Cell(NamedTuple):
  mean: float | None
  std: float | None
  n: int           # runs with a value
  diverged: int
  unfinished: int

  @property
  def total(self) -> int:
    return self.n + self.diverged + self.unfinished

  def text(self) -> str:
    notes = []
    if self.n:
      body = f"{self.mean:.2f}" + (f" ± {self.std:.2f} (n={self.n})" if self.n > 1 else "")
      if self.diverged:
        notes.append(f"{self.diverged}/{self.total} {DIVERGED}")
    elif self.diverged:
      body = DIVERGED + (f" ({self.diverged}/{self.total})" if self.total > 1 else "")
    elif self.unfinished:
      body = "unfinished"
    else:
      return MISSING
    if self.unfinished and (self.n or self.diverged):
      notes.append(f"{self.unfinished} unfinished")
    return body + (f" ({', '.join(notes)})" if notes else "")


def summarize(runs: Sequence[RunResult], table: Table) -> Cell:
  values = [v for v in (value_of(r, table) for r in runs) if v is not None]
  diverged = sum((r.status or {}).get("status") == DIVERGED for r in runs)
  unfinished = len(runs) - len(values) - diverged
  if not values:
    return Cell(None, None, 0, diverged, unfinished)
  std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
  return Cell(float(np.mean(values)), std, len(values), diverged, unfinished)


def _seed_text(value) -> str:
  if value is None:
    return MISSING
  return f"{value:.2f}" if isinstance(value, (int, float)) else str(value)


def markdown(table: Table, cells: Mapping[tuple[str, str], Cell],
             unplaced: Sequence[RunResult] = ()) -> str:
  """The table with each column as "seed | ours"."""
  header = [table.row_header]
  for col, _ in table.columns:
    header += [f"{col} seed", f"{col} ours"]
  lines = [f"## {table.title}", "", "| " + " | ".join(header) + " |",
           "|" + "---|" * len(header)]
  for row, _ in table.rows:
    parts = [row]
    for col, _ in table.columns:
      parts += [_seed_text(table.seed.get((row, col))), cells[(row, col)].text()]
    lines.append("| " + " | ".join(parts) + " |")
  lines += ["", (f"ours: mean ± sample std over the runs of a cell (n = runs), "
            f"{' / '.join(table.metrics)}{' × 100' if table.percent else ''}; "
            f"'{DIVERGED}': non-finite loss; '{MISSING}': no run.")]
  seed_values = [v for v in table.seed.values() if isinstance(v, (int, float))]
  ours = [c.mean for c in cells.values() if c.mean is not None]
  if len(seed_values) > 1 or len(ours) > 1:
    def stats(values):
      return (f"mean {np.mean(values):.2f}, variance {np.var(values):.2f} over {len(values)} "
              "cells" if values else MISSING)
    lines += ["", f"Over the cells — seed: {stats(seed_values)}; ours: {stats(ours)}."]
  if unplaced:
    lines += ["", "Runs in no cell: " + ", ".join(
        f"`{r.name}` ({(r.status or {}).get('status', 'no status')})" for r in unplaced)]
  if table.configs:
    lines += ["", "Made by:", "", "```", *table.configs,
              f"python -m experiments.report --root=ROOT --table={table.name}", "```"]
  return "\n".join(lines) + "\n"


def write_csv(table: Table, cells: Mapping[tuple[str, str], Cell], path: str) -> None:
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    header = [table.row_header or "row"]
    for col, _ in table.columns:
      header += [f"{col} seed", f"{col} mean", f"{col} std", f"{col} n", f"{col} diverged"]
    writer.writerow(header)
    for row, _ in table.rows:
      line = [row]
      for col, _ in table.columns:
        cell = cells[(row, col)]
        seed = table.seed.get((row, col))
        line += ["" if seed is None else seed,
                 "" if cell.mean is None else f"{cell.mean:.4f}",
                 "" if cell.std is None else f"{cell.std:.4f}", cell.n, cell.diverged]
      writer.writerow(line)


def write_runs_csv(table: Table, placed: Mapping[tuple[str, str], list[RunResult]],
                   path: str, measured: Mapping[str, dict[str, float]] | None = None) -> None:
  """One line per run; plus a column per `MEASUREMENTS` key that some run in ``measured`` has."""
  measured = measured or {}
  keys = [k for k, _ in MEASUREMENTS if any(k in m for m in measured.values())]
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["row", "column", "run", "status", "step", "seed", "value"] + keys)
    for (row, col), runs in placed.items():
      for run in runs:
        status = run.status or {}
        value = value_of(run, table)
        extra = measured.get(run.name, {})
        writer.writerow([row, col, run.name, status.get("status", ""), status.get("step", ""),
                         run.config.get("seed", ""), "" if value is None else f"{value:.4f}"]
                        + [f"{extra[k]:.6g}" if k in extra else "" for k in keys])


def _timeline(workdir: str):
  """``(epoch, record)`` for every record of a run's ``metrics.jsonl``; a SWAP run's phase 2
  continues after phase 1's last epoch (in replica epochs)."""
  parts = [metrics_lib.read_metrics(os.path.join(workdir, "phase1")),
           metrics_lib.read_metrics(workdir)]
  offset = 0.0
  for records in parts:
    last = 0.0
    for r in records:
      if "train_loss" in r and "train_epoch" in r:
        last = r["train_epoch"]
      if "test_accuracy" in r:
        last = r.get("epoch", last)
      yield offset + last, r
    offset += last


def learning_curve(workdir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """``{"train_loss": (epochs, values), "test_accuracy": (epochs, values),
  "train_noise_scale": (epochs, values)}`` of a run (the last empty without
  ``config.log_noise_scale``); a SWAP run's phase 2 continues after phase 1's last epoch (in
  replica epochs)."""
  curves: dict[str, tuple[list, list]] = {"train_loss": ([], []), "test_accuracy": ([], []),
                                          "train_noise_scale": ([], [])}
  for x, r in _timeline(workdir):
    if "train_loss" in r and "train_epoch" in r:
      curves["train_loss"][0].append(x)
      curves["train_loss"][1].append(r["train_loss"])
      if isinstance(r.get("train_noise_scale"), (int, float)):
        curves["train_noise_scale"][0].append(x)
        curves["train_noise_scale"][1].append(r["train_noise_scale"])
    if "test_accuracy" in r:
      curves["test_accuracy"][0].append(x)
      curves["test_accuracy"][1].append(r["test_accuracy"])
  return {k: (np.asarray(x, float), np.asarray(y, float)) for k, (x, y) in curves.items()}


TRUST_RATIO = "train_trust_ratio/"


def trust_ratio_curves(workdir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """``{parameter path: (epochs, trust ratios)}`` of a run logged with
  ``config.log_trust_ratios`` (``train_trust_ratio/<path>`` in ``metrics.jsonl``: the window
  means of the layer-wise factor, `lbjax.optim.trust_ratios`), in the order logged; empty
  without it."""
  curves: dict[str, tuple[list, list]] = {}
  for x, r in _timeline(workdir):
    for key, value in r.items():
      if key.startswith(TRUST_RATIO) and isinstance(value, (int, float)):
        xs, ys = curves.setdefault(key[len(TRUST_RATIO):], ([], []))
        xs.append(x)
        ys.append(value)
  return {k: (np.asarray(x, float), np.asarray(y, float)) for k, (x, y) in curves.items()}


def plot_curves(table: Table, placed: Mapping[tuple[str, str], list[RunResult]],
                path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  ncols = len(table.columns)
  fig, axes = plt.subplots(2, ncols, figsize=(max(4.5 * ncols, 8), 6.5), squeeze=False,
                           sharex="col")
  colors = plt.get_cmap("tab10")
  for j, (col, _) in enumerate(table.columns):
    for i, (row, _) in enumerate(table.rows):
      for k, run in enumerate(placed[(row, col)]):
        curve = learning_curve(run.workdir)
        label = row if k == 0 else None
        axes[0, j].plot(*curve["train_loss"], color=colors(i % 10), lw=1, label=label)
        x, y = curve["test_accuracy"]
        axes[1, j].plot(x, 100 * y, color=colors(i % 10), lw=1, marker=".", label=label)
    axes[0, j].set_title(col, fontsize=9)
    axes[0, j].set_ylabel("train loss")
    axes[0, j].set_yscale("log")
    axes[1, j].set_ylabel("test accuracy (%)")
    axes[1, j].set_xlabel("epoch")
  handles, labels = axes[1, 0].get_legend_handles_labels()
  for ax in axes[1]:
    h, l = ax.get_legend_handles_labels()
    if len(h) > len(handles):
      handles, labels = h, l
  if handles:
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 3), fontsize=7)
  fig.suptitle(table.title, fontsize=9)
  fig.tight_layout(rect=(0, 0.04 + 0.025 * math.ceil(len(table.rows) / 3), 1, 0.96))
  fig.savefig(path, dpi=110)
  plt.close(fig)


# Per-run measurements beside the table's metric: (key, header), in column order.
MEASUREMENTS = (
    ("lambda_max", "λ_max (Hessian)"),
    ("hessian_trace", "tr H"),
    ("epsilon_sharpness", "ε-sharpness (%)"),
    ("noise_scale", "B_simple (2nd half)"),
)


def measurements(workdir: str) -> dict[str, float]:
  """A run's sharpness (``sharpness.json``) and noise scale (B_simple over the second half of
  its logged training, `lbjax.noise_scale.second_half_b_simple` of ``metrics.jsonl``), each key
  of `MEASUREMENTS` it has. A SWAP run's ``metrics.jsonl`` is its phase 2 (the replicas whose
  average it reports); phase 1 is ``phase1/``."""
  out: dict[str, float] = {}
  path = os.path.join(workdir, "sharpness.json")
  if os.path.exists(path):
    with open(path) as f:
      sharp = json.load(f)
    if sharp.get("top_eigenvalues"):
      out["lambda_max"] = float(sharp["top_eigenvalues"][0])
    for key in ("hessian_trace", "epsilon_sharpness"):
      if isinstance(sharp.get(key), (int, float)):
        out[key] = float(sharp[key])
  b_simple = noise_scale.second_half_b_simple(metrics_lib.read_metrics(workdir))
  if b_simple is not None and np.isfinite(b_simple):
    out["noise_scale"] = b_simple
  return out


def _mean_std(values: Sequence[float]) -> str:
  if not values:
    return MISSING
  if len(values) == 1:
    return f"{values[0]:.4g}"
  return f"{np.mean(values):.4g} ± {np.std(values, ddof=1):.2g} (n={len(values)})"


def measurements_markdown(table: Table, placed: Mapping[tuple[str, str], list[RunResult]],
                          measured: Mapping[str, dict[str, float]]) -> str:
  """Per cell, mean ± sample std over its runs of each measurement some run has ("" if none)."""
  keys = [(k, h) for k, h in MEASUREMENTS if any(k in m for m in measured.values())]
  if not keys:
    return ""
  header = [table.row_header or "row", "column"] + [h for _, h in keys]
  lines = ["## Sharpness and gradient noise scale", "", "| " + " | ".join(header) + " |",
           "|" + "---|" * len(header)]
  for (row, col), runs in placed.items():
    values = {k: [measured[r.name][k] for r in runs if k in measured[r.name]] for k, _ in keys}
    if any(values.values()):
      lines.append("| " + " | ".join([row, col] + [_mean_std(values[k]) for k, _ in keys]) + " |")
  epsilons = sorted({e for e in (_epsilon(r.workdir) for rs in placed.values() for r in rs)
                     if e is not None})
  eps = f" at ε = {', '.join(f'{e:g}' for e in epsilons)}" if epsilons else ""
  lines += ["", ("Mean ± sample std over the runs of a cell that have the number. λ_max, tr H "
                f"(Hutchinson) and ε-sharpness{eps} (Keskar et al. 2017, in %) of the training "
                "loss from `python -m lbjax.analysis.sharpness`; B_simple = tr(Σ)/|G|² "
                "(McCandlish et al. 2018) over the second half of training (the loop's per-window "
                "estimates of |G|² and tr(Σ) averaged over the windows ending in (S/2, S], then "
                "their ratio), from `config.log_noise_scale`.")]
  return "\n".join(lines) + "\n"


def _epsilon(workdir: str) -> float | None:
  path = os.path.join(workdir, "sharpness.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f).get("epsilon")


def plot_noise_scale(table: Table, placed: Mapping[tuple[str, str], list[RunResult]],
                     path: str) -> bool:
  """B_simple (``train_noise_scale``) against epochs, one panel per column, one colour per row,
  every run drawn; False (nothing written) if no run logged it."""
  curves = {r.name: learning_curve(r.workdir)["train_noise_scale"]
            for runs in placed.values() for r in runs}
  if not any(len(x) for x, _ in curves.values()):
    return False
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  ncols = len(table.columns)
  fig, axes = plt.subplots(1, ncols, figsize=(max(4.5 * ncols, 6), 3.8), squeeze=False)
  colors = plt.get_cmap("tab10")
  positive = all(np.all(y > 0) for _, y in curves.values() if len(y))
  for j, (col, _) in enumerate(table.columns):
    ax = axes[0, j]
    for i, (row, _) in enumerate(table.rows):
      for k, run in enumerate(placed[(row, col)]):
        x, y = curves[run.name]
        if len(x):
          ax.plot(x, y, color=colors(i % 10), lw=1, marker=".", label=row if k == 0 else None)
    ax.set_title(col, fontsize=9)
    ax.set_xlabel("epoch")
    ax.set_ylabel("B_simple = tr(Σ)/|G|²")
    if positive:
      ax.set_yscale("log")
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=7)
  fig.suptitle(f"{table.title}: gradient noise scale (EMA across logging windows)", fontsize=9)
  fig.tight_layout(rect=(0, 0, 1, 0.94))
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


# More tensors than this get a colour bar (parameter order) instead of a legend.
MAX_LEGEND_TENSORS = 12


def plot_trust_ratios(placed: Mapping[tuple[str, str], list[RunResult]], path: str,
                      title: str = "") -> bool:
  """Each run's trust ratios against epochs (one panel per run that logged them, one line per
  tensor coloured in parameter order, log scale); tensors whose factor stayed 1 throughout
  (outside LARS's mask: no layer-wise factor) are counted in the panel's title, not drawn.
  False (nothing written) if no run logged them."""
  curves = {r.name: trust_ratio_curves(r.workdir) for runs in placed.values() for r in runs}
  curves = {name: c for name, c in curves.items() if c}
  if not curves:
    return False
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  ncols = min(len(curves), 3)
  nrows = math.ceil(len(curves) / ncols)
  fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.9 * nrows), squeeze=False)
  cmap = plt.get_cmap("viridis")
  for ax, (name, run_curves) in zip(axes.flat, sorted(curves.items())):
    drawn = {k: c for k, c in run_curves.items() if not np.all(c[1] == 1.0)}
    n = len(run_curves)
    for i, (tensor, (x, y)) in enumerate(run_curves.items()):
      if tensor in drawn:
        ax.plot(x, y, color=cmap(i / max(n - 1, 1)), lw=1, label=tensor)
    if drawn and all(np.all(c[1] > 0) for c in drawn.values()):
      ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("trust ratio (layer-wise factor)")
    ones = n - len(drawn)
    ax.set_title(name + (f"\n({ones} of {n} tensors at 1: no layer-wise factor)" if ones else ""),
                 fontsize=9)
    if 0 < len(drawn) <= MAX_LEGEND_TENSORS:
      ax.legend(fontsize=6, ncol=2 if len(drawn) > 6 else 1)
    elif drawn:
      bar = fig.colorbar(plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, n - 1)), ax=ax)
      bar.set_label("tensor (parameter order)", fontsize=8)
  for ax in list(axes.flat)[len(curves):]:
    ax.axis("off")
  fig.suptitle(f"{title}: per-layer trust ratios (config.log_trust_ratios)" if title
               else "per-layer trust ratios (config.log_trust_ratios)", fontsize=9)
  fig.tight_layout(rect=(0, 0, 1, 0.95))
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


def runs_table(runs: Sequence[RunResult], name: str = "runs") -> Table:
  """One row per run name (``,seed=N`` merged), one column: for sweeps without a seed table."""
  labels = sorted({_run_label(r) for r in runs})
  return Table(name, "Runs: test accuracy (%)", "run",
               tuple((label, {"run": label}) for label in labels), (("test accuracy", {}),))


def infer_table(root: str) -> str | None:
  path = os.path.join(root, "sweeps.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    names = {tables_lib.for_config(spec) for spec in json.load(f)}
  return names.pop() if len(names) == 1 else None


def report(root: str, table: Table | None = None, out_dir: str | None = None,
           curves: bool = True) -> dict[str, Any]:
  """Writes the outputs for the runs under ``root``; returns the cells and the paths."""
  runs = collect(root)
  if table is None:
    name = infer_table(root)
    table = tables_lib.TABLES[name]() if name else runs_table(runs)
  out_dir = out_dir or os.path.join(root, "report")
  os.makedirs(out_dir, exist_ok=True)
  placed, unplaced = place(table, runs)
  cells = {key: summarize(rs, table) for key, rs in placed.items()}
  measured = {r.name: measurements(r.workdir) for rs in placed.values() for r in rs}
  text = markdown(table, cells, unplaced)
  extra = measurements_markdown(table, placed, measured)
  if extra:
    text += "\n" + extra
  paths = {"markdown": os.path.join(out_dir, f"{table.name}.md"),
           "csv": os.path.join(out_dir, f"{table.name}.csv"),
           "runs_csv": os.path.join(out_dir, f"{table.name}_runs.csv")}
  with open(paths["markdown"], "w") as f:
    f.write(text)
  write_csv(table, cells, paths["csv"])
  write_runs_csv(table, placed, paths["runs_csv"], measured)
  if curves and any(placed.values()):
    paths["curves"] = os.path.join(out_dir, f"{table.name}_curves.png")
    plot_curves(table, placed, paths["curves"])
    noise_path = os.path.join(out_dir, f"{table.name}_noise_scale.png")
    if plot_noise_scale(table, placed, noise_path):
      paths["noise_scale"] = noise_path
    trust_path = os.path.join(out_dir, f"{table.name}_trust_ratios.png")
    if plot_trust_ratios(placed, trust_path, table.title):
      paths["trust_ratios"] = trust_path
  return {"table": table, "cells": cells, "placed": placed, "unplaced": unplaced,
          "markdown": text, "paths": paths, "measurements": measured}


FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command-line flags (defined only when run as a program, so importing is free)."""
  flags.DEFINE_string("root", None, "Directory holding the runs (searched recursively).")
  flags.DEFINE_string("table", None, f"One of {sorted(tables_lib.TABLES)}; default: the table of "
                      "ROOT/sweeps.json's config, else one row per run.")
  flags.DEFINE_string("out", None, "Output directory (default ROOT/report).")
  flags.DEFINE_bool("curves", True, "Write the learning-curve PNG.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    if not FLAGS.root or not os.path.isdir(FLAGS.root):
      raise ConfigError("--root", f"not a directory: {FLAGS.root!r}")
    table = None
    if FLAGS.table is not None:
      if FLAGS.table not in tables_lib.TABLES:
        raise ConfigError("--table", f"unknown table {FLAGS.table!r}; allowed: "
                          f"{', '.join(sorted(tables_lib.TABLES))}")
      table = tables_lib.TABLES[FLAGS.table]()
    result = report(FLAGS.root, table, FLAGS.out, curves=FLAGS.curves)
  except ConfigError as e:
    sys.exit(f"lbjax: error: {e}")
  print(result["markdown"])
  for path in result["paths"].values():
    print(f"wrote {path}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
