r"""Distributed TPE hyperparameter search with Optuna (seed 002 §4, Table 1).

Seed 002 tunes momentum SGD, Adam and K-FAC for each batch size with the Tree-structured Parzen
Estimator (Bergstra et al. 2011): of the trials ``H`` so far, the best fraction ``γ`` gives a
density ``l(x)`` and the rest ``g(x)``, and the next point minimises ``g(x) / l(x)``. Workers on two
supercomputers pulled trials from one MongoDB (HyperOpt). Here Optuna plays both roles: its
``TPESampler`` proposes, an RDB storage holds the study, and every worker process runs

    python -m lbjax.hpo --config=configs/seed002_sgd.py:bs=512 --study=sgd_512 \
        --storage=postgresql://user@dbhost/hpo --trials=100 [--workdir=runs/hpo]

while ``python -m lbjax.hpo report --study=sgd_512,adam_512 --storage=URL [--out=DIR]`` writes the
best trial per optimizer and batch size as a table shaped like Table 1, and Optuna's optimization
history and parameter-importance plots as PNGs.

How a worker runs (``run_worker``):

* The search space is ``config.search_space``: one entry per tuned hyperparameter,
  ``{key: "optimizer.learning_rate", type: float | int | categorical, low, high, log, step,
  choices, label, column}``; ``label`` is its Table 1 column and ``column`` its position in the
  report. ``config.hpo`` holds the search settings (``HPO_DEFAULTS`` lists them).
* Each trial trains ``config`` with the suggested values through the normal train loop
  (``lbjax.train.train_and_evaluate``) in ``WORKDIR/<study>/trial_<n>``, on a validation split
  (``config.hpo.validation_fraction`` or ``config.validation_fraction``, which must be > 0: the
  test split is never the objective). Every evaluation reports the validation accuracy to the
  trial, so the pruner (``config.hpo.pruner``) can stop it. The objective is the best validation
  accuracy of the run.
* Outcomes: completed → ``COMPLETE`` with the objective; stopped by the pruner → ``PRUNED``; a
  non-finite loss → ``PRUNED`` with user attribute ``status = "diverged"`` and ``diverged_step``
  (TPE keeps it as a bad point; it is not a crash); SIGTERM/SIGINT → the run checkpoints, the trial
  is marked ``FAIL`` (``status = "preempted"``) and re-queued, and the worker exits 0. Every trial
  carries ``status``, ``worker`` (host:pid) and ``workdir`` user attributes.
* Heartbeats: the worker records a heartbeat every ``heartbeat_interval`` seconds; a trial whose
  heartbeat is older than ``grace_period`` (its worker was killed) is marked ``FAIL`` by the next
  worker that looks, and ``RetryHeartbeatStaleTrialCallback`` (Optuna ≥ 4.9's name for
  ``RetryFailedTrialCallback``) queues a copy with the same parameters (at most ``max_retry``
  times). The copy runs in the original trial's workdir, so it resumes from the killed run's last
  checkpoint when the worker that picks it up shares the filesystem. A killed worker loses at most
  its current trial's progress since that checkpoint.
* ``--trials=N`` is the study's total, not each worker's: a new trial is created only while fewer
  than N trials are not ``FAIL`` (failed trials are replaced by their retries), under a lock held
  across "count, then create" (a PostgreSQL advisory lock, or a file lock next to a SQLite file),
  so any number of workers stop at exactly N. A worker that finds the budget spent waits while
  other workers' trials are still running, in case one goes stale and needs a retry.
* TPE runs with ``constant_liar=True``: a running trial counts as a bad result when the next point
  is chosen, so parallel workers do not propose the same point (the seed's "avoid the most
  recently proposed hyperparameters" for parallel search).

Storage: ``--storage`` is any SQLAlchemy URL Optuna accepts with SQLite or PostgreSQL;
without it the study lives in ``sqlite:///WORKDIR/hpo.db`` (one host).

References:
  Bergstra, Bardenet, Bengio & Kégl 2011, "Algorithms for Hyper-Parameter Optimization", NIPS.
  Akiba, Sano, Yanase, Ohta & Koyama 2019, "Optuna: A Next-generation Hyperparameter Optimization
  Framework", KDD.
"""

