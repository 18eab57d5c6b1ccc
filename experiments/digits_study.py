r"""The large-batch mini-study on the embedded digits (`configs/digits_study.py`), one command:

    python -m experiments.digits_study --root=runs/digits_study [--out=results.md] [--processes=2]

1. runs the config's sweep — six methods × ``config.seed`` 0, 1, 2, in ``ROOT/<run>,seed=<k>`` —
   ``--processes`` runs at a time, each in its own process (finished runs are skipped, unfinished
   ones resumed, so a rerun only re-prints), and after training measures each run's Hessian of the
   training loss (`lbjax.analysis.sharpness`, BatchNorm in evaluation mode: the top eigenvalue by
   Lanczos and the trace by Hutchinson over the config's ``SHARPNESS`` batches), written to
   ``RUN/sharpness.json``;
2. prints one table — method, batch, optimizer (its learning rate after linear scaling),
   optimizer steps, and mean ± sample std over the seeds of test accuracy, test loss, λ_max,
   tr H and the gradient noise scale B_simple over the second half of training
   (`experiments.report.measurements`, `lbjax.noise_scale.second_half_b_simple`; "—" when the
   runs did not log it), seconds per run — and writes the learning curves
   (`experiments.report`);
3. says which differences exceed the seed-to-seed spread: each large-batch method against the
   small-batch reference and against large-batch SGD, :math:`|\Delta\bar x| > 2\sqrt{s_1^2/n_1
   + s_2^2/n_2}` (`compare`);
4. writes ``ROOT/interpolation.png``: θ(α) = (1−α)θ_SB + αθ_LB between the small- and large-batch
   SGD solutions of seed 0, α from −1 to 2, BatchNorm recomputed at every α (seed 001 Fig. 3,
   `lbjax.analysis.interpolation`), and prints the curve;
5. prints the total wall time.

Every process of the study keeps the programs it compiles in JAX's persistent compilation cache,
``ROOT/jax_cache`` (`use_compilation_cache`), so each program is compiled once per study, not
once per run. ``--out`` also writes the output to a markdown file.
"""

from collections.abc import Sequence
import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
import sys
import time
from typing import Any

from absl import app
from absl import flags
from absl import logging
import numpy as np

from experiments import report as report_lib
from experiments import run as run_lib
from lbjax import schedules
from lbjax.errors import ConfigError

ROOT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIG = os.path.join(ROOT_DIR, "configs", "digits_study.py")
INTERPOLATION = "interpolation.png"
COMPILATION_CACHE = "jax_cache"  # ROOT/jax_cache: JAX's persistent compilation cache
# Measured seconds of each run (2026-11-23, idle 2-core machine): only to start the longest first.
_SECONDS_HINT = {"4_lb_lars_swap": 34, "1_sb_sgd": 33, "5_lb_sgd_smoothout": 25,
                 "6_lb_hybrid": 16, "3_lb_lars": 14, "2_lb_sgd": 13}


def _optimizer(config: dict) -> str:
  name = config["optimizer.name"]
  extra = []
  if config.get("smoothout.scale"):
    extra.append(f"SmoothOut s={config['smoothout.scale']:g}")
  if config.get("swap.enabled"):
    extra.append(f"SWAP {config['swap.num_replicas']}×SGD@{config['swap.batch_size']}")
  lr = schedules.scaled_learning_rate(config["optimizer.learning_rate"], config["batch_size"],
                                     config.get("schedule.base_batch_size"))
  return f"{name} lr={lr:g}" + (f" + {', '.join(extra)}" if extra else "")


def use_compilation_cache(directory: str) -> None:
  """Keeps every program this process compiles in JAX's persistent compilation cache in
  ``directory``, and reads a program compiled before from there instead of compiling it again.

  The study compiles few distinct programs many times: a method's three seeds run the same
  step (the seed is data in the train state), every run initialises and evaluates the same model,
  the Hessian programs are the model's, and the interpolation's BatchNorm pass is one program
  for every α. The cache holds every program however small or fast to compile (the thresholds
  at 0), and is set before this process compiles anything (JAX reads the directory once).
  """
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


# Measuring -----------------------------------------------------------------------------------------


