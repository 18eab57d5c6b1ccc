"""The worker: runs trials of a study, each a normal run of the suggested config.

How a worker runs (`run_worker`):

* Each trial trains ``config`` with the suggested values through `lbjax.runners.run` (a normal
  run, or SWAP where the config enables it) in ``WORKDIR/<study>/trial_<n>``, on a validation
  split (``config.hpo.validation_fraction`` or ``config.validation_fraction``, which must be > 0:
  the test split is never the objective). Every evaluation reports the validation accuracy to the
  trial, so the pruner (``config.hpo.pruner``) can stop it. The objective is the validation
  accuracy of the model the run reports as its result (``result_validation_accuracy``: the trained
  weights, the SWA average with ``config.swa.enabled``, the SWAP average).
* A trial tunes exactly the keys its search space names (`lbjax.hpo.space`); with SWAP, phase 2
  runs ``config.swap.*`` (its optimizer, schedule, batch, length), so a space that names no
  ``swap.*`` key leaves phase 2 at the config's values in every trial (the worker says so).
* Outcomes: completed → ``COMPLETE`` with the objective; stopped by the pruner → ``PRUNED``; a
  non-finite loss → ``PRUNED`` with user attribute ``status = "diverged"`` and ``diverged_step``
  (TPE keeps it as a bad point; it is not a crash); SIGTERM/SIGINT → the run checkpoints, the
  trial is marked ``FAIL`` (``status = "preempted"``) and re-queued, and the worker exits 0.
  With ``config.hpo.keep_trial_checkpoints=False`` (the default) a trial that ends any other way
  loses its checkpoints, every phase's (`remove_checkpoints`); its metrics stay.
  Every trial carries ``status``, ``worker`` (host:pid) and ``workdir`` user attributes.
* A trial whose workdir another live process holds (`lbjax.workdir.WorkdirLock`) is skipped:
  marked ``FAIL`` with ``status = "workdir in use"``, a line printed, and the worker goes on (a
  new trial takes its place in the budget).
* Heartbeats: the worker records a heartbeat every ``heartbeat_interval`` seconds; a trial whose
  heartbeat is older than ``grace_period`` (its worker was killed) is marked ``FAIL`` by the next
  worker that looks, and ``RetryHeartbeatStaleTrialCallback`` (Optuna ≥ 4.9's name for
  ``RetryFailedTrialCallback``) queues a copy with the same parameters (at most ``max_retry``
  times). The copy runs in the original trial's workdir, so it resumes from the killed run's last
  checkpoint when the worker that picks it up shares the filesystem. A killed worker loses at most
  its current trial's progress since that checkpoint.
* ``--trials=N`` is the study's total, not each worker's: a new trial is created only while fewer
  than N trials are not ``FAIL`` (failed trials are replaced by their retries), under a lock held
  across "count, then create" (`lbjax.hpo.storage.budget_lock`), so any number of workers stop at
  exactly N. A worker that finds the budget spent waits while other workers' trials are still
  running, in case one goes stale and needs a retry.
* The study database restarts: storage calls retry for ``config.hpo.reconnect_seconds``
  (`lbjax.hpo.storage.ReconnectingRDBStorage`), so the trial in flight goes on; a budget section
  that lost its connection is redone whole once the database answers.
* Parallel proposals: TPE runs with Optuna's ``constant_liar=True``: while a trial runs, the
  sampler counts it as the worst value, so a second worker does not propose the same point.
  This is Optuna's rule, not the seed's: seed 002 §4 (with HyperOpt) builds ``l(x)`` and ``g(x)``
  from a random subset of the past trials ``H`` and avoids the point proposed just before. Trials
  are not subsampled here.

References:
  Bergstra, Bardenet, Bengio & Kégl 2011, "Algorithms for Hyper-Parameter Optimization", NIPS.
  Akiba, Sano, Yanase, Ohta & Koyama 2019, "Optuna: A Next-generation Hyperparameter Optimization
  Framework", KDD.
"""

from collections.abc import Callable
import contextlib
import os
import shutil
import socket
import time
from typing import Any
import warnings

import jax
import ml_collections
import optuna
from optuna.trial import TrialState

from lbjax import config_lib
from lbjax import runners
from lbjax import workdir as workdir_lib
from lbjax.errors import ConfigError
from lbjax.hpo import hosts
from lbjax.hpo import space
from lbjax.hpo import storage as storage_lib
from lbjax.workdir import WorkdirInUse

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
    "threshold": lambda hpo: optuna.pruners.ThresholdPruner(
        lower=hpo["pruner_threshold"], n_warmup_steps=hpo["pruner_warmup_steps"]),
}