import contextlib
import copy
import fcntl
import math
import os
import shutil
import socket
import sys
import time
from typing import Any, Callable, Iterator, Optional
import warnings
import zlib

from absl import app
from absl import flags
import ml_collections
from ml_collections import config_dict
from ml_collections import config_flags
import optuna
from optuna.trial import TrialState

from lbjax import config_lib
from lbjax import metrics as metrics_lib
from lbjax.errors import ConfigError, check_choice

# ``config.hpo`` keys and their defaults.
HPO_DEFAULTS: dict[str, Any] = {
    "validation_fraction": None,  # overrides config.validation_fraction in trials (None: keep)
    "sampler": "tpe",             # SAMPLERS
    "n_startup_trials": 10,       # random trials before TPE starts modelling
    "seed": None,                 # sampler seed (set it for single-worker reproducibility only)
    "pruner": "none",             # PRUNERS
    "pruner_startup_trials": 5,   # median: trials finished before pruning starts
    "pruner_warmup_steps": 0,     # median: no pruning before this train step
    "heartbeat_interval": 60,     # seconds between a running trial's heartbeats
    "grace_period": 180,          # seconds without heartbeat before a trial is stale
    "max_retry": 3,               # re-runs of a trial whose worker died
    "keep_trial_checkpoints": False,  # keep finished trials' checkpoints (metrics always kept)
    "compilation_cache": "jax_cache",  # launcher: JAX's persistent cache, under WORKDIR ("": off)
}

# Optuna's TPE with constant liar (see the module docstring); random search as a baseline.
SAMPLERS: dict[str, Callable[[dict], optuna.samplers.BaseSampler]] = {
    "tpe": lambda hpo: optuna.samplers.TPESampler(
        n_startup_trials=hpo["n_startup_trials"], seed=hpo["seed"], constant_liar=True),
    "random": lambda hpo: optuna.samplers.RandomSampler(seed=hpo["seed"]),
}

PRUNERS: dict[str, Callable[[dict], optuna.pruners.BasePruner]] = {
    "none": lambda hpo: optuna.pruners.NopPruner(),
    "median": lambda hpo: optuna.pruners.MedianPruner(
        n_startup_trials=hpo["pruner_startup_trials"], n_warmup_steps=hpo["pruner_warmup_steps"]),
}


def _suggest_float(trial, name, entry):
  return trial.suggest_float(name, entry.low, entry.high, log=entry.get("log", False))


def _suggest_int(trial, name, entry):
  return trial.suggest_int(name, entry.low, entry.high, step=entry.get("step", 1),
                           log=entry.get("log", False))


def _suggest_categorical(trial, name, entry):
  return trial.suggest_categorical(name, list(entry.choices))


# Search-space entry types: ``type`` → (required fields, suggest function).
PARAM_TYPES: dict[str, tuple[tuple[str, ...], Callable]] = {
    "float": (("low", "high"), _suggest_float),
    "int": (("low", "high"), _suggest_int),
    "categorical": (("choices",), _suggest_categorical),
}

# Section titles of the report (Table 1's); other optimizers use their registry name.
TITLES = {"sgd": "Momentum SGD", "adam": "Adam", "kfac": "K-FAC"}

# Study user attributes written when a worker creates the study.
_STUDY_CONFIG, _STUDY_COLUMNS = "config", "columns"