def measure_sharpness(workdir: str, batches: int, batch_size: int, tol: float,
                      trace_samples: int, seed: int = 0) -> dict[str, Any]:
  """λ_max and Hutchinson tr H of ``workdir``'s training loss; writes ``sharpness.json``.

  The loss is `lbjax.analysis.sharpness.train_loss` (BatchNorm in evaluation mode, evaluation
  preprocessing) over the first ``batches`` batches of ``batch_size`` of the run's training
  stream, data-parallel over the local devices (`sharpness.data_parallel_objective`). λ_max:
  ARPACK Lanczos (`sharpness.eigenvalues_of`) to relative accuracy ``tol``; tr H: the mean of
  ``trace_samples`` Rademacher probes with its standard error. The file has the keys
  `lbjax.analysis.sharpness.measure` writes for these two (no ε-sharpness).
  """
  import jax  # pylint: disable=g-import-not-at-top

  from lbjax.analysis import runs  # pylint: disable=g-import-not-at-top
  from lbjax.analysis import sharpness  # pylint: disable=g-import-not-at-top
  solution = runs.restore(workdir)
  data = sharpness.train_batches(solution, batches, batch_size)
  # BatchNorm's running statistics travel with every batch (one copy per device) instead of
  # being constants of the compiled loss, so the loss, gradient and Hessian-vector programs are
  # the same for every run of the model: compiled once, then read from the compilation cache.
  devices = int(data[0]["label"].shape[0])
  stats = jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (devices, *np.shape(x))),
                       solution.batch_stats)
  data = [{**batch, "batch_stats": stats} for batch in data]

  def batch_loss(params, batch):
    batch = dict(batch)
    with_stats = solution._replace(batch_stats=batch.pop("batch_stats"))
    return sharpness.train_loss(with_stats)(params, batch)

  obj = sharpness.data_parallel_objective(batch_loss, solution.params, data)
  seconds = {}
  t = time.perf_counter()
  eigenvalues = sharpness.eigenvalues_of(obj, 1, seed, tol=tol)
  seconds["top_eigenvalues"] = time.perf_counter() - t
  t = time.perf_counter()
  samples = sharpness.trace_samples_of(obj, trace_samples, seed, probes_per_call=1)
  seconds["hessian_trace"] = time.perf_counter() - t
  loss, _ = obj.value_and_grad(obj.x0)
  result = {
      "workdir": os.path.abspath(workdir), "model": solution.model, "step": solution.step,
      "batches": batches,
      "batch_size": int(data[0]["label"].size), "devices": int(data[0]["label"].shape[0]),
      "train_loss": loss, "top_eigenvalues": eigenvalues.tolist(), "lanczos_tol": tol,
      "hessian_trace": float(np.mean(samples)),
      "hessian_trace_stderr": float(np.std(samples, ddof=1) / np.sqrt(len(samples))),
      "trace_samples": trace_samples, "seed": seed,
      "batchnorm": "evaluation mode (the model's running statistics)", "seconds": seconds}
  path = os.path.join(workdir, sharpness.SHARPNESS_FILE)
  with open(path + ".tmp", "w") as f:
    json.dump(result, f, indent=1)
  os.replace(path + ".tmp", path)
  return result


def _task(config_json: str | None, workdir: str, sharp: dict | None) -> dict[str, Any]:
  """Trains the run (if ``config_json``), then measures its Hessian (if ``sharp``)."""
  out: dict[str, Any] = {}
  if config_json is not None:
    t = time.time()
    out["train"] = run_lib._run_in_child(config_json, workdir)  # pylint: disable=protected-access
    out["train_seconds"] = time.time() - t
    if out["train"]["status"] not in ("completed", "stopped"):
      return out
  if sharp is not None:
    t = time.time()
    out["sharpness"] = measure_sharpness(workdir, **sharp)
    out["sharpness_seconds"] = time.time() - t
  return out


def _interpolate(a: str, b: str, png: str, num_points: int) -> dict[str, Any]:
  from lbjax.analysis import interpolate  # pylint: disable=g-import-not-at-top
  t = time.time()
  curve = interpolate.run(a, b, png, num_points=num_points)["curves"][0]
  return {"curve": curve, "seconds": time.time() - t}


