"""The one training loop: a normal run, each SWAP phase and every HPO trial run through `run`.

A runner (`lbjax.train`, `lbjax.swap`) builds its step and hands the loop an iterator that takes
one step per ``next()`` and yields that step's metrics (on device). The loop does the rest, the
same way for every runner:

* **preemption**: SIGTERM/SIGINT set a flag (`Preemption`) that is read *once* per step, so a
  signal arriving mid-step is acted on at the next step, with its checkpoint;
* **metric flush**: per-step metrics stay on device until a log, checkpoint or evaluation step,
  then their window means are written (``train_`` prefix) in one place, `Recorder.write_metrics`;
* **divergence**: the first step with a non-finite loss or weight norm ends the run (``diverged``);
* **checkpoint cadence**: every ``config.checkpoint_every_steps``, at the end, at a preemption and
  when the callback stops the run, through `Recorder.save`;
* **progress bar** (``config.progress_bar``) and ``status.json`` (`Recorder.write_status`);
* **evaluation callback**: every ``config.eval_every_epochs`` the runner's ``evaluate(step)`` runs
  and ``callback(step_offset + step, metrics)`` may stop the run (HPO pruning, SWAP's phase-1
  threshold). ``step_offset`` keeps the reported steps increasing across SWAP's phases.
"""

from collections.abc import Callable, Iterator
import contextlib
import os
import signal
import time
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from lbjax import checkpoint as checkpoint_lib
from lbjax import metrics as metrics_lib
from lbjax import noise_scale as noise_scale_lib
from lbjax import workdir as workdir_lib

Callback = Callable[[int, dict], bool]


class Preemption:
  """Turns SIGTERM/SIGINT into a flag the loop checks between steps (then save and exit)."""

  def __init__(self):
    self.requested = False
    self._old = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._old[sig] = signal.signal(sig, self._handler)
      except ValueError:  # not the main thread
        pass
    return self

  def _handler(self, signum, frame):
    del frame
    logging.warning("received signal %d: checkpointing and exiting", signum)
    self.requested = True

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)