def default_config(**overrides) -> ml_collections.ConfigDict:
  """``config.hpo`` with every key of ``HPO_DEFAULTS`` (so each can be set from the command line),
  updated with ``overrides``."""
  c = ml_collections.ConfigDict()
  for key, value in {**HPO_DEFAULTS, **overrides}.items():
    c[key] = value if value is not None else config_dict.placeholder(
        {"validation_fraction": float, "seed": int}[key])
  return c


def settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """``HPO_DEFAULTS`` updated with ``config.hpo``; unknown keys are a ConfigError."""
  hpo = dict(HPO_DEFAULTS)
  for key, value in (config.get("hpo") or {}).items():
    if key not in HPO_DEFAULTS:
      raise ConfigError(f"config.hpo.{key}", f"unknown key; allowed: {', '.join(HPO_DEFAULTS)}")
    hpo[key] = value
  check_choice("config.hpo.sampler", hpo["sampler"], SAMPLERS)
  check_choice("config.hpo.pruner", hpo["pruner"], PRUNERS)
  for key in ("heartbeat_interval", "grace_period"):
    if not isinstance(hpo[key], int) or hpo[key] <= 0:
      raise ConfigError(f"config.hpo.{key}",
                        f"must be a positive integer (seconds), got {hpo[key]!r}")
  if hpo["grace_period"] <= hpo["heartbeat_interval"]:
    raise ConfigError("config.hpo.grace_period",
                      f"must exceed config.hpo.heartbeat_interval ({hpo['heartbeat_interval']} s)")
  return hpo


def _get(config, key: str):
  value = config
  for part in key.split("."):
    value = value[part]
  return value


def _set(config, key: str, value) -> None:
  *path, last = key.split(".")
  target = config
  for part in path:
    target = target[part]
  target[last] = value