class _InProcess:
  """``concurrent.futures`` executor stand-in that runs each call at submission (one process)."""

  def submit(self, fn, *args):
    future = concurrent.futures.Future()
    try:
      future.set_result(fn(*args))
    except Exception as e:  # noqa: BLE001  (delivered through the future, as a pool does)
      future.set_exception(e)
    return future

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False


# Statistics ----------------------------------------------------------------------------------------


def compare(a: Sequence[float], b: Sequence[float], factor: float = 2.0
            ) -> tuple[float, float, bool] | None:
  r"""``(Δ, threshold, exceeds)``: Δ = mean(a) − mean(b), threshold = ``factor`` ·
  :math:`\sqrt{s_a^2/n_a + s_b^2/n_b}` (sample variances: the standard error of Δ as in Welch's
  t-test), exceeds = |Δ| > threshold; None with fewer than 2 values on a side.

  With 3 seeds a side Welch's t has 2 to 4 degrees of freedom, so |t| > 2 is a two-sided p of
  about 0.12 (equal variances) to 0.18: a screen for differences larger than the seed noise, not
  a significance test at 5%.
  """
  if len(a) < 2 or len(b) < 2:
    return None
  a, b = np.asarray(a, float), np.asarray(b, float)
  delta = float(a.mean() - b.mean())
  threshold = factor * float(np.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size))
  return delta, threshold, abs(delta) > threshold


def _p_note(n: int) -> str:
  """The two-sided p-value of |t| = 2 for Welch's t with n values a side (df n−1 … 2n−2)."""
  import scipy.stats  # pylint: disable=g-import-not-at-top
  if n < 2:
    return "one seed: no spread"
  low, high = (2 * scipy.stats.t.sf(2.0, df) for df in (2 * n - 2, n - 1))
  return (f"|Δ| = 2σ is a two-sided p of {low:.2f} (equal variances, {2 * n - 2} degrees of "
          f"freedom) to {high:.2f} ({n - 1})")


# Output --------------------------------------------------------------------------------------------

# (key, header): test accuracy (%), test loss, then `experiments.report.MEASUREMENTS` keys.
COLUMNS = (("test_accuracy", "test accuracy (%)"), ("test_loss", "test loss"),
           ("lambda_max", "λ_max"), ("hessian_trace", "tr H"),
           ("noise_scale", "B_simple (2nd half)"))


def values_by_run(root: str, labels: Sequence[str], names: set[str] | None = None
                  ) -> tuple[dict, dict]:
  """``({label: [RunResult]}, {label: {key: [values over finished seeds]}})`` for `COLUMNS`, of
  the runs under ``root`` (only those named in ``names`` if given)."""
  runs = [r for r in report_lib.collect(root) if names is None or r.name in names]
  table = report_lib.runs_table(runs, "digits_study")
  placed, _ = report_lib.place(dataclasses.replace(table, rows=tuple(
      (label, {"run": label}) for label in labels)), runs)
  grouped = {label: placed[(label, "test accuracy")] for label in labels}
  values = {}
  for label, rs in grouped.items():
    measured = [report_lib.measurements(r.workdir) for r in rs]
    values[label] = {
        "test_accuracy": [v for v in (report_lib.value_of(r, table) for r in rs) if v is not None],
        "test_loss": [v for v in (report_lib.value_of(r, dataclasses.replace(
            table, metrics=("test_loss",), percent=False)) for r in rs) if v is not None],
        **{k: [m[k] for m in measured if k in m] for k in ("lambda_max", "hessian_trace",
                                                          "noise_scale")}}
  return grouped, values


def _cell(values: Sequence[float], key: str) -> str:
  if key == "test_accuracy":
    if not values:
      return report_lib.MISSING
    std = f" ± {np.std(values, ddof=1):.2f}" if len(values) > 1 else ""
    return f"{np.mean(values):.2f}{std}"
  if key == "test_loss":
    if not values:
      return report_lib.MISSING
    std = f" ± {np.std(values, ddof=1):.3f}" if len(values) > 1 else ""
    return f"{np.mean(values):.3f}{std}"
  return report_lib._mean_std(values).replace(f" (n={len(values)})", "")  # pylint: disable=protected-access


