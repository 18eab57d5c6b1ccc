r"""Steps to a target accuracy against the batch size, each batch size with its own tuned
learning rate (Shallue et al. 2018), and the fit :math:`S = S_\min (1 + B_\text{noise}/B)`
beside the measured gradient noise scale B_simple (McCandlish et al. 2018).

    python -m experiments.batch_scaling --root=runs/batch_scaling [--optimizer=sgd,adam] \
        [--batch_sizes=16,32,64,128,256] [--target=0.95] [--trials=3] [--search=grid|tpe] \
        [--seeds=2] [--processes=2] [--out=results.md]

The runs are `configs/batch_scaling.py` (LeNet-5 on the digits at 16x16, a validation split,
constant learning rate, B_simple logged); each is ``lbjax.runners.run`` in
``ROOT/<optimizer>,target=<t>/batch=<B>/lr=<lr>,seed=<k>``.

1. **Tuning.** For every optimizer and batch size B, ``--trials`` learning rates, each trained
   with seeds 0 … ``--seeds`` − 1 (the seed draws the weights, the data order and the validation
   split). ``--search=grid``: a log grid stepping by ``LR_GRID_RATIO`` around the centre
   ``LR_CENTER · (B / LR_REFERENCE_BATCH)^LR_EXPONENT`` (the config's); ``--search=tpe``: the
   project's TPE sampler (`lbjax.hpo.worker.SAMPLERS`, seeded, so a rerun proposes the same
   rates) drawing log-uniformly from centre / ``LR_RANGE`` to centre · ``LR_RANGE``, one trial
   (all seeds) after the other, minimising the mean steps (a rate that misses the target scores
   ``max_steps · (2 + target − best accuracy)``). The best learning rate of a batch size is the
   one with the fewest mean steps over the seeds among those whose every seed reached the target.
2. **Steps to the target.** A run is evaluated every ``eval_every`` steps; the callback of
   ``lbjax.runners.run`` stops it at the first evaluation whose validation accuracy reaches
   ``--target``, and that step is its steps to target S. The first crossing lies in
   (S − eval_every, S]: ``eval_every = max(1, ⌊resolution · Ŝ(B)⌋)`` from the config's guess
   Ŝ(B) (`configs.batch_scaling.cadence`), so the step is resolved to ~``--resolution`` of S; the
   table gives the achieved eval_every / S. A run that has not reached the target after
   ``max_steps = ⌈budget_factor · Ŝ(B)⌉`` steps (or diverged) did not reach it.
3. **Noise scale.** B_simple of a run is McCandlish et al.'s tr(Σ)/|G|² from the two batch sizes
   the step measures (its halves, B/2 and B; `lbjax.noise_scale.simple_noise_scale`) over the
   **second half of the run to the target**: the mean of the unbiased per-step estimates of
   |G|² and of tr(Σ) over the logging windows that end in (S/2, S] (each window weighted by its
   steps), then their ratio. Every run is stopped at the same accuracy, so this is the noise
   scale on the way to the target, at the same stage for every batch size, neither the noisy
   start nor the value near convergence. The table gives its mean ± std over the seeds of the
   best learning rate; beside the fit, the mean over every best-rate run of the optimizer.
4. **Fit.** Per optimizer, nonlinear least squares of log S against B, every seed of each
   batch size's best learning rate a point: :math:`\log S = \log S_\min +
   \log(1 + B_\text{noise}/B)` (`fit_scaling`), with standard errors from the covariance
   scaled by the residuals (S_min and B_noise ± one standard error by the delta method).
5. **Spread.** Between consecutive batch sizes B → 2B: whether S(2B) differs from S(B) (no
   gain) and from S(B)/2 (perfect scaling) by more than twice the standard error of the
   difference over the seeds (`experiments.digits_study.compare`), which names the regime
   (perfect scaling, diminishing returns, plateau); with several optimizers, the same screen
   between optimizers at each batch size.

Prints the table, the fits and the comparisons, writes ``ROOT/batch_scaling.png`` (steps
against batch on log-log axes, one curve per optimizer, its fit and the perfect-scaling line;
beside it the best learning rate against batch) and, with ``--out``, the markdown. Reruns skip
finished runs (status completed, stopped or diverged) and resume unfinished ones, so a rerun only
re-prints. Every run trains on one device in a worker process (``--processes`` at a time; the
processes share compiled programs through JAX's persistent compilation cache in
``ROOT/jax_cache``).
"""

from collections.abc import Sequence
import concurrent.futures
import contextlib
import itertools
import json
import math
import multiprocessing
import os
import re
import resource
import sys
import time
import traceback
from typing import Any, NamedTuple
import warnings

from absl import app
from absl import flags
from absl import logging
import numpy as np