# Search-space entry type → how a trial suggests its value.
SUGGEST: dict[str, Callable[[optuna.Trial, str, ml_collections.ConfigDict], Any]] = {
    "float": lambda trial, name, e: trial.suggest_float(name, e.low, e.high,
                                                        log=e.get("log", False)),
    "int": lambda trial, name, e: trial.suggest_int(name, e.low, e.high, step=e.get("step", 1),
                                                    log=e.get("log", False)),
    "categorical": lambda trial, name, e: trial.suggest_categorical(name, list(e.choices)),
}

# Study user attributes written when a worker creates the study.
STUDY_CONFIG, STUDY_COLUMNS = "config", "columns"


def validate(config: ml_collections.ConfigDict, *, device_count: int) -> None:
  """Checks the search space, the HPO settings and the config at the low end of every range."""
  space.settings(config)
  space.validate_search_space(config)
  runners.validate(space.trial_config(config, space.corner(config)), device_count=device_count)


def _original_number(trial: optuna.Trial) -> int:
  """The number of the first trial of ``trial``'s retry series (its own when not a retry)."""
  frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
  original = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
  return trial.number if original is None else original


class _Preempted(Exception):
  """The run was stopped by SIGTERM/SIGINT; the trial is re-queued and the worker exits."""

  def __init__(self, number: int, step: int):
    self.number = number
    super().__init__(f"trial {number} preempted at step {step}")


class _InUse(Exception):
  """The trial's workdir is held by another live process; the trial is marked FAIL (a new one
  takes its place in the budget) and the worker goes on."""

  def __init__(self, number: int, message: str):
    self.number = number
    super().__init__(f"trial {number} skipped: its workdir is {message}")


def remove_checkpoints(workdir: str) -> None:
  """Removes every checkpoint directory of the finished trial in ``workdir``: a normal run's
  ``checkpoints/``, SWAP's ``phase1/checkpoints``, ``phase2/checkpoints`` and
  ``phase3/checkpoints`` (and a phase directory that held nothing else); configs, statuses and
  metrics stay."""
  for root, dirs, _ in os.walk(workdir):
    if "checkpoints" in dirs:
      dirs.remove("checkpoints")
      shutil.rmtree(os.path.join(root, "checkpoints"), ignore_errors=True)
      if root != workdir and not os.listdir(root):
        os.rmdir(root)


def make_objective(config: ml_collections.ConfigDict, study_dir: str,
                   hpo: dict[str, Any], on_start: Callable[[], None]) -> Callable:
  """The Optuna objective: train one suggested config, return the validation accuracy of the
  run's result."""

  def objective(trial: optuna.Trial) -> float:
    on_start()
    params = {name: SUGGEST[e.type](trial, name, e) for name, e in config.search_space.items()}
    workdir = os.path.join(study_dir, f"trial_{_original_number(trial)}")
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    trial.set_user_attr("workdir", os.path.abspath(workdir))
    trial.set_user_attr("status", "running")

    def report(step: int, results: dict) -> bool:
      trial.report(results["validation_accuracy"], step)
      return trial.should_prune()

    if jax.process_count() > 1:  # every process trains the trial (`lbjax.hpo.hosts`)
      holder = workdir_lib.in_use(workdir)
      hosts.share({"params": params, "workdir": workdir, "skip": holder is not None})
      if holder is not None:
        trial.set_user_attr("status", "workdir in use")
        raise _InUse(trial.number, f"held by {holder}")
    try:
      summary = runners.run(space.trial_config(config, params), workdir, callback=report)
    except WorkdirInUse as e:  # another live process trains this trial's workdir: skip it
      trial.set_user_attr("status", "workdir in use")
      raise _InUse(trial.number, e.message) from None
    status = summary["status"]
    trial.set_user_attr("status", {"stopped": "pruned"}.get(status, status))
    trial.set_user_attr("step", summary["step"])
    if status == "preempted":
      raise _Preempted(trial.number, summary["step"])
    if not hpo["keep_trial_checkpoints"]:
      remove_checkpoints(workdir)
    if status == "diverged":
      trial.set_user_attr("diverged_step", summary["step"])
      raise optuna.TrialPruned(f"diverged (non-finite loss) at step {summary['step']}")
    if status == "stopped":
      raise optuna.TrialPruned(f"pruned at step {summary['step']}")
    for key in ("result_validation_accuracy", "result_test_accuracy"):
      trial.set_user_attr(key, summary[key])
    return summary["result_validation_accuracy"]

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
  saved = study.user_attrs.get(STUDY_CONFIG)
  if saved is None:
    study.set_user_attr(STUDY_CONFIG, mine)
    study.set_user_attr(STUDY_COLUMNS, space.columns(config))
    study.set_user_attr("optimizer", config.optimizer.name)
    study.set_user_attr("batch_size", config.batch_size)
  else:
    differ = [k for k in config_lib.config_diff(saved, mine)
              if k.removeprefix("config.") not in config_lib.RESUMABLE_KEYS]
    if differ:
      raise ConfigError("--config", f"study {study_name!r} was created with a different config "
                        f"(differs in {', '.join(differ)}); use a new --study")
  return study


