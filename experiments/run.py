r"""Runs a config's sweep locally: one workdir per run, finished runs skipped, unfinished resumed.

    python -m experiments.run --config=configs/seed003_table2.py --root=runs/seed003_table2 \
        --data_dir=/data/tfds [--processes=N] [--only=adamw] [--dry_run]

A config file is ``get_config(arg)`` (``--config=configs/X.py:arg``) and, for a sweep, a
``sweep()`` (or ``sweep(arg)``) beside it returning a list of overrides, one dict per run:

* ``{"batch_size": 8192, "noise.scale": 1e-3, "seed": 1}``: dotted keys set one value;
* ``{"optimizer": {"name": "adamw", "learning_rate": 0.01, "weight_decay": 0.01}}``: a dict
  replaces the whole block;
* ``{"run_name": "3_trivialaugment", ...}``: the reserved key ``run_name`` names the run.

A config file without ``sweep()`` is one run. Run ``i`` lives in ``ROOT/<name>``, the name made
from its overrides (``batch_size=8192,noise.scale=0.001,seed=1``), or its ``run_name`` plus
``,seed=N`` when it sets the seed; a config without a sweep uses its file name and argument.
Every planned config is validated before anything runs.

A run whose workdir another live process holds (`lbjax.workdir.in_use`: the same sweep started
twice) is skipped with a line and status ``in use``; it is not an error of the sweep.
A run whose ``status.json`` says completed, diverged or stopped is skipped; any other (absent,
running after a kill, preempted) is started, and `lbjax.train.train_and_evaluate` resumes it from
its latest checkpoint. A workdir that holds a different config (the file was edited) is an error
for that run, never overwritten. ``ROOT/sweeps.json`` records which config file and argument
made which runs (`experiments.report` reads it). SIGTERM stops the current run at a checkpoint
and the sweep with it; rerun the same command to continue.

``--processes=N`` runs N runs at a time in separate processes (each sees every local device: on an
accelerator host keep N = 1, or give each process its own devices through the environment); each
run's output goes to ``ROOT/<name>/log.txt``.
"""

import concurrent.futures
import contextlib
import hashlib
import importlib.util
import inspect
import json
import multiprocessing
import os
import re
import sys
import traceback
from typing import Any, NamedTuple

from absl import app
from absl import flags
import ml_collections

from configs.sweeps import apply_overrides
from lbjax.errors import ConfigError
from lbjax.workdir import WorkdirInUse
from lbjax.workdir import in_use

FINISHED = ("completed", "diverged", "stopped")
RUN_NAME = "run_name"  # reserved override key (configs/sweeps.py)
SWEEPS_FILE = "sweeps.json"
MAX_NAME = 120


class Run(NamedTuple):
  name: str
  workdir: str
  overrides: dict
  config: ml_collections.ConfigDict


# Loading configs ----------------------------------------------------------------------------------


def split_spec(spec: str) -> tuple[str, str | None]:
  """``"configs/X.py:arg"`` → ``("configs/X.py", "arg")``; no ``:`` → arg None."""
  path, sep, arg = spec.partition(":")
  return path, (arg if sep else None)


def load_module(path: str):
  """Imports a config file by path (its ``from configs import ...`` needs the repo root)."""
  if not os.path.isfile(path):
    raise ConfigError("--config", f"no such config file: {path}")
  name = "_lbjax_config_" + re.sub(r"\W", "_", os.path.abspath(path))
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigError("--config", f"{path} has no get_config()")
  return module


def _call(fn, arg: str | None):
  """``fn(arg)`` if ``fn`` takes an argument, else ``fn()`` (an argument it cannot take is an
  error)."""
  if inspect.signature(fn).parameters:
    return fn(arg)
  if arg is not None:
    raise ConfigError("--config", f"{fn.__name__}() of this config takes no argument, got {arg!r}")
  return fn()


def get_config(module, arg: str | None) -> ml_collections.ConfigDict:
  return _call(module.get_config, arg)


def sweep_of(module, arg: str | None) -> list[dict] | None:
  """The module's ``sweep()`` entries, or None when it has no sweep."""
  if not hasattr(module, "sweep"):
    return None
  takes_arg = bool(inspect.signature(module.sweep).parameters)
  entries = list(module.sweep(arg) if takes_arg else module.sweep())
  for i, entry in enumerate(entries):
    if not isinstance(entry, dict):
      raise ConfigError(f"sweep()[{i}]", f"must be a dict of overrides, got {entry!r}")
  return entries


def flatten(overrides: dict, prefix: str = "") -> dict:
  """Nested override dicts as dotted keys, in order."""
  out = {}
  for key, value in overrides.items():
    if isinstance(value, dict):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def _format(value) -> str:
  if isinstance(value, float):
    return repr(value)
  if isinstance(value, (list, tuple)):
    return "-".join(_format(v) for v in value)
  return str(value)