from configs import batch_scaling as study
from experiments import digits_study
from experiments import report as report_lib
from experiments import run as run_lib
from lbjax import config_lib
from lbjax import metrics as metrics_lib
from lbjax.analysis import noise_scale
from lbjax.errors import ConfigError

PNG = "batch_scaling.png"
SEARCHES = ("grid", "tpe")
TPE_SEED = 0  # the sampler's seed, plus the batch size: reproducible proposals on a rerun


class Point(NamedTuple):
  """One training run of the study."""
  optimizer: str
  batch_size: int
  learning_rate: float
  seed: int
  workdir: str


class Settings(NamedTuple):
  """What the runs of one invocation share."""
  root: str
  target: float
  seeds: int
  resolution: float = study.RESOLUTION
  budget_factor: float = study.BUDGET_FACTOR

  def cadence(self, batch_size: int) -> tuple[int, int]:
    """``(eval_every, max_steps)`` of ``batch_size``."""
    return study.cadence(batch_size, self.resolution, self.budget_factor)

  def point(self, optimizer: str, batch_size: int, learning_rate: float, seed: int) -> Point:
    return Point(optimizer, batch_size, learning_rate, seed, os.path.join(
        self.root, f"{optimizer},target={self.target:g}", f"batch={batch_size}",
        f"lr={learning_rate:g},seed={seed}"))

  def config(self, point: Point):
    eval_every, max_steps = self.cadence(point.batch_size)
    return study.run_config(point.optimizer, point.batch_size, point.learning_rate, point.seed,
                            eval_every, max_steps)


def round_lr(lr: float) -> float:
  """Three significant digits: the learning rate the run uses and its directory names."""
  return float(f"{lr:.3g}")


def lr_grid(center: float, trials: int, ratio: float = study.LR_GRID_RATIO) -> list[float]:
  """``trials`` learning rates stepping by ``ratio``, centred (geometrically) on ``center``."""
  return [round_lr(center * ratio ** (i - (trials - 1) / 2)) for i in range(trials)]


# Measuring one run ---------------------------------------------------------------------------------


class Measured(NamedTuple):
  """What a run directory says about its point."""
  status: str | None     # status.json's status; None before the run wrote one
  steps: int | None      # first evaluated step with validation accuracy >= target
  eval_every: int | None
  best_accuracy: float | None  # the best validation accuracy evaluated
  b_simple: float | None  # over the second half of the run to the target (module doc)

  @property
  def finished(self) -> bool:
    return self.status in run_lib.FINISHED


def window_noise_scale(records: Sequence[dict], steps: int, b_small: int, b_big: int
                       ) -> float | None:
  """B_simple over the logging windows of ``records`` that end in (steps/2, steps]:
  `lbjax.noise_scale.window_b_simple` (window estimates weighted by their steps, then the ratio
  of the means; ``b_small`` / ``b_big`` for records without the loop's estimates); None without
  such a window, NaN when the mean |G|² estimate is not positive.
  """
  return noise_scale.window_b_simple(records, steps / 2, steps, b_small, b_big)


def measure(workdir: str, target: float) -> Measured:
  """Reads a run's ``config.json``, ``status.json`` and ``metrics.jsonl``."""
  status = metrics_lib.read_status(workdir)
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return Measured(None if status is None else status["status"], None, None, None, None)
  with open(path) as f:
    config = json.load(f)
  records = metrics_lib.read_metrics(workdir)
  evals = [r for r in records if "validation_accuracy" in r]
  steps = next((r["step"] for r in evals if r["validation_accuracy"] >= target), None)
  best = max((r["validation_accuracy"] for r in evals), default=None)
  b_simple = None
  if steps is not None:
    batch = config["batch_size"]
    b_small, b_big, _ = noise_scale.batch_sizes(batch, 1, config.get("micro_batch_size"))
    b_simple = window_noise_scale(records, steps, b_small, b_big)
  return Measured(None if status is None else status["status"], steps,
                  config.get("log_every_steps"), best, b_simple)


# Training (in the worker processes) ---------------------------------------------------------------


def _init_worker(cache_dir: str) -> None:
  """One device per run, and JAX's persistent compilation cache shared by the workers.

  Simulated CPU devices (``--xla_force_host_platform_device_count``, e.g. the test suite's) are
  dropped before JAX starts its backend in this process: a run's noise scale is measured from
  the halves of its batch on one device (`configs.batch_scaling`).
  """
  xla_flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                     os.environ.get("XLA_FLAGS", "")).strip()
  os.environ["XLA_FLAGS"] = xla_flags
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_compilation_cache_dir", cache_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  logging.set_verbosity(logging.WARNING)