def validate_search_space(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError for the first bad entry of ``config.search_space``."""
  space = config.get("search_space")
  if not space:
    raise ConfigError("config.search_space", "the config declares no search space (a ConfigDict "
                      "of {key, type, low, high, log, ...} entries; see configs/seed002_common.py)")
  for name, entry in space.items():
    where = f"config.search_space.{name}"
    if not isinstance(entry, ml_collections.ConfigDict) or "key" not in entry:
      raise ConfigError(where, "must be a ConfigDict with at least `key` and `type`")
    key = entry.key
    if key.split(".")[0] in ("search_space", "hpo"):
      raise ConfigError(f"{where}.key", f"{key!r} is not a training hyperparameter")
    try:
      _get(config, key)
    except (KeyError, AttributeError, TypeError):
      raise ConfigError(f"{where}.key", f"config.{key} does not exist") from None
    check_choice(f"{where}.type", entry.get("type"), PARAM_TYPES)
    for field in PARAM_TYPES[entry.type][0]:
      if entry.get(field) is None:
        raise ConfigError(f"{where}.{field}", f"required for type {entry.type!r}")
    if entry.type == "categorical":
      if not entry.choices:
        raise ConfigError(f"{where}.choices", "must not be empty")
      continue
    if not entry.low <= entry.high:
      raise ConfigError(f"{where}.low", f"low={entry.low} must be <= high={entry.high}")
    if entry.get("log", False) and entry.low <= 0:
      raise ConfigError(f"{where}.low", f"a log-uniform range needs low > 0, got {entry.low}")
    step = entry.get("step", 1)
    if entry.type == "int" and not (isinstance(step, int) and step > 0):
      raise ConfigError(f"{where}.step", f"must be a positive integer, got {step!r}")


def columns(config: ml_collections.ConfigDict) -> list[list[str]]:
  """``[name, label, key]`` of every search-space entry, ordered by the entries' optional
  ``column`` (a ConfigDict sorts its keys), then by name."""
  entries = sorted(config.search_space.items(),
                   key=lambda item: (item[1].get("column", math.inf), item[0]))
  return [[name, e.get("label", name), e.key] for name, e in entries]


def trial_config(config: ml_collections.ConfigDict, params: dict[str, Any]
                 ) -> ml_collections.ConfigDict:
  """``config`` with the search-space ``params`` (by entry name) and the HPO validation split."""
  out = copy.deepcopy(config)
  for name, value in params.items():
    key = config.search_space[name].key
    try:
      _set(out, key, value)
    except (TypeError, ValueError) as e:
      raise ConfigError(f"config.search_space.{name}.type",
                        f"value {value!r} does not fit config.{key}: {e}") from None
  fraction = settings(config)["validation_fraction"]
  if fraction is not None:
    out.validation_fraction = fraction
  if not out.validation_fraction > 0:
    raise ConfigError("config.validation_fraction", "the HPO objective is the validation "
                      "accuracy: set config.validation_fraction or config.hpo.validation_fraction "
                      "> 0 (the test split is never tuned on)")
  out.progress_bar = False  # N workers writing progress bars to log files help no one
  return out


def validate(config: ml_collections.ConfigDict, *, device_count: int) -> None:
  """Checks the search space, the HPO settings and the config at the low end of every range."""
  settings(config)
  validate_search_space(config)
  corner = {name: (e.choices[0] if e.type == "categorical" else e.low)
            for name, e in config.search_space.items()}
  config_lib.validate(trial_config(config, corner), device_count=device_count)


# --- storage, locks ----------------------------------------------------------------------------

def default_storage(workdir: str) -> str:
  return "sqlite:///" + os.path.abspath(os.path.join(workdir, "hpo.db"))


def _parse(url: str):
  import sqlalchemy  # pylint: disable=g-import-not-at-top
  try:
    return sqlalchemy.engine.make_url(url)
  except sqlalchemy.exc.ArgumentError as e:
    raise ConfigError("--storage", f"not a database URL: {url!r} ({e})") from None


def storage_url(url: str) -> str:
  """``url`` with the PostgreSQL driver made explicit: SQLAlchemy 2.1 maps ``postgresql://`` to
  psycopg 3, while requirements.txt pins psycopg2-binary."""
  parsed = _parse(url)
  if parsed.drivername != "postgresql":
    return url
  return parsed.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)


@contextlib.contextmanager
def _sqlite_lock(storage_url: str, study_name: str) -> Iterator[None]:
  """An exclusive ``flock`` on ``<database>.lock``: SQLite studies live on one host."""
  del study_name
  path = _parse(storage_url).database
  if not path or path == ":memory:":
    raise ConfigError("--storage", "an in-memory SQLite database cannot be shared; use a file")
  with open(path + ".lock", "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def _postgresql_lock(storage_url: str, study_name: str) -> Iterator[None]:
  """A session-level advisory lock keyed by the study name; the server drops it if we die."""
  import sqlalchemy  # pylint: disable=g-import-not-at-top
  key = zlib.crc32(f"lbjax.hpo:{study_name}".encode())
  engine = sqlalchemy.create_engine(storage_url, poolclass=sqlalchemy.pool.NullPool)
  try:
    with engine.connect() as conn:
      conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
      try:
        yield
      finally:
        conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
  finally:
    engine.dispose()


# Database backend → the lock that makes "count the trials, then create one" atomic.
LOCKS: dict[str, Callable[[str, str], contextlib.AbstractContextManager]] = {
    "sqlite": _sqlite_lock,
    "postgresql": _postgresql_lock,
}


def budget_lock(storage_url: str) -> Callable[[str, str], contextlib.AbstractContextManager]:
  """The lock of ``storage_url``'s database backend (a ConfigError for an unsupported one)."""
  backend = _parse(storage_url).get_backend_name()
  check_choice("--storage (database backend)", backend, LOCKS)
  return LOCKS[backend]


def open_storage(url: str, hpo: dict[str, Any]) -> optuna.storages.RDBStorage:
  """The RDB storage with heartbeats and retries of stale trials."""
  url = storage_url(url)
  budget_lock(url)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(
        max_retry=hpo["max_retry"], inherit_intermediate_values=True)
    return optuna.storages.RDBStorage(
        url, heartbeat_interval=hpo["heartbeat_interval"],
        grace_period=hpo["grace_period"], heartbeat_stale_trial_callback=retry)


# --- the worker ----------------------------------------------------------------------------------

def _original_number(trial: optuna.Trial) -> int:
  """The number of the first trial of ``trial``'s retry series (its own when not a retry)."""
  frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
  original = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
  return trial.number if original is None else original


def best_validation_accuracy(workdir: str) -> tuple[Optional[float], Optional[int]]:
  """The best ``validation_accuracy`` in ``workdir/metrics.jsonl`` and its step."""
  best = (None, None)
  for record in metrics_lib.read_metrics(workdir):
    acc = record.get("validation_accuracy")
    if acc is not None and (best[0] is None or acc > best[0]):
      best = (acc, record["step"])
  return best


class _Preempted(Exception):
  """The run was stopped by SIGTERM/SIGINT; the trial is re-queued and the worker exits."""

  def __init__(self, number: int, step: int):
    self.number = number
    super().__init__(f"trial {number} preempted at step {step}")


def make_objective(config: ml_collections.ConfigDict, study_dir: str,
                   hpo: dict[str, Any], on_start: Callable[[], None]) -> Callable:
  """The Optuna objective: train one suggested config, return its best validation accuracy."""
  from lbjax import train  # pylint: disable=g-import-not-at-top

  def objective(trial: optuna.Trial) -> float:
    on_start()
    params = {name: PARAM_TYPES[e.type][1](trial, name, e)
              for name, e in config.search_space.items()}
    workdir = os.path.join(study_dir, f"trial_{_original_number(trial)}")
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    trial.set_user_attr("workdir", os.path.abspath(workdir))
    trial.set_user_attr("status", "running")

    def report(step: int, results: dict) -> bool:
      trial.report(results["validation_accuracy"], step)
      return trial.should_prune()

    summary = train.train_and_evaluate(trial_config(config, params), workdir, callback=report)
    status = summary["status"]
    trial.set_user_attr("status", {"stopped": "pruned"}.get(status, status))
    trial.set_user_attr("step", summary["step"])
    if status == "preempted":
      raise _Preempted(trial.number, summary["step"])
    if not hpo["keep_trial_checkpoints"]:
      shutil.rmtree(os.path.join(workdir, "checkpoints"), ignore_errors=True)
    if status == "diverged":
      trial.set_user_attr("diverged_step", summary["step"])
      raise optuna.TrialPruned(f"diverged (non-finite loss) at step {summary['step']}")
    if status == "stopped":
      raise optuna.TrialPruned(f"pruned at step {summary['step']}")
    best, best_step = best_validation_accuracy(workdir)
    trial.set_user_attr("best_step", best_step)
    for key in ("validation_accuracy", "test_accuracy"):
      trial.set_user_attr(f"final_{key}", summary[key])
    return best

  return objective


def load_or_create_study(config: ml_collections.ConfigDict, study_name: str,
                         storage: optuna.storages.BaseStorage, hpo: dict[str, Any]
                         ) -> optuna.Study:
  """The study ``study_name``; refuses one created with a different config."""
  study = optuna.create_study(study_name=study_name, storage=storage, direction="maximize",
                              sampler=SAMPLERS[hpo["sampler"]](hpo),
                              pruner=PRUNERS[hpo["pruner"]](hpo), load_if_exists=True)
  if study.direction != optuna.study.StudyDirection.MAXIMIZE:
    raise ConfigError("--study", f"study {study_name!r} exists and minimizes; use a new --study")
  mine = {k: v for k, v in config_lib.to_dict(config).items() if k != "hpo"}
  saved = study.user_attrs.get(_STUDY_CONFIG)
  if saved is None:
    study.set_user_attr(_STUDY_CONFIG, mine)
    study.set_user_attr(_STUDY_COLUMNS, columns(config))
    study.set_user_attr("optimizer", config.optimizer.name)
    study.set_user_attr("batch_size", config.batch_size)
  else:
    differ = [k for k in config_lib.config_diff(saved, mine)
              if k.removeprefix("config.") not in config_lib.RESUMABLE_KEYS]
    if differ:
      raise ConfigError("--config", f"study {study_name!r} was created with a different config "
                        f"(differs in {', '.join(differ)}); use a new --study")
  return study


def _counts(trials) -> dict[str, int]:
  counts = {"complete": 0, "pruned": 0, "diverged": 0, "failed": 0, "running": 0, "waiting": 0}
  for t in trials:
    if t.state == TrialState.PRUNED and t.user_attrs.get("status") == "diverged":
      counts["diverged"] += 1
    else:
      counts[{TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned",
              TrialState.FAIL: "failed", TrialState.RUNNING: "running",
              TrialState.WAITING: "waiting"}[t.state]] += 1
  return counts


def run_worker(config: ml_collections.ConfigDict, *, study_name: str, trials: int,
               workdir: str, storage: Optional[str] = None) -> dict[str, int]:
  """Runs trials of ``study_name`` until the study holds ``trials`` non-failed trials.

  Returns the study's trial counts by outcome when this worker stops. Raises ConfigError for a
  bad config, search space, storage or study.
  """
  import jax  # pylint: disable=g-import-not-at-top
  if not isinstance(trials, int) or trials <= 0:
    raise ConfigError("--trials", f"must be a positive integer (the study's total), got {trials!r}")
  if not study_name:
    raise ConfigError("--study", "a study name is required")
  validate(config, device_count=jax.device_count())
  hpo = settings(config)
  storage = storage_url(storage or default_storage(workdir))
  lock_factory = budget_lock(storage)
  os.makedirs(workdir, exist_ok=True)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    rdb = open_storage(storage, hpo)
    study = load_or_create_study(config, study_name, rdb, hpo)
    study_dir = os.path.join(workdir, study_name)
    said_waiting = False
    while True:
      lock = contextlib.ExitStack()
      lock.enter_context(lock_factory(storage, study_name))
      try:
        optuna.storages.fail_stale_trials(study)
        counts = _counts(study.get_trials(deepcopy=False))
        if counts["waiting"] == 0 and sum(counts.values()) - counts["failed"] >= trials:
          if counts["running"] == 0:
            break
          lock.close()  # others' trials still run: wait in case one goes stale
          if not said_waiting:
            print(f"lbjax.hpo: all {trials} trials taken; waiting for {counts['running']} "
                  "running trial(s) of other workers", flush=True)
            said_waiting = True
          time.sleep(min(hpo["heartbeat_interval"], 10))
          continue
        # ``optimize`` fails stale trials, asks (pops a queued retry first), runs the objective
        # under a heartbeat and tells the outcome; the objective releases the lock first.
        study.optimize(make_objective(config, study_dir, hpo, on_start=lock.close), n_trials=1)
      except _Preempted as e:
        frozen = next(t for t in study.get_trials() if t.number == e.number)
        rdb.get_heartbeat_stale_trial_callback()(study, frozen)  # FAIL → re-queued copy
        print(f"lbjax.hpo: {e}; re-queued, exiting", flush=True)
        break
      finally:
        lock.close()
  return _counts(study.get_trials(deepcopy=False))


# --- the report ----------------------------------------------------------------------------------

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
          "batch_size": attrs.get("batch_size", 0), "columns": attrs.get(_STUDY_COLUMNS, []),
          "best": best, "counts": _counts(trials)}


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