def run_name(overrides: dict, default: str = "default") -> str:
  """A directory name for ``overrides``: ``key=value`` pairs joined by commas, or ``run_name``
  (plus ``,seed=N``); names longer than ``MAX_NAME`` keep a prefix and a hash of the whole."""
  flat = flatten(overrides)
  if RUN_NAME in flat:
    name = str(flat[RUN_NAME]) + (f",seed={flat['seed']}" if "seed" in flat else "")
  else:
    name = ",".join(f"{k}={_format(v)}" for k, v in flat.items()) or default
  name = re.sub(r"[^A-Za-z0-9._=,+-]", "_", name)
  if len(name) > MAX_NAME:
    digest = hashlib.sha1(name.encode()).hexdigest()[:10]
    name = f"{name[:MAX_NAME - 11]}~{digest}"
  return name


def plan(spec: str, root: str, data_dir: str | None = None) -> list[Run]:
  """The runs of ``--config=spec`` under ``root`` (nothing is written)."""
  path, arg = split_spec(spec)
  module = load_module(path)
  base = get_config(module, arg)
  entries = sweep_of(module, arg)
  stem = os.path.splitext(os.path.basename(path))[0]
  default = stem + (f"_{arg}" if arg else "")
  runs, seen = [], {}
  for i, overrides in enumerate(entries if entries is not None else [{}]):
    name = run_name(overrides, default)
    overrides = {k: v for k, v in overrides.items() if k != RUN_NAME}
    if data_dir is not None:
      overrides = {"data_dir": data_dir, **overrides}
    config = apply_overrides(base, overrides, where=f"sweep()[{i}]")
    if name in seen:
      raise ConfigError(f"sweep()[{i}]", f"same overrides as sweep()[{seen[name]}] ({name})")
    seen[name] = i
    config.lock()
    runs.append(Run(name, os.path.join(root, name), overrides, config))
  return runs


def validate(runs: list[Run], device_count: int) -> None:
  from lbjax import runners  # pylint: disable=g-import-not-at-top
  for run in runs:
    try:
      runners.validate(run.config, device_count=device_count)
    except ConfigError as e:
      raise ConfigError(e.key, f"{e.message} (run {run.name})") from None


def record_sweep(root: str, spec: str, runs: list[Run]) -> None:
  """Adds ``spec`` → run names to ``ROOT/sweeps.json``."""
  os.makedirs(root, exist_ok=True)
  path = os.path.join(root, SWEEPS_FILE)
  sweeps = {}
  if os.path.exists(path):
    with open(path) as f:
      sweeps = json.load(f)
  sweeps[spec] = [r.name for r in runs]
  with open(path + ".tmp", "w") as f:
    json.dump(sweeps, f, indent=1)
  os.replace(path + ".tmp", path)


# Running ------------------------------------------------------------------------------------------


def status_of(workdir: str) -> str | None:
  from lbjax import metrics  # pylint: disable=g-import-not-at-top
  status = metrics.read_status(workdir)
  return None if status is None else status["status"]


def run_one(config: ml_collections.ConfigDict, workdir: str, log_file: str | None = None
            ) -> dict[str, Any]:
  """Trains one run (resuming it); returns its summary, ``status`` "error" on an exception."""
  from lbjax import runners  # pylint: disable=g-import-not-at-top
  with contextlib.ExitStack() as stack:
    if log_file is not None:
      os.makedirs(os.path.dirname(log_file), exist_ok=True)
      out = stack.enter_context(open(log_file, "a"))
      stack.enter_context(contextlib.redirect_stdout(out))
      stack.enter_context(contextlib.redirect_stderr(out))
    try:
      return runners.run(config, workdir)
    except WorkdirInUse as e:  # another process runs it (a sweep started twice): skip it
      print(f"{workdir}: skipped, {e.message}", flush=True)
      return {"status": "in use", "error": e.message, "skipped": True}
    except Exception as e:  # noqa: BLE001  (one run's crash is recorded; the sweep goes on)
      traceback.print_exc()
      return {"status": "error", "error": f"{type(e).__name__}: {e}"}


def _run_in_child(config_json: str, workdir: str) -> dict[str, Any]:
  # A fresh process: configs travel as JSON; lists become tuples where the base had tuples.
  config = ml_collections.ConfigDict(json.loads(config_json))
  return run_one(config, workdir, log_file=os.path.join(workdir, "log.txt"))