def _cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def train(config_json: str, workdir: str, target: float) -> dict[str, Any]:
  """Trains one point until its validation accuracy reaches ``target`` (or its budget);
  returns ``runners.run``'s summary with ``seconds`` and ``cpu_seconds`` (output to
  ``WORKDIR/log.txt``; an exception is status ``error``)."""
  import jax  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top

  from lbjax import runners  # pylint: disable=g-import-not-at-top
  if jax.device_count() != 1:
    return {"status": "error", "error": f"a run needs one device, this worker sees "
            f"{jax.device_count()} (expose one accelerator per process)"}
  config = ml_collections.ConfigDict(json.loads(config_json))

  def stop_at_target(step: int, metrics: dict) -> bool:
    del step
    return metrics.get("validation_accuracy", -1.0) >= target

  wall, cpu = time.time(), _cpu_seconds()
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "log.txt"), "a") as out, contextlib.redirect_stdout(out), \
      contextlib.redirect_stderr(out):
    try:
      summary = runners.run(config, workdir, callback=stop_at_target)
    except Exception as e:  # noqa: BLE001  (one run's crash is recorded; the study goes on)
      traceback.print_exc()
      summary = {"status": "error", "error": f"{type(e).__name__}: {e}"}
  jax.clear_caches()  # each run compiles its own programs; keep the worker's memory flat
  return {**summary, "workdir": workdir, "seconds": time.time() - wall,
          "cpu_seconds": _cpu_seconds() - cpu}


def tpe_score(measured: Sequence[Measured], target: float, max_steps: int) -> float:
  """The TPE objective of one learning rate (minimised): the mean steps over the seeds if every
  seed reached the target, else ``max_steps · (2 + target − mean best accuracy)``."""
  if all(m.steps is not None for m in measured):
    return float(np.mean([m.steps for m in measured]))
  best = np.mean([m.best_accuracy if m.best_accuracy is not None else 0.0 for m in measured])
  return max_steps * (2.0 + target - float(best))