def _save_plots(study: optuna.Study, out_dir: str) -> list[str]:
  """Optimization history and parameter importances of ``study`` as PNGs; notes for the rest."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
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


def report(storage: str, study_names: Optional[list[str]] = None, out_dir: str = "hpo_report"
           ) -> tuple[str, list[dict[str, Any]]]:
  """Writes ``out_dir/hpo_report.md`` and the plots; returns the markdown and the rows."""
  storage = storage_url(storage)
  shown = _parse(storage).render_as_string(hide_password=True)
  database = _parse(storage).database
  if _parse(storage).get_backend_name() == "sqlite" and not os.path.exists(database or ""):
    raise ConfigError("--storage", f"{shown}: no such database file")
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    names = study_names or optuna.study.get_all_study_names(storage)
    known = set(optuna.study.get_all_study_names(storage))
    for name in names:
      if name not in known:
        raise ConfigError("--study", f"no study {name!r} in {shown}; it has: "
                          f"{', '.join(sorted(known)) or 'none'}")
    os.makedirs(out_dir, exist_ok=True)
    studies = [optuna.load_study(study_name=n, storage=storage) for n in names]
    rows = [summarize(s) for s in studies]
    notes = [n for s in studies for n in _save_plots(s, out_dir)]
  text = "## TPE search results (seed 002 Table 1)\n\n" + table(rows)
  if notes:
    text += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
  with open(os.path.join(out_dir, "hpo_report.md"), "w") as f:
    f.write(text)
  return text, rows


# --- launcher -----------------------------------------------------------------------------------

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The launcher's flags (defined only when run as ``python -m lbjax.hpo``: configs import this
  module for ``default_config`` inside other launchers)."""
  config_flags.DEFINE_config_file("config", None, "Config file with a search_space "
                                  "(e.g. configs/seed002_sgd.py:bs=512).", lock_config=True)
  flags.DEFINE_string("study", None, "Study name (report: comma-separated names; default: all).")
  flags.DEFINE_string("storage", None, "Optuna RDB URL: postgresql://user@host/db or "
                      "sqlite:///path.db (default: sqlite:///WORKDIR/hpo.db).")
  flags.DEFINE_integer("trials", None, "Total trials of the study, over all workers.")
  flags.DEFINE_string("workdir", "runs/hpo", "Trial workdirs go to WORKDIR/<study>/trial_<n>.")
  flags.DEFINE_string("out", None, "report: output directory (default: WORKDIR/report).")