class Recorder:
  """A run directory's files, each written in one place: ``metrics.jsonl`` (`write_metrics`),
  ``status.json`` (`write_status`) and the checkpoints (`save`, `restore`).

  Only the primary process writes metrics and status; every process takes part in checkpoints
  (orbax coordinates them). ``status_fields`` are added to every status (SWAP's ``phase``).

  Every status carries ``checkpoint_step``, the newest checkpoint known complete: once a
  ``running`` status has been written, each `save` rewrites it with the step reached and the
  checkpoint before (a save is asynchronous; it is known complete when the next one starts).

  A storage error of any of these writes (full disk, quota, permissions, read-only, I/O) ends
  here: the checkpointer is shut down without touching the complete checkpoints, ``status.json``
  becomes ``failed`` with the ``error`` and ``checkpoint_step``, and a
  `lbjax.workdir.WriteFailure` carrying them is raised for the launcher's one line. Other files
  of the run (SWAP's phase-3 model) are written under `writing` to end the same way.
  """

  def __init__(self, workdir: str, *, keep: int, checkpoint_dir: str | None = None,
               primary: bool | None = None, async_save: bool = True, **status_fields):
    self.workdir = workdir
    self.primary = jax.process_index() == 0 if primary is None else primary
    self.status_fields = status_fields
    self.checkpoint_step: int | None = None  # newest checkpoint known complete
    self._pending: int | None = None  # a save that may still be writing
    self._step = 0  # the step the run has reached
    self._running: dict | None = None  # the fields of the last ``running`` status
    self.checkpointer = None
    self.writer = None
    ckpt_dir = checkpoint_dir or os.path.join(workdir, "checkpoints")
    with self.writing(f"checkpoints in {ckpt_dir}"):
      os.makedirs(workdir, exist_ok=True)
      self.checkpointer = checkpoint_lib.Checkpointer(ckpt_dir, keep=keep, async_save=async_save)
    with self.writing(f"TensorBoard events in {workdir}"):
      self.writer = metrics_lib.MetricWriter(workdir, enabled=self.primary)

  @contextlib.contextmanager
  def writing(self, what: str):
    """`lbjax.workdir.writing` (``what``: the file being written), then `fail` on a storage
    error."""
    try:
      with workdir_lib.writing(what):
        yield
    except workdir_lib.WriteFailure as e:
      self.fail(e)
      raise

  def fail(self, error: workdir_lib.WriteFailure) -> None:
    """Ends the run on a storage error: waits out (or drops) a save still writing, then writes
    ``status.json`` = ``failed``; records in ``error`` the newest complete checkpoint and, if
    the status could not be written, why."""
    if error.recorded:
      return
    error.recorded, error.workdir = True, self.workdir
    if self.checkpointer is not None:
      try:
        self.checkpointer.close()  # an unfinished save stays a temporary directory
      except Exception:  # noqa: BLE001, S110  (already failing: the first error is reported)
        pass
      done = self.checkpointer.complete_steps()
      error.checkpoint_step = done[-1] if done else None
    if self.writer is not None:
      try:
        self.writer.close()
      except Exception:  # noqa: BLE001, S110
        pass
    error.step = self._step
    if self.primary:
      try:
        metrics_lib.write_status(self.workdir, "failed", self._step,
                                 **{**self.status_fields, **(self._running or {}),
                                    "error": str(error), "checkpoint_step": error.checkpoint_step})
      except workdir_lib.WriteFailure as e:
        error.status_error = e.reason

  def write_config(self, config: ml_collections.ConfigDict) -> None:
    if self.primary:
      path = os.path.join(self.workdir, "config.json")
      with self.writing(f"config in {path}"), open(path, "w") as f:
        f.write(config.to_json(indent=1))

  def restore(self, template) -> tuple[int | None, Any]:
    """The latest readable checkpoint (or ``(None, template)``); later metric records, written
    by a run killed before its next checkpoint, are dropped (this run writes them again)."""
    restored_step, tree = self.checkpointer.restore_latest(template)
    self.checkpoint_step = restored_step
    self._step = restored_step or 0
    with self.writing("metrics"):
      self.writer.truncate_after(restored_step or 0)
    return restored_step, tree

  def save(self, step: int, tree) -> None:
    self._step = step
    where = self.checkpointer.directory
    if self._pending is not None:  # an error of the previous asynchronous save surfaces here
      with self.writing(f"checkpoint step {self._pending} in {where}"):
        self.checkpointer.wait()
      self.checkpoint_step, self._pending = self._pending, None
    with self.writing(f"checkpoint step {step} in {where}"):
      self.checkpointer.save(step, tree)
    self._pending = step
    if self._running is not None:
      self.write_status("running", step, **self._running)

  def write_metrics(self, step: int, metrics: dict, prefix: str = "") -> None:
    self._step = max(self._step, step)
    with self.writing("metrics"):
      self.writer.write(step, metrics, prefix=prefix)

  def write_status(self, status: str, step: int, **fields) -> None:
    if status == "running":
      self._running = fields
    if self.primary:
      with self.writing("status"):
        metrics_lib.write_status(self.workdir, status, step,
                                 **{**self.status_fields, **fields,
                                    "checkpoint_step": self.checkpoint_step})

  def close(self) -> None:
    where = self.checkpointer.directory
    what = (f"checkpoint step {self._pending} in {where}" if self._pending is not None
            else f"checkpoints in {where}")
    with self.writing(what):
      self.checkpointer.close()
    if self._pending is not None:
      self.checkpoint_step, self._pending = self._pending, None
    with self.writing("TensorBoard events"):
      self.writer.close()