def counts(trials) -> dict[str, int]:
  """Trials by outcome: complete, pruned, diverged, failed, running, waiting."""
  out = {"complete": 0, "pruned": 0, "diverged": 0, "failed": 0, "running": 0, "waiting": 0}
  for t in trials:
    if t.state == TrialState.PRUNED and t.user_attrs.get("status") == "diverged":
      out["diverged"] += 1
    else:
      out[{TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned",
           TrialState.FAIL: "failed", TrialState.RUNNING: "running",
           TrialState.WAITING: "waiting"}[t.state]] += 1
  return out


def run_worker(config: ml_collections.ConfigDict, *, study_name: str, trials: int,
               workdir: str, storage: str | None = None) -> dict[str, int]:
  """Runs trials of ``study_name`` until the study holds ``trials`` non-failed trials.

  Returns the study's trial counts by outcome when this worker stops. Raises ConfigError for a
  bad config, search space, storage or study, for a database it cannot connect to, and for one
  lost for longer than ``config.hpo.reconnect_seconds``.
  """
  if not isinstance(trials, int) or trials <= 0:
    raise ConfigError("--trials", f"must be a positive integer (the study's total), got {trials!r}")
  if not study_name:
    raise ConfigError("--study", "a study name is required")
  validate(config, device_count=jax.device_count())
  note = space.untuned_phase2_note(config)
  if note:
    print(f"lbjax.hpo: note: {note}", flush=True)
  hpo = space.settings(config)
  url = storage or storage_lib.default_storage(workdir)
  lock_factory = storage_lib.budget_lock(url)
  os.makedirs(workdir, exist_ok=True)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    rdb = storage_lib.open_storage(url, hpo)
    study = load_or_create_study(config, study_name, rdb, hpo)
    study_dir = os.path.join(workdir, study_name)
    said_waiting = False
    while True:
      # The budget section: the lock, and no storage retries inside (a retried create after the
      # server dropped the lock could exceed the budget); the objective closes it when it starts.
      section = contextlib.ExitStack()
      try:
        section.enter_context(lock_factory(url, study_name))
        section.enter_context(rdb.no_reconnect())
        optuna.storages.fail_stale_trials(study)
        now = counts(study.get_trials(deepcopy=False))
        if now["waiting"] == 0 and sum(now.values()) - now["failed"] >= trials:
          if now["running"] == 0:
            break
          section.close()  # others' trials still run: wait in case one goes stale
          if not said_waiting:
            print(f"lbjax.hpo: all {trials} trials taken; waiting for {now['running']} "
                  "running trial(s) of other workers", flush=True)
            said_waiting = True
          time.sleep(min(hpo["heartbeat_interval"], 10))
          continue
        # ``optimize`` fails stale trials, asks (pops a queued retry first), runs the objective
        # under a heartbeat and tells the outcome; the objective closes the section first.
        study.optimize(make_objective(config, study_dir, hpo, on_start=section.close),
                       n_trials=1)
      except _InUse as e:
        print(f"lbjax.hpo: {e}", flush=True)
      except _Preempted as e:
        frozen = next(t for t in study.get_trials() if t.number == e.number)
        rdb.get_heartbeat_stale_trial_callback()(study, frozen)  # FAIL → re-queued copy
        print(f"lbjax.hpo: {e}; re-queued, exiting", flush=True)
        break
      except Exception as e:  # pylint: disable=broad-except
        if not storage_lib.is_connection_error(e):
          raise
        section.close()
        storage_lib.wait_for_database(url, hpo["reconnect_seconds"], e)  # or a ConfigError
      finally:
        section.close()
  return counts(study.get_trials(deepcopy=False))