def run_sweep(spec: str, root: str, *, processes: int = 1, only: str | None = None,
              data_dir: str | None = None, dry_run: bool = False
              ) -> dict[str, dict[str, Any]]:
  """Runs (or skips) every run of ``spec`` under ``root``; returns ``{name: summary}``.

  A skipped run's summary is its ``status.json`` with ``skipped: True``.
  """
  import jax  # pylint: disable=g-import-not-at-top

  from lbjax import config_lib  # pylint: disable=g-import-not-at-top
  from lbjax import metrics  # pylint: disable=g-import-not-at-top
  planned = plan(spec, root, data_dir)
  runs = [r for r in planned if not only or only in r.name]
  validate(runs, jax.device_count())
  results: dict[str, dict[str, Any]] = {}
  todo = []
  for run in runs:
    owner = in_use(run.workdir)
    if owner is not None:  # another process runs it now (a sweep started twice): skip it
      message = (f"in use by process {owner.get('pid', '?')} on {owner.get('host', '?')} since "
                 f"{owner.get('since', '?')}")
      print(f"{run.name}: skipped, {message}", flush=True)
      results[run.name] = {"status": "in use", "error": message, "skipped": True}
      continue
    status = metrics.read_status(run.workdir)
    try:
      config_lib.check_workdir(run.config, run.workdir)
    except ConfigError as e:
      results[run.name] = {"status": "error", "error": str(e)}
      continue
    if status is not None and status["status"] in FINISHED:
      results[run.name] = {**status, "skipped": True}
    else:
      todo.append(run)
  print(f"sweep {spec}: {len(runs)} runs, {len(runs) - len(todo)} finished or in error, "
        f"{len(todo)} to run", flush=True)
  if dry_run:
    for run in runs:
      print(f"  {run.name}: {results.get(run.name, {}).get('status', 'to run')}")
    return results
  if todo:
    record_sweep(root, spec, planned)
  if processes <= 1:
    for i, run in enumerate(todo):
      print(f"[{i + 1}/{len(todo)}] {run.workdir}", flush=True)
      results[run.name] = run_one(run.config, run.workdir)
      if results[run.name]["status"] == "preempted":
        print("sweep stopped by a signal; rerun the same command to continue", flush=True)
        break
  else:
    ctx = multiprocessing.get_context("spawn")  # JAX is not fork-safe
    with concurrent.futures.ProcessPoolExecutor(processes, mp_context=ctx,
                                                max_tasks_per_child=1) as pool:
      futures = {pool.submit(_run_in_child, run.config.to_json(), run.workdir): run
                 for run in todo}
      for future in concurrent.futures.as_completed(futures):
        run = futures[future]
        try:
          results[run.name] = future.result()
        except Exception as e:  # noqa: BLE001  (a crashed worker process)
          results[run.name] = {"status": "error", "error": f"{type(e).__name__}: {e}"}
        print(f"{run.name}: {results[run.name]['status']}", flush=True)
  return {run.name: results[run.name] for run in runs if run.name in results}


def summary_table(results: dict[str, dict[str, Any]]) -> str:
  lines = ["| run | status | step | test accuracy |", "|---|---|---|---|"]
  for name, r in results.items():
    acc = r.get("test_accuracy")
    acc = f"{acc:.4f}" if isinstance(acc, (int, float)) else ""
    status = r["status"] + (" (skipped)" if r.get("skipped") else "")
    if r["status"] == "error":
      status += f": {r.get('error', '')}"
    lines.append(f"| {name} | {status} | {r.get('step', '')} | {acc} |")
  return "\n".join(lines)


# CLI ----------------------------------------------------------------------------------------------

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command-line flags (defined only when run as a program, so importing is free)."""
  flags.DEFINE_string("config", None,
                      "Config file, optionally with an argument: configs/X.py[:arg].")
  flags.DEFINE_string("root", None, "Directory holding one workdir per run.")
  flags.DEFINE_integer("processes", 1, "Runs at a time, each in its own process.")
  flags.DEFINE_string("only", None, "Run only the runs whose name contains this string.")
  flags.DEFINE_string("data_dir", None, "Sets config.data_dir of every run (TFDS, CIFAR-10).")
  flags.DEFINE_bool("dry_run", False, "List the runs and their status; run nothing.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)
  if not FLAGS.config or not FLAGS.root:
    sys.exit("lbjax: error: --config and --root are required")
  try:
    results = run_sweep(FLAGS.config, FLAGS.root, processes=FLAGS.processes, only=FLAGS.only,
                        data_dir=FLAGS.data_dir, dry_run=FLAGS.dry_run)
  except ConfigError as e:
    sys.exit(f"lbjax: error: {e}")
  if not FLAGS.dry_run:
    print(summary_table(results), flush=True)
  if any(r["status"] == "error" for r in results.values()):
    sys.exit(1)


if __name__ == "__main__":
  define_flags()
  app.run(main)