def table(root: str, labels: dict[str, str], seconds: dict[str, list[float]],
          names: set[str] | None = None) -> str:
  """The study's table: per method, mean ± sample std over its seeds."""
  grouped, values = values_by_run(root, list(labels), names)
  header = (["run", "method", "batch", "optimizer", "steps", "seeds"] + [h for _, h in COLUMNS]
            + ["seconds/run"])
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for name, label in labels.items():
    rs = grouped[name]
    if not rs:
      lines.append(f"| {name} | {label} |" + f" {report_lib.MISSING} |" * (len(header) - 2))
      continue
    first = rs[0]
    status = first.status or {}
    steps = status.get("step", "")
    if first.config.get("swap.enabled"):  # phase-1 steps + phase-2 steps (of every replica)
      steps = f"{status.get('phase1_step', '?')} + {steps}"
    done = [r for r in rs if (r.status or {}).get("status") in ("completed", "stopped")]
    seeds = ",".join(str(r.config.get("seed")) for r in done)
    others = [f"{r.name}: {(r.status or {}).get('status', 'no status')}" for r in rs
              if r not in done]
    seeds += f" ({'; '.join(others)})" if others else ""
    secs = (f"{np.mean(seconds[name]):.0f}" if seconds.get(name) else "(earlier)")
    lines.append("| " + " | ".join(
        [name, label, str(first.config["batch_size"]), _optimizer(first.config), str(steps),
         seeds] + [_cell(values[name][k], k) for k, _ in COLUMNS] + [secs]) + " |")
  return "\n".join(lines)


def comparisons(root: str, labels: dict[str, str], reference: str, lb_reference: str,
                names: set[str] | None = None) -> str:
  """Which differences of means exceed twice their standard error (`compare`)."""
  _, values = values_by_run(root, list(labels), names)
  pairs = [(m, reference) for m in labels if m != reference]
  pairs += [(m, lb_reference) for m in labels if m not in (reference, lb_reference)]
  header = ["method − reference"] + [h for _, h in COLUMNS]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  exceeding = []
  for method, ref in pairs:
    cells = []
    for key, head in COLUMNS:
      result = compare(values[method][key], values[ref][key])
      if result is None:
        cells.append(report_lib.MISSING)
        continue
      delta, threshold, exceeds = result
      cells.append(f"{delta:+.3g} (2σ {threshold:.2g})" + (" **exceeds**" if exceeds else ""))
      if exceeds:
        exceeding.append(f"{method} vs {ref}: {head} {delta:+.3g}")
    lines.append("| " + " | ".join([f"{method} − {ref}"] + cells) + " |")
  lines += ["", "Exceeding the seed-to-seed spread: " + ("; ".join(exceeding) or "none") + "."]
  return "\n".join(lines)


def interpolation_table(curve) -> str:
  lines = ["| α | train loss | train acc | test loss | test acc |", "|---|---|---|---|---|"]
  for i, alpha in enumerate(curve["alpha"]):
    lines.append(f"| {alpha:+.2f} | {curve['train_loss'][i]:.4f} | "
                 f"{100 * curve['train_accuracy'][i]:.2f} | {curve['test_loss'][i]:.4f} | "
                 f"{100 * curve['test_accuracy'][i]:.2f} |")
  return "\n".join(lines)


def _trace_stderr_note(root: str) -> str:
  rel, settings = [], None
  for run in report_lib.collect(root):
    path = os.path.join(run.workdir, "sharpness.json")
    if os.path.exists(path):
      with open(path) as f:
        s = json.load(f)
      settings = s
      if s.get("hessian_trace"):
        rel.append(s["hessian_trace_stderr"] / abs(s["hessian_trace"]))
  if settings is None:
    return ""
  return (f"λ_max and tr H: Hessian of the training loss over {settings['batches']} training "
          f"batch(es) of {settings['batch_size']} (the first of each run's stream), BatchNorm in "
          f"evaluation mode; λ_max by Lanczos to relative accuracy "
          f"{settings.get('lanczos_tol', 1e-6):g}, tr H by Hutchinson with "
          f"{settings['trace_samples']} Rademacher probes (standard error "
          f"{100 * np.median(rel):.0f}% of the value, median over the runs; "
          f"{100 * np.min(rel):.0f}–{100 * np.max(rel):.0f}%). B_simple = tr(Σ)/|G|² "
          f"(McCandlish et al. 2018) over the second half of training: the per-window "
          f"estimates of |G|² and tr(Σ) in `metrics.jsonl` averaged over the windows ending in "
          f"(S/2, S], S the last step, each weighted by its steps, then their ratio "
          f"({report_lib.MISSING}: not logged).")