def enable_compilation_cache(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Points JAX's persistent compilation cache at ``config.hpo.compilation_cache``.

  Trials recompile the same model initialisation and evaluation step (their HLO does not depend
  on the hyperparameters); the cache shares them between trials and workers. Set once per process
  before anything compiles, so only the launcher calls it.
  """
  cache = settings(config)["compilation_cache"]
  if cache:
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update("jax_compilation_cache_dir", os.path.abspath(os.path.join(workdir, cache)))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def main(argv):
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)
  command = argv[1:]
  try:
    storage = FLAGS.storage or default_storage(FLAGS.workdir)
    if command == ["report"]:
      names = [n for n in (FLAGS.study or "").split(",") if n] or None
      text, _ = report(storage, names, FLAGS.out or os.path.join(FLAGS.workdir, "report"))
      print(text, flush=True)
      return
    if command:
      raise app.UsageError(f"unknown command {' '.join(command)!r}; the only one is `report`")
    if FLAGS.config is None:
      raise ConfigError("--config", "a config file with a search_space is required")
    if FLAGS.trials is None:
      raise ConfigError("--trials", "required: the study's total number of trials")
    enable_compilation_cache(FLAGS.config, FLAGS.workdir)
    counts = run_worker(FLAGS.config, study_name=FLAGS.study, trials=FLAGS.trials,
                        workdir=FLAGS.workdir, storage=storage)
  except ConfigError as e:
    sys.exit(f"lbjax: error: {e}")
  print(f"lbjax.hpo: study {FLAGS.study}: " + ", ".join(f"{v} {k}" for k, v in counts.items()),
        flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)
