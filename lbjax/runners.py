"""The one entry point of a run: picks the runner of a config (normal run or SWAP).

`run(config, workdir, callback)` is what the launcher, the sweep runner and HPO trials call; the
summary it returns carries ``status``, ``step``, ``test_accuracy`` and ``result_test_accuracy``
(and ``result_validation_accuracy`` when a validation split exists): the accuracy of the model
the run reports as its result (the trained weights, the SWA average with ``config.swa.enabled``,
the SWAP average with ``config.swap``). ``callback(step, metrics)`` runs at every evaluation of
every runner, with increasing steps, and may stop the run (`lbjax.loop.run`).
"""

from collections.abc import Callable
import contextlib
import os
from typing import Any

import jax
import ml_collections

from lbjax import checkpoint as checkpoint_lib
from lbjax import config_lib
from lbjax import metrics as metrics_lib
from lbjax import swap
from lbjax import train
from lbjax import workdir as workdir_lib
from lbjax.errors import ConfigError


def validate(config: ml_collections.ConfigDict, *, device_count: int, process_count: int = 1
             ) -> None:
  """Raises ConfigError for a bad config, checked by the runner that will run it."""
  if swap.enabled(config):
    swap.validate(config, device_count=device_count, process_count=process_count)
  else:
    config_lib.validate(config, device_count=device_count, process_count=process_count)


def report_unfinished(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Says so when the previous run in ``workdir`` died without a final status (``running``)."""
  dirs = [workdir] + ([os.path.join(workdir, "phase1")] if swap.enabled(config) else [])
  for path in dirs:
    status = metrics_lib.read_status(path)
    if status is not None and status.get("status") == "running":
      print(f"lbjax: the previous run in {path} ended without a status at step "
            f"\N{GREATER-THAN OR EQUAL TO} {status['step']}; resuming", flush=True)
      return


def run(config: ml_collections.ConfigDict, workdir: str,
        callback: Callable[[int, dict], bool] | None = None) -> dict[str, Any]:
  """Runs ``config`` in ``workdir`` as its one owner.

  The config and the workdir are checked first (nothing is written); then the process that
  writes the workdir (process 0) takes its lock (`lbjax.workdir.WorkdirLock`) for the whole run,
  SWAP's phase 1 in ``WORKDIR/phase1`` included, before anything is written.

  Raises:
    ConfigError: a bad config or workdir; `lbjax.workdir.WorkdirInUse` if another live process
      holds the workdir.
    lbjax.workdir.WriteFailure: a storage error while writing the run's files (``status.json``
      then says ``failed``; the newest complete checkpoint is untouched).
  """
  validate(config, device_count=jax.device_count(), process_count=jax.process_count())
  config_lib.check_workdir(config, workdir)
  primary = jax.process_index() == 0  # the other processes of a multi-host run write no files
  lock = workdir_lib.WorkdirLock(workdir)
  created = [p for p in (workdir, lock.path) if not os.path.exists(p)]
  if primary:
    with workdir_lib.writing(f"the lock file in {workdir}"):
      lock.acquire()
  try:
    report_unfinished(config, workdir)
    try:
      if swap.enabled(config):
        return swap.run(config, workdir, callback=callback)
      return train.train_and_evaluate(config, workdir, callback=callback)
    except Exception as e:  # storage errors end in one line; others propagate
      failure = e if isinstance(e, workdir_lib.WriteFailure) else None
      if failure is None:
        reason = workdir_lib.classify(e)
        if reason is None:
          raise
        failure = workdir_lib.WriteFailure(f"files in {workdir}", reason)
        failure.checkpoint_step = _complete_step(config, workdir)
      if primary and failure.workdir != workdir:  # e.g. SWAP's phase 1: the outer status too
        _record_failure(workdir, failure)
      if failure is e:
        raise
      raise failure from e
  except ConfigError:
    # Bad input found by the runner itself (e.g. no CIFAR-10 in config.data_dir) before it
    # wrote anything: leave the workdir as it was, without the lock file this call created.
    if primary:
      for path in reversed(created):
        with contextlib.suppress(OSError):
          os.unlink(path) if path == lock.path else os.rmdir(path)
    raise
  finally:
    lock.release()


def _complete_step(config: ml_collections.ConfigDict, workdir: str) -> int | None:
  """The newest complete checkpoint of the run in ``workdir`` (SWAP: of phase 2, else 1)."""
  dirs = ([os.path.join(workdir, "phase2", "checkpoints"),
           os.path.join(workdir, "phase1", "checkpoints")] if swap.enabled(config)
          else [os.path.join(workdir, "checkpoints")])
  for path in dirs:
    steps = checkpoint_lib.finished_steps(path)
    if steps:
      return steps[-1]
  return None


def _record_failure(workdir: str, failure: workdir_lib.WriteFailure) -> None:
  """``status.json`` = ``failed`` in ``workdir``, or the reason it could not be written."""
  previous = metrics_lib.read_status(workdir) or {}
  try:
    metrics_lib.write_status(workdir, "failed", failure.step or previous.get("step", 0),
                             **{k: v for k, v in previous.items() if k not in ("status", "step")},
                             error=str(failure), checkpoint_step=failure.checkpoint_step)
  except workdir_lib.WriteFailure as e:
    failure.status_error = failure.status_error or e.reason
  failure.recorded = True
  failure.workdir = failure.workdir or workdir