def tune_tpe(settings: Settings, optimizer: str, batch_size: int, trials: int,
             dry_run: bool = False) -> list[dict[str, Any]] | None:
  """``trials`` TPE trials of one batch size, one after the other (each: every seed at one
  learning rate); returns the summaries of the runs this call trained.

  With ``dry_run`` nothing is trained: the finished trials are replayed and None is returned at
  the first run still to train (``[]`` when every run is finished).
  """
  import optuna  # pylint: disable=g-import-not-at-top

  from lbjax.hpo import worker as hpo_worker  # pylint: disable=g-import-not-at-top
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  center = study.learning_rate_center(optimizer, batch_size)
  sampler = hpo_worker.SAMPLERS["tpe"]({"n_startup_trials": max(2, trials // 3),
                                        "seed": TPE_SEED + batch_size})
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    search = optuna.create_study(direction="minimize", sampler=sampler)
  _, max_steps = settings.cadence(batch_size)
  trained = []
  for _ in range(trials):
    trial = search.ask()
    lr = round_lr(trial.suggest_float("learning_rate", center / study.LR_RANGE,
                                      center * study.LR_RANGE, log=True))
    measured = []
    for seed in range(settings.seeds):
      point = settings.point(optimizer, batch_size, lr, seed)
      if not measure(point.workdir, settings.target).finished:
        if dry_run:
          return None
        summary = train(settings.config(point).to_json(), point.workdir, settings.target)
        trained.append(summary)
      measured.append(measure(point.workdir, settings.target))
    search.tell(trial, tpe_score(measured, settings.target, max_steps))
  return trained


# Results -------------------------------------------------------------------------------------------


class Cell(NamedTuple):
  """One optimizer at one batch size, after tuning."""
  optimizer: str
  batch_size: int
  trials: dict[float, list[Measured]]  # learning rate -> one Measured per seed
  best_lr: float | None

  @property
  def best(self) -> list[Measured]:
    return self.trials.get(self.best_lr, [])

  @property
  def steps(self) -> list[int]:
    return [m.steps for m in self.best if m.steps is not None]

  @property
  def b_simple(self) -> list[float]:
    return [m.b_simple for m in self.best if m.b_simple is not None and np.isfinite(m.b_simple)]


def best_lr(trials: dict[float, list[Measured]]) -> float | None:
  """The learning rate with the fewest mean steps among those whose every seed reached the
  target (ties: the smaller rate); None if none did."""
  scores = {lr: np.mean([m.steps for m in ms]) for lr, ms in trials.items()
            if ms and all(m.steps is not None for m in ms)}
  return min(scores, key=lambda lr: (scores[lr], lr)) if scores else None


def cells_of(settings: Settings, optimizer: str, batch_sizes: Sequence[int]) -> list[Cell]:
  """The measured cells of ``optimizer``: every learning rate found on disk at each batch size
  (the grid's or TPE's trials), seeds 0 … seeds − 1."""
  cells = []
  for batch in batch_sizes:
    directory = os.path.dirname(settings.point(optimizer, batch, 1.0, 0).workdir)
    lrs = set()
    if os.path.isdir(directory):
      for name in os.listdir(directory):
        match = re.fullmatch(r"lr=([^,]+),seed=(\d+)", name)
        if match:
          lrs.add(float(match.group(1)))
    trials = {lr: [measure(settings.point(optimizer, batch, lr, s).workdir, settings.target)
                   for s in range(settings.seeds)] for lr in sorted(lrs)}
    cells.append(Cell(optimizer, batch, trials, best_lr(trials)))
  return cells


class Fit(NamedTuple):
  """:math:`S = S_\\min (1 + B_\\text{noise}/B)` fitted to log S; errors are one standard error
  (NaN when not estimable: as many points as parameters)."""
  s_min: float
  s_min_err: float
  b_noise: float
  b_noise_err: float
  points: int
  rms_log: float  # root-mean-square residual of log S
  at_bound: bool = False  # B_noise at a bound of the fit: no scaling or pure 1/B in the range

  def predict(self, batch_sizes) -> np.ndarray:
    return self.s_min * (1.0 + self.b_noise / np.asarray(batch_sizes, float))


def fit_scaling(batch_sizes: Sequence[float], steps: Sequence[float]) -> Fit | None:
  """Nonlinear least squares of ``log S = log S_min + log(1 + B_noise / B)`` over the points
  ``(batch_sizes[i], steps[i])`` (repeat a batch size for its seeds); None with fewer than two
  distinct batch sizes.

  The parameters are fitted as logarithms (both stay positive); B_noise is bounded to
  [min B / 1000, 1000 · max B] (beyond, the curve is a pure power law in the measured range). The
  standard errors come from the covariance scaled by the residual variance (``curve_fit``'s
  ``absolute_sigma=False``), so they reflect the seed-to-seed scatter and the misfit; S_min's and
  B_noise's are the delta method's, value × the standard error of its logarithm.
  """
  import scipy.optimize  # pylint: disable=g-import-not-at-top
  b, s = np.asarray(batch_sizes, float), np.asarray(steps, float)
  if len(np.unique(b)) < 2:
    return None

  def model(batch, log_s_min, log_b_noise):
    return log_s_min + np.log1p(np.exp(log_b_noise) / batch)

  bounds = ([-np.inf, math.log(b.min() / 1000)], [np.inf, math.log(1000 * b.max())])
  p0 = [math.log(s.min()), math.log(float(np.sqrt(b.min() * b.max())))]
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # "covariance could not be estimated": NaN errors below
    popt, pcov = scipy.optimize.curve_fit(model, b, np.log(s), p0=p0, bounds=bounds)
  err = np.sqrt(np.diag(pcov)) if np.all(np.isfinite(pcov)) else np.full(2, np.nan)
  s_min, b_noise = float(np.exp(popt[0])), float(np.exp(popt[1]))
  rms = float(np.sqrt(np.mean((model(b, *popt) - np.log(s)) ** 2)))
  at_bound = any(math.isclose(popt[1], bound, rel_tol=1e-6) for bound in (bounds[0][1],
                                                                          bounds[1][1]))
  return Fit(s_min, s_min * float(err[0]), b_noise, b_noise * float(err[1]), int(b.size), rms,
             at_bound)


def fit_cells(cells: Sequence[Cell]) -> Fit | None:
  points = [(c.batch_size, s) for c in cells for s in c.steps]
  return fit_scaling(*zip(*points)) if points else None


def _mean_std(values: Sequence[float], digits: str = ".3g") -> str:
  if not values:
    return report_lib.MISSING
  if len(values) == 1:
    return f"{values[0]:{digits}}"
  return f"{np.mean(values):{digits}} ± {np.std(values, ddof=1):.2g}"


def _steps_cell(cell: Cell, seeds: int) -> str:
  if cell.best_lr is None:
    return "not reached"
  return _mean_std(cell.steps, ".4g") + (f" (n={len(cell.steps)})" if seeds > 1 else "")


def _trials_cell(cell: Cell) -> str:
  parts = []
  for lr, ms in cell.trials.items():
    reached = [m.steps for m in ms if m.steps is not None]
    finished = [m for m in ms if m.finished]
    if len(finished) < len(ms):
      text = f"{len(ms) - len(finished)} unfinished"
    elif len(reached) == len(ms):
      text = f"{np.mean(reached):.4g}"
    else:
      text = f"{len(reached)}/{len(ms)} reached"
    parts.append(f"{lr:g}: {text}")
  return "; ".join(parts) or report_lib.MISSING


def _lr_cell(cell: Cell) -> str:
  if cell.best_lr is None:
    return report_lib.MISSING
  edge = ""
  if len(cell.trials) > 1 and cell.best_lr == min(cell.trials):
    edge = " (lowest tried)"
  elif len(cell.trials) > 1 and cell.best_lr == max(cell.trials):
    edge = " (highest tried)"
  return f"{cell.best_lr:g}{edge}"


def table(cells: Sequence[Cell], seeds: int) -> str:
  """One line per optimizer and batch size."""
  header = ["optimizer", "batch", "best lr", "steps to target (mean ± std)",
            "eval every (/ steps)", "B_simple (mean ± std)", "learning rates tried: mean steps"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for c in cells:
    every = next((m.eval_every for ms in c.trials.values() for m in ms
                  if m.eval_every is not None), None)
    resolution = ""
    if every is not None and c.steps:
      resolution = f" ({100 * every / np.mean(c.steps):.1f}%)"
    lines.append("| " + " | ".join([
        c.optimizer, str(c.batch_size), _lr_cell(c),
        _steps_cell(c, seeds), ("—" if every is None else str(every)) + resolution,
        _mean_std(c.b_simple), _trials_cell(c)]) + " |")
  return "\n".join(lines)


def _pm(value: float, err: float) -> str:
  return f"{value:.3g}" + (f" ± {err:.2g}" if np.isfinite(err) else " (no error: as many "
                                                                       "points as parameters)")


def fit_line(optimizer: str, cells: Sequence[Cell]) -> str:
  fit = fit_cells(cells)
  b_simple = [v for c in cells for v in c.b_simple]
  measured = (f"measured B_simple {_mean_std(b_simple)} (mean ± std over the {len(b_simple)} "
              "best-rate runs' windows)" if b_simple else "no measured B_simple")
  if fit is None:
    return f"* **{optimizer}**: no fit (fewer than two batch sizes reached the target); {measured}."
  ratio = (f"; fitted B_noise / measured B_simple = {fit.b_noise / np.mean(b_simple):.2g}"
           if b_simple else "")
  bound = (" at a bound of the fit: the steps do not follow the law in this range (no gain "
           "with B, or 1/B throughout)" if fit.at_bound else "")
  return (f"* **{optimizer}**: S_min = {_pm(fit.s_min, fit.s_min_err)} steps, "
          f"B_noise = {_pm(fit.b_noise, fit.b_noise_err)}{bound} ({fit.points} points, rms "
          f"residual {fit.rms_log:.3f} in log S); {measured}{ratio}.")


def _regime(vs_same: bool | None, vs_half: bool | None) -> str:
  if vs_same is None:
    return "—"
  if not vs_half:
    return "perfect scaling" if vs_same else "unresolved"
  return "diminishing returns" if vs_same else "plateau"


def comparisons(cells_by_optimizer: dict[str, list[Cell]]) -> str:
  """B → 2B per optimizer and, with several optimizers, optimizer against optimizer."""
  header = ["optimizer", "B → B'", "S(B') / S(B)", "S(B') − S(B) (2σ)", "S(B') − S(B)·B/B' (2σ)",
            "reading"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  exceeding = []

  def text(result):
    if result is None:
      return "—"
    delta, threshold, exceeds = result
    return f"{delta:+.3g} ({threshold:.2g})" + (" **exceeds**" if exceeds else "")

  for optimizer, cells in cells_by_optimizer.items():
    done = [c for c in cells if c.steps]
    for a, b in itertools.pairwise(done):
      same = digits_study.compare(b.steps, a.steps)
      perfect = digits_study.compare(b.steps, [s * a.batch_size / b.batch_size for s in a.steps])
      ratio = np.mean(b.steps) / np.mean(a.steps)
      lines.append("| " + " | ".join([
          optimizer, f"{a.batch_size} → {b.batch_size}", f"{ratio:.2f}", text(same),
          text(perfect), _regime(same and same[2], perfect and perfect[2])]) + " |")
  out = [("Consecutive batch sizes: S(B') against S(B) (no gain) and against S(B)·B/B' "
          "(perfect scaling); Δ of the means with 2σ = 2·sqrt(s₁²/n₁ + s₂²/n₂) over the seeds in "
          "brackets, **exceeds** when |Δ| > 2σ. Reading: perfect scaling = fewer steps than S(B), "
          "not distinguishable from S(B)·B/B'; diminishing returns = distinguishable from both; "
          "plateau = from perfect scaling, not from S(B); unresolved = from neither."), "",
         *lines]
  names = list(cells_by_optimizer)
  if len(names) > 1:
    out += ["", "Between optimizers at the same batch size (steps, first − second, 2σ):", "",
            "| batch | " + " | ".join(f"{x} − {y}" for i, x in enumerate(names)
                                        for y in names[i + 1:]) + " |",
            "|---|" + "---|" * (len(names) * (len(names) - 1) // 2)]
    batches = [c.batch_size for c in cells_by_optimizer[names[0]]]
    for k, batch in enumerate(batches):
      row = []
      for i, x in enumerate(names):
        for y in names[i + 1:]:
          result = digits_study.compare(cells_by_optimizer[x][k].steps,
                                        cells_by_optimizer[y][k].steps)
          row.append(text(result))
          if result is not None and result[2]:
            exceeding.append(f"{x} − {y} at {batch}: {result[0]:+.3g}")
      out.append(f"| {batch} | " + " | ".join(row) + " |")
    out += ["", "Exceeding the seed-to-seed spread: " + ("; ".join(exceeding) or "none") + "."]
  return "\n".join(out)


def plot(cells_by_optimizer: dict[str, list[Cell]], target: float, path: str) -> None:
  """Left: steps to target against batch (log-log), per optimizer the mean over the seeds at the
  best learning rate (bars: one std, dots: the seeds), its fit, the perfect-scaling line through
  its smallest batch and its mean measured B_simple. Right: the learning rates tried against
  batch (hollow: every seed reached the target, x: not), the best ones joined."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  import matplotlib.ticker  # pylint: disable=g-import-not-at-top

  fig, (ax, ax_lr) = plt.subplots(1, 2, figsize=(13, 5.5), gridspec_kw={"width_ratios": [3, 2]})
  colors = plt.get_cmap("tab10")
  all_batches = sorted({c.batch_size for cs in cells_by_optimizer.values() for c in cs})
  grid = np.geomspace(all_batches[0] / 1.4, all_batches[-1] * 1.4, 100)
  offsets = np.linspace(-0.08, 0.08, len(cells_by_optimizer)) if len(cells_by_optimizer) > 1 else [
      0.0]
  handles = []  # the legend, one column per optimizer
  for i, (optimizer, cells) in enumerate(cells_by_optimizer.items()):
    color = colors(i % 10)
    shift = 2.0 ** offsets[i]  # optimizers side by side on the learning-rate panel
    for c in cells:
      for lr, ms in c.trials.items():
        reached = bool(ms) and all(m.steps is not None for m in ms)
        ax_lr.plot(c.batch_size * shift, lr, "o" if reached else "x", color=color, ms=6,
                   mfc="none", alpha=0.7)
    done = [c for c in cells if c.steps]
    if not done:
      continue
    b = np.array([c.batch_size for c in done], float)
    mean = np.array([np.mean(c.steps) for c in done])
    std = np.array([np.std(c.steps, ddof=1) if len(c.steps) > 1 else 0.0 for c in done])
    handles.append(ax.errorbar(
        b, mean, yerr=std, fmt="o-", color=color, lw=1.5, capsize=3,
        label=f"{optimizer}: measured (best lr per batch, mean ± std over seeds)"))
    for c in done:
      ax.plot([c.batch_size] * len(c.steps), c.steps, ".", color=color, alpha=0.4, ms=5)
    fit = fit_cells(cells)
    if fit is not None:
      handles += ax.plot(grid, fit.predict(grid), "--", color=color, lw=1.2,
                         label=f"{optimizer}: fit S_min(1 + B_noise/B): S_min = "
                         f"{fit.s_min:.3g}, B_noise = {fit.b_noise:.3g}")
    handles += ax.plot(grid, mean[0] * b[0] / grid, ":", color=color, lw=1.2,
                       label=f"{optimizer}: perfect scaling (S ∝ 1/B from B = {int(b[0])})")
    b_simple = [v for c in cells for v in c.b_simple]
    if b_simple:
      handles.append(ax.axvline(
          np.mean(b_simple), color=color, lw=0.8, alpha=0.5,
          label=f"{optimizer}: measured B_simple = {np.mean(b_simple):.3g} (mean)"))
    ax_lr.plot(b * shift, [c.best_lr for c in done], "o-", color=color,
               label=f"{optimizer}: best")
  plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
  for axis in (ax, ax_lr):
    axis.set_xscale("log", base=2)
    axis.set_yscale("log")
    axis.set_xticks(all_batches)
    axis.set_xticklabels([str(x) for x in all_batches])
    axis.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    axis.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.yaxis.set_major_formatter(plain)
    axis.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axis.set_xlabel("batch size B")
    axis.grid(True, which="both", alpha=0.3)
  ax.set_ylabel(f"steps to {100 * target:g}% validation accuracy")
  ax.set_title("Steps to target against batch size (each batch its own tuned learning rate)",
               fontsize=10)
  if handles:
    ax.legend(handles=handles, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12),
              ncol=len(cells_by_optimizer))
  ax_lr.plot([], [], "o", color="gray", mfc="none", label="tried: every seed reached the target")
  ax_lr.plot([], [], "x", color="gray", label="tried: not every seed reached it")
  ax_lr.set_ylabel("learning rate")
  ax_lr.set_title("Learning rates tried and the best", fontsize=10)
  ax_lr.legend(fontsize=7, loc="upper left")
  fig.tight_layout()
  fig.savefig(path, dpi=120, bbox_inches="tight")
  plt.close(fig)


# The study -----------------------------------------------------------------------------------------


def _check(optimizers: Sequence[str], batch_sizes: Sequence[int], target: float, trials: int,
           seeds: int, search: str) -> None:
  for name in optimizers:
    if name not in study.LR_CENTER:
      raise ConfigError("--optimizer", f"unknown optimizer {name!r}; allowed: "
                        f"{', '.join(study.LR_CENTER)}")
  if not batch_sizes or any(b < 2 or b % 2 for b in batch_sizes):
    raise ConfigError("--batch_sizes", f"even batch sizes >= 2 (the noise scale halves each "
                      f"batch), got {list(batch_sizes)}")
  if any(b > study.NUM_TRAIN for b in batch_sizes):
    raise ConfigError("--batch_sizes", f"at most the {study.NUM_TRAIN} training images, "
                      f"got {list(batch_sizes)}")
  if not 0.0 < target <= 1.0:
    raise ConfigError("--target", f"a validation accuracy in (0, 1], got {target}")
  if trials < 1 or seeds < 1:
    raise ConfigError("--trials" if trials < 1 else "--seeds", "must be >= 1")
  if search not in SEARCHES:
    raise ConfigError("--search", f"one of {', '.join(SEARCHES)}, got {search!r}")


def _cpu_of_children() -> float:
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def run(root: str, optimizers: Sequence[str] = (study.OPTIMIZER,),
        batch_sizes: Sequence[int] = study.BATCH_SIZES, target: float = study.TARGET,
        trials: int = study.TRIALS, seeds: int = study.SEEDS, search: str = "grid",
        processes: int = 2, out: str | None = None, resolution: float = study.RESOLUTION,
        budget_factor: float = study.BUDGET_FACTOR) -> dict[str, Any]:
  """Runs (or skips) the study under ``root``; returns the text, the cells and the PNG path."""
  batch_sizes = sorted(set(batch_sizes))
  _check(optimizers, batch_sizes, target, trials, seeds, search)
  start, cpu_start = time.time(), _cpu_seconds() + _cpu_of_children()
  settings = Settings(root, target, seeds, resolution, budget_factor)
  # Grid: one task per run; TPE: one task per batch size (its trials one after the other).
  tasks = []
  for optimizer in optimizers:
    for batch in batch_sizes:
      if search == "tpe":
        if tune_tpe(settings, optimizer, batch, trials, dry_run=True) is None:
          tasks.append((batch, tune_tpe, (settings, optimizer, batch, trials)))
        continue
      for lr in lr_grid(study.learning_rate_center(optimizer, batch), trials):
        for seed in range(seeds):
          point = settings.point(optimizer, batch, lr, seed)
          status = metrics_lib.read_status(point.workdir)
          config = settings.config(point)
          config_lib.check_workdir(config, point.workdir)  # an edited config: an error
          if status is None or status["status"] not in run_lib.FINISHED:
            tasks.append((batch, train, (config.to_json(), point.workdir, target)))
  # The most steps first (smallest batches), so the last tasks are short.
  tasks.sort(key=lambda t: -settings.cadence(t[0])[1])
  print(f"batch scaling: {', '.join(optimizers)} at batch {', '.join(map(str, batch_sizes))}, "
        f"target {target:g}, {trials} {search} learning rate(s) × {seeds} seed(s); "
        f"{len(tasks)} task(s) to run in {max(processes, 1)} process(es)", flush=True)
  trained = []
  if tasks:
    os.makedirs(root, exist_ok=True)
    ctx = multiprocessing.get_context("spawn")  # JAX is not fork-safe
    with concurrent.futures.ProcessPoolExecutor(
        max(processes, 1), mp_context=ctx, initializer=_init_worker,
        initargs=(os.path.abspath(os.path.join(root, "jax_cache")),)) as pool:
      futures = {pool.submit(fn, *args): args for _, fn, args in tasks}
      for future in concurrent.futures.as_completed(futures):
        try:
          result = future.result()
        except Exception as e:  # noqa: BLE001  (a crashed worker process)
          args = futures[future]
          result = {"status": "error", "error": f"{type(e).__name__}: {e}",
                    "workdir": args[1] if isinstance(args[1], str) else args[0].root}
        for r in result if isinstance(result, list) else [result]:
          workdir = r["workdir"]
          m = measure(workdir, target)
          line = (f"{os.path.relpath(workdir, root)}: {r['status']}"
                  + (f" ({r['error']})" if r["status"] == "error" else
                     f", steps to target {m.steps if m.steps is not None else 'not reached'}")
                  + (f", {r['seconds']:.0f} s ({r['cpu_seconds']:.0f} s CPU)"
                     if "seconds" in r else ""))
          print(line, flush=True)
          trained.append(r)
          if r["status"] == "preempted":
            raise SystemExit("lbjax: preempted; rerun the same command to continue")
  cells_by_optimizer = {o: cells_of(settings, o, batch_sizes) for o in optimizers}
  png = os.path.join(root, PNG)
  plot(cells_by_optimizer, target, png)
  wall, cpu = time.time() - start, _cpu_seconds() + _cpu_of_children() - cpu_start
  lr_rule = (f"a log grid stepping by ×{study.LR_GRID_RATIO:g}" if search == "grid" else
             f"TPE (`lbjax.hpo.worker`), log-uniform over ×1/{study.LR_RANGE:g} … "
             f"×{study.LR_RANGE:g}")
  text = "\n".join([
      (f"## Steps to {100 * target:g}% validation accuracy against batch size "
       "(`configs/batch_scaling.py`)"), "",
      (f"{', '.join(optimizers)}; batch sizes {', '.join(map(str, batch_sizes))}; {trials} "
       f"learning rate(s) per batch size by {lr_rule} around "
       f"{{{', '.join(f'{o}: {study.LR_CENTER[o]:g}' for o in optimizers)}}} · "
       f"(B/{study.LR_REFERENCE_BATCH})^{study.LR_EXPONENT[optimizers[0]]:g}; seeds "
       f"{', '.join(map(str, range(seeds)))}. A run evaluates every `eval every` steps (the "
       f"first crossing of the target lies at most that many steps before the step given; "
       f"aimed at {100 * resolution:g}% of the steps) and stops at the target or after "
       f"{budget_factor:g}× the guessed steps. Steps: mean ± sample std over the seeds at the "
       f"best learning rate. B_simple: over the second half of each run to the target "
       f"(`experiments/batch_scaling.py`, step 3)."), "",
      table([c for cs in cells_by_optimizer.values() for c in cs], seeds), "",
      "### Fit S = S_min (1 + B_noise / B)", "",
      *[fit_line(o, cs) for o, cs in cells_by_optimizer.items()], "",
      "### Differences against the seed-to-seed spread", "",
      comparisons(cells_by_optimizer), "",
      (f"{digits_study._p_note(seeds)}." if seeds > 1 else  # pylint: disable=protected-access
       "One seed: no spread to compare with."), "",
      f"Figure: `{png}`.", "",
      (f"Total wall time {wall:.0f} s, CPU time {cpu:.0f} s (user + sys of this process and its "
       f"workers); {len(trained)} run(s) trained by this invocation."), ""])
  print(text, flush=True)
  if out:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
      f.write(text)
  return {"text": text, "cells": cells_by_optimizer, "png": png, "trained": trained,
          "seconds": wall, "cpu_seconds": cpu}


FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command-line flags (defined only when run as a program, so importing is free)."""
  flags.DEFINE_string("root", None, "Directory of the study's runs.")
  flags.DEFINE_list("optimizer", [study.OPTIMIZER], "Optimizer(s), comma-separated: "
                    f"{', '.join(study.LR_CENTER)}.")
  flags.DEFINE_list("batch_sizes", [str(b) for b in study.BATCH_SIZES],
                    "Batch sizes, comma-separated.")
  flags.DEFINE_float("target", study.TARGET, "Target validation accuracy.")
  flags.DEFINE_integer("trials", study.TRIALS, "Learning rates per batch size.")
  flags.DEFINE_enum("search", "grid", list(SEARCHES), "grid: a log grid around the config's "
                    "centre; tpe: the project's TPE sampler, one trial after the other.")
  flags.DEFINE_integer("seeds", study.SEEDS, "Seeds 0 … N-1 at every learning rate.")
  flags.DEFINE_integer("processes", 2, "Runs at a time, each process on one device.")
  flags.DEFINE_float("resolution", study.RESOLUTION, "Evaluation cadence as a fraction of "
                     "the guessed steps to target.")
  flags.DEFINE_float("budget_factor", study.BUDGET_FACTOR, "Step budget as a multiple of "
                     "the guessed steps to target.")
  flags.DEFINE_string("out", None, "Also write the markdown here.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)
  try:
    if not FLAGS.root:
      raise ConfigError("--root", "required")
    try:
      batch_sizes = [int(b) for b in FLAGS.batch_sizes]
    except ValueError:
      raise ConfigError("--batch_sizes", f"integers, got {FLAGS.batch_sizes}") from None
    run(FLAGS.root, FLAGS.optimizer, batch_sizes, FLAGS.target, FLAGS.trials, FLAGS.seeds,
        FLAGS.search, FLAGS.processes, FLAGS.out, FLAGS.resolution, FLAGS.budget_factor)
  except ConfigError as e:
    sys.exit(f"lbjax: error: {e}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