# The study -----------------------------------------------------------------------------------------


def run(root: str, out: str | None = None, num_points: int = 13, processes: int = 2,
        config: str = CONFIG) -> str:
  """Runs the study of ``config`` under ``root``; returns (and optionally writes) the markdown.

  ``config`` is a config file like ``configs/digits_study.py`` (``RUNS``, ``LABELS``,
  ``REFERENCE``, ``LB_REFERENCE``, ``SHARPNESS`` and a seeded ``sweep()``); ``processes`` ≤ 1
  runs everything in this process.
  """
  import jax  # pylint: disable=g-import-not-at-top

  from lbjax import config_lib  # pylint: disable=g-import-not-at-top
  from lbjax import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  start = time.time()
  module = run_lib.load_module(config)
  labels, ref, lb_ref = module.LABELS, module.REFERENCE, module.LB_REFERENCE
  planned = run_lib.plan(config, root)
  run_lib.validate(planned, jax.device_count())
  sharp = dict(module.SHARPNESS)
  tasks, errors = [], {}
  for r in planned:
    status = metrics_lib.read_status(r.workdir)
    try:
      config_lib.check_workdir(r.config, r.workdir)
    except ConfigError as e:
      errors[r.name] = str(e)
      continue
    finished = status is not None and status["status"] in run_lib.FINISHED
    measured = os.path.exists(os.path.join(r.workdir, "sharpness.json"))
    if not finished or (status["status"] in ("completed", "stopped") and not measured):
      tasks.append((None if finished else r.config.to_json(), r))
  for name, error in errors.items():
    print(f"{name}: error: {error}", flush=True)
  print(f"{config}: {len(planned)} runs, {sum(t[0] is not None for t in tasks)} to train, "
        f"{len(tasks)} to measure; {max(processes, 1)} process(es)", flush=True)
  if any(t[0] is not None for t in tasks):
    run_lib.record_sweep(root, config, planned)
  label_of = report_lib._run_label  # pylint: disable=protected-access
  seed0 = {label: next((r for r in planned if label_of(report_lib.RunResult(r.name, "", {}, None))
                        == label and r.config.seed == min(p.config.seed for p in planned)), None)
           for label in (ref, lb_ref)}
  # The interpolation's two ends first (the curve then runs beside the other runs), then seed by
  # seed, the longest runs first: the runs side by side are of different methods, so a method's
  # programs are compiled by its first seed alone and read from the cache by the others (two of
  # its seeds at once would both compile them).
  ends = {seed0[ref].name, seed0[lb_ref].name}
  tasks.sort(key=lambda t: (t[0] is None, t[1].name not in ends, t[1].config.seed,
                            -_SECONDS_HINT.get(label_of(report_lib.RunResult(t[1].name, "", {},
                                                                             None)), 0)))
  png = os.path.join(root, INTERPOLATION)
  curve_json = os.path.splitext(png)[0] + ".json"
  pending_ends = {seed0[ref].name, seed0[lb_ref].name} & {r.name for _, r in tasks}
  seconds: dict[str, list[float]] = {}
  interpolation = None
  # One compilation cache for this process and the workers (a directory set already, e.g. by
  # JAX_COMPILATION_CACHE_DIR, is kept).
  cache = jax.config.jax_compilation_cache_dir or os.path.join(root, COMPILATION_CACHE)
  use_compilation_cache(cache)
  ctx = multiprocessing.get_context("spawn")  # JAX is not fork-safe
  executor = (concurrent.futures.ProcessPoolExecutor(processes, mp_context=ctx,
                                                     initializer=use_compilation_cache,
                                                     initargs=(cache,))
              if processes > 1 else _InProcess())
  with executor as pool:
    futures = {pool.submit(_task, cfg, r.workdir, sharp): r for cfg, r in tasks}

    def submit_interpolation():
      if os.path.exists(curve_json) and not {seed0[ref].name, seed0[lb_ref].name} & {
          r.name for _, r in tasks}:
        return None  # both ends unchanged since the curve was written
      return pool.submit(_interpolate, seed0[ref].workdir, seed0[lb_ref].workdir, png,
                         num_points)

    interp_future = None if pending_ends else submit_interpolation()
    waiting = set(futures)
    while waiting:
      done, waiting = concurrent.futures.wait(waiting, return_when="FIRST_COMPLETED")
      for future in done:
        r = futures[future]
        try:
          result = future.result()
        except Exception as e:  # noqa: BLE001  (a crashed worker)
          result = {"train": {"status": "error", "error": f"{type(e).__name__}: {e}"}}
        train = result.get("train", {})
        if "train_seconds" in result:
          seconds.setdefault(label_of(report_lib.RunResult(r.name, "", {}, None)), []).append(
              result["train_seconds"])
        line = f"{r.name}: {train.get('status', 'trained earlier')}"
        if train.get("status") == "error":
          line += f" ({train.get('error')})"
        if "sharpness" in result:
          s = result["sharpness"]
          line += (f"; λ_max {s['top_eigenvalues'][0]:.4g}, tr H {s['hessian_trace']:.4g} ± "
                   f"{s['hessian_trace_stderr']:.2g} ({result['sharpness_seconds']:.0f} s)")
        print(line, flush=True)
        if train.get("status") == "preempted":
          raise SystemExit("lbjax: preempted; rerun the same command to continue")
        pending_ends.discard(r.name)
        if not pending_ends and interp_future is None and r.name in (seed0[ref].name,
                                                                      seed0[lb_ref].name):
          interp_future = submit_interpolation()
    if interp_future is not None:
      interpolation = interp_future.result()
  if interpolation is None and os.path.exists(curve_json):
    with open(curve_json) as f:
      interpolation = {"curve": json.load(f)["curves"][0], "seconds": None}
  report_lib.report(root, report_lib.runs_table(report_lib.collect(root), "digits_study"))
  total = time.time() - start
  seeds = sorted({r.config.seed for r in planned})
  names = {r.name for r in planned}  # other directories under ROOT are not the study's
  interp = []
  if interpolation is not None:
    took = (f"{interpolation['seconds']:.0f} s" if interpolation["seconds"] is not None
            else "computed earlier")
    interp = [(f"Interpolation θ(α) = (1−α)θ_SB + αθ_LB between `{seed0[ref].name}` (α = 0) and "
              f"`{seed0[lb_ref].name}` (α = 1), BatchNorm recomputed at each α ({took}; "
              f"`{png}`):"), "", interpolation_table(interpolation["curve"]), ""]
  text = "\n".join([
      f"## Large batch on the digits (`{os.path.relpath(config, ROOT_DIR)}`)", "",
      (f"Every method with config.seed {', '.join(map(str, seeds))}: mean ± sample std over the "
      f"seeds (n = {len(seeds)} unless the seeds column says otherwise). seconds/run: mean "
      f"training wall time of the runs trained by this invocation, {max(processes, 1)} at a "
      "time."), "",
      table(root, labels, seconds, names), "", _trace_stderr_note(root), "",
      "### Differences against the seed-to-seed spread", "",
      (f"Δ = difference of the means; 2σ = 2·sqrt(s₁²/n₁ + s₂²/n₂) (sample variances over the "
      f"seeds, the standard error of Δ as in Welch's t-test); **exceeds** when |Δ| > 2σ. With "
      f"{len(seeds)} seeds a side this is a screen, not a 5% test: {_p_note(len(seeds))}."), "",
      comparisons(root, labels, ref, lb_ref, names), "", *interp,
      f"Total wall time {total:.0f} s.", ""])
  print(text, flush=True)
  if out:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
      f.write(text)
  return text


FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string("root", "runs/digits_study", "Directory of the study's runs.")
  flags.DEFINE_string("out", None, "Also write the markdown here.")
  flags.DEFINE_integer("num_points", 13, "Points of the interpolation (α from −1 to 2).")
  flags.DEFINE_integer("processes", 2, "Runs at a time, each in its own process (1: in this "
                       "process).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)
  try:
    run(FLAGS.root, FLAGS.out, FLAGS.num_points, FLAGS.processes)
  except ConfigError as e:
    sys.exit(f"lbjax: error: {e}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