def run(rec: Recorder, config: ml_collections.ConfigDict, *, start: int, total_steps: int,
        steps: Iterator[Any], host_state: Callable[[], Any], evaluate: Callable[[int], dict],
        steps_per_epoch: float, examples_per_step: int, num_replicas: int = 1,
        callback: Callback | None = None, step_offset: int = 0,
        noise_scale: tuple[int, int] | None = None) -> tuple[str, int]:
  """Runs ``steps`` from ``start`` to ``total_steps``; returns ``(status, step)``.

  Args:
    rec: the run directory (metrics, status, checkpoints).
    config: the run's config (log, evaluation and checkpoint cadence, progress bar).
    start: the step the state is at.
    total_steps: the step to stop at.
    steps: each ``next()`` takes one step and yields its metrics (a dict of device arrays whose
      leading axis is ``num_replicas`` times any number of identical copies, e.g. devices).
    host_state: the current state as a host tree, for a checkpoint.
    evaluate: ``evaluate(step) -> {"test_accuracy": ..., ...}`` at an intermediate evaluation;
      the loop writes the results.
    steps_per_epoch: for the ``epoch`` of every record and the evaluation cadence.
    examples_per_step: images one step trains on (all replicas), for ``images_per_sec``.
    num_replicas: replicas trained by one step (SWAP); their accuracies are also written
      one by one (``train_replica_accuracy``).
    callback: ``callback(step_offset + step, metrics)`` after every intermediate evaluation, with
      the evaluation's and the last logging window's metrics (``train_accuracy``, ...); a true
      return saves a checkpoint and ends the run with status ``stopped``.
    step_offset: added to the steps the callback sees.
    noise_scale: ``(b_small, b_big)`` when the step records ``grad_sq_small`` and
      ``grad_sq_big`` (``config.log_noise_scale``, `lbjax.step.Experiment.noise_scale_batches`).
      Each flush then updates a `lbjax.noise_scale.NoiseScaleEMA` (decay
      ``config.noise_scale_decay`` per window) with the window means and writes its B_simple as
      ``train_noise_scale``; the moving averages start from a replay of ``metrics.jsonl``'s
      windows, so a resumed run continues them. With replicas (SWAP) the window means, and so
      the one B_simple, are over all replicas.

  Returns:
    ``status`` is ``completed``, ``diverged`` (``step``: the first non-finite step),
    ``preempted`` or ``stopped``.
  """
  eval_every = max(1, round(config.eval_every_epochs * steps_per_epoch))
  pending: list[Any] = []
  last_train: dict[str, float] = {}
  clock = {"time": time.time(), "step": start}
  decay = config.get("noise_scale_decay", 0.9)
  ema = None  # the windows logged before a resume (metrics.jsonl was truncated to `start`)
  if noise_scale is not None:
    ema = noise_scale_lib.NoiseScaleEMA.replay(metrics_lib.read_metrics(rec.workdir),
                                               *noise_scale, decay=decay)

  def flush(step: int) -> int | None:
    """Writes the window means of the pending metrics; returns the first non-finite step."""
    nonlocal pending, ema
    if not pending:
      return None
    rows = {k: np.stack([np.asarray(m[k]).reshape(num_replicas, -1) for m in jax.device_get(
        pending)]) for k in pending[0]}  # [steps, replicas, copies]
    first = step - len(pending) + 1
    pending = []
    finite = rows.pop("finite").all(axis=(1, 2))
    if not finite.all():
      bad = first + int(np.argmin(finite))
      rec.write_metrics(bad, {"loss": float(np.mean(rows["loss"][bad - first])), "diverged": 1})
      return bad
    means = {k: float(np.mean(v)) for k, v in rows.items()}
    if num_replicas > 1:
      means["replica_accuracy"] = rows["accuracy"].mean(axis=(0, 2)).tolist()
    now = time.time()
    means["images_per_sec"] = ((step - clock["step"]) * examples_per_step
                               / max(now - clock["time"], 1e-9))
    means["epoch"] = step / steps_per_epoch
    if noise_scale is not None:  # McCandlish et al. 2018 App. A.1, averaged across windows
      ema = ema.update(means["grad_sq_small"], means["grad_sq_big"], *noise_scale, decay=decay)
      means["noise_scale"] = ema.b_simple
    rec.write_metrics(step, means, prefix="train_")
    last_train.update({f"train_{k}": v for k, v in means.items()})
    clock.update(time=now, step=step)
    return None

  progress = None
  if config.progress_bar and rec.primary and start < total_steps:
    progress = tqdm(total=total_steps, initial=start, unit="step", dynamic_ncols=True,
                    mininterval=2.0)
  status, step = "completed", start
  with Preemption() as preemption:
    for step, metrics in zip(range(start + 1, total_steps + 1), steps):
      pending.append(metrics)
      if progress is not None:
        progress.update(1)
      is_last = step == total_steps
      # Read the flag once: a signal arriving later in this iteration is handled at the next
      # step, so a preemption never breaks out without the save that goes with it.
      preempted = preemption.requested and not is_last
      save = step % config.checkpoint_every_steps == 0 or is_last or preempted
      evaluate_now = step % eval_every == 0 and not is_last
      if step % config.log_every_steps == 0 or save or step % eval_every == 0:
        bad_step = flush(step)
        if bad_step is not None:
          status, step = "diverged", bad_step
          break
      stop = False
      if evaluate_now:
        results = evaluate(step)
        rec.write_metrics(step, {**results, "epoch": step / steps_per_epoch})
        stop = callback is not None and bool(callback(step_offset + step,
                                                      {**last_train, **results}))
      if save or stop:
        rec.save(step, host_state())
      if preempted:
        status = "preempted"
        break
      if stop:
        status = "stopped"
        break
  if progress is not None:
    progress.close()
  return status, step


def print_outcome(status: str, step: int, what: str = "training") -> None:
  """The one line a run prints when it ends early."""
  if status == "diverged":
    print(f"lbjax: {what} diverged (non-finite loss) at step {step}", flush=True)
  elif status == "preempted":
    print(f"lbjax: preempted at step {step}; rerun the same command to resume", flush=True)
  elif status == "stopped":
    print(f"lbjax: stopped by the callback at step {step}", flush=True)
