"""The one training loop: a normal run, each SWAP phase and every HPO trial run through `run`.

A runner (`lbjax.train`, `lbjax.swap`) builds its step and hands the loop one object, a
`Trainer`, that takes a step and gives its state (as flax's ``state, metrics =
train_step(state, batch)``, held by the object, not by a closure). The loop does the rest, the
same way for every runner:

* **agreement across processes** (`Agreement`): every decision to stop is taken by all
  processes at the same step, since a process that stops alone leaves the others waiting in
  the next collective. A preemption (SIGTERM/SIGINT) is a flag read *once* per step in one
  process, and with ``jax.distributed`` orbax's ``reached_preemption`` (JAX's preemption sync
  point: a signal to any one process stops every process at the same step); divergence is
  decided on replicated values; the callback's answer is process 0's, broadcast; a storage
  error on any process ends every process (exit 4);
* **metric flush**: per-step metrics stay on device until a log, checkpoint or evaluation step,
  then their window means are written (``train_`` prefix) in one place, `Recorder.write_metrics`;
* **divergence**: the first step with a non-finite loss or weight norm ends the run (``diverged``);
* **checkpoint cadence**: orbax's (``save_interval_steps`` = ``config.checkpoint_every_steps``,
  ``max_to_keep`` = ``config.keep_checkpoints``), and at the end, at a preemption and when the
  callback stops the run, through `Recorder.save`;
* **profiling** (``config.profile_steps``, ``"A:B"``): a ``jax.profiler`` trace of steps A..B
  under ``WORKDIR/profile`` (TensorBoard's profile plugin, Perfetto);
* **progress bar** (``config.progress_bar``) and ``status.json`` (`Recorder.write_status`);
* **evaluation callback**: every ``config.eval_every_epochs`` the runner's ``evaluate(step)`` runs
  and ``callback(step_offset + step, metrics)`` may stop the run (HPO pruning, SWAP's phase-1
  threshold). ``step_offset`` keeps the reported steps increasing across SWAP's phases.
"""

from collections.abc import Callable
import contextlib
import os
import signal
import time
from typing import Any, NamedTuple, Protocol

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
from tqdm import tqdm

from lbjax import checkpoint as checkpoint_lib
from lbjax import config_lib
from lbjax import mesh as mesh_lib
from lbjax import metrics as metrics_lib
from lbjax import noise_scale as noise_scale_lib
from lbjax import workdir as workdir_lib

Callback = Callable[[int, dict], bool]


class Trainer(Protocol):
  """What a runner hands `run`: one object that takes a step and gives its state.

  Attributes:
    examples_per_step: images one step trains on (all replicas), for ``images_per_sec``.
    num_replicas: replicas trained by one step (SWAP); their accuracies are also written one by
      one (``train_replica_accuracy``).
    noise_scale: ``(b_small, b_big)`` when the step records ``grad_sq_small`` and
      ``grad_sq_big`` (``config.log_noise_scale``), else None (see `run`).
  """
  examples_per_step: int
  num_replicas: int
  noise_scale: tuple[int, int] | None

  def step(self, step: int) -> Any:
    """Trains from ``step`` to ``step + 1``; returns the step's metrics (on device, leading
    axis ``num_replicas`` when there are several)."""

  def host_state(self) -> Any:
    """The current state as a host tree, for a checkpoint."""

  def evaluate(self, step: int) -> dict[str, float]:
    """``{"test_accuracy": ..., ...}`` of the current model at an intermediate evaluation."""


class Cadence(NamedTuple):
  """When the loop logs, evaluates, checkpoints and profiles (one value, from the config)."""
  steps_per_epoch: float
  log_every_steps: int
  eval_every_steps: int
  checkpoint_every_steps: int
  progress_bar: bool = False
  profile: tuple[int, int] | None = None  # steps [first, last] traced by jax.profiler
  noise_scale_decay: float = 0.9  # the B_simple moving average's decay per logging window

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, steps_per_epoch: float) -> "Cadence":
    return cls(steps_per_epoch=steps_per_epoch, log_every_steps=config.log_every_steps,
               eval_every_steps=max(1, round(config.eval_every_epochs * steps_per_epoch)),
               checkpoint_every_steps=config.checkpoint_every_steps,
               progress_bar=bool(config.progress_bar),
               profile=config_lib.profile_steps(config.get("profile_steps")),
               noise_scale_decay=config.get("noise_scale_decay", 0.9))


class Agreement:
  """Stops that every process takes at the same step (module doc).

  In one process, SIGTERM and SIGINT set a flag read once per step. Under ``jax.distributed``
  SIGTERM is JAX's preemption notice (its preemption service catches it and tells every
  process; orbax's ``reached_preemption(step)`` is then true on all of them at the same step),
  and SIGINT is turned into that notice; the flag is never read alone.
  """

  def __init__(self, checkpointer: checkpoint_lib.Checkpointer | None = None):
    self.multiprocess = jax.process_count() > 1
    self.checkpointer = checkpointer
    self.requested = False
    self._old = {}

  def __enter__(self):
    signals = (signal.SIGINT,) if self.multiprocess else (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
      try:
        self._old[sig] = signal.signal(sig, self._handler)
      except ValueError:  # not the main thread
        pass
    return self

  def _handler(self, signum, frame):
    del frame
    logging.warning("received signal %d: checkpointing and exiting", signum)
    self.requested = True
    if self.multiprocess:  # JAX's preemption notifier agrees on the step with the others
      os.kill(os.getpid(), signal.SIGTERM)

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)

  def preempted(self, step: int) -> bool:
    """Whether the run stops for a preemption after ``step`` (the same on every process)."""
    if self.multiprocess:
      return self.checkpointer is not None and self.checkpointer.reached_preemption(step)
    return self.requested

  def any(self, local: bool) -> bool:
    """True on every process if ``local`` is true on any (a collective: all processes call it
    at the same steps)."""
    if not self.multiprocess:
      return bool(local)
    flags = multihost_utils.process_allgather(np.asarray(bool(local), np.int32))
    return bool(np.any(flags))

  def primary(self, answer: bool) -> bool:
    """Process 0's ``answer`` on every process (HPO pruning is answered there)."""
    if not self.multiprocess:
      return bool(answer)
    return bool(multihost_utils.broadcast_one_to_all(np.asarray(bool(answer), np.int32)))


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

  def __init__(self, workdir: str, *, keep: int, every: int | None = None,
               checkpoint_dir: str | None = None, primary: bool | None = None,
               async_save: bool = True, timeout_secs: int = 1200, **status_fields):
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
      self.checkpointer = checkpoint_lib.Checkpointer(ckpt_dir, keep=keep, async_save=async_save,
                                                      every=every, timeout_secs=timeout_secs)
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

  @property
  def step(self) -> int:
    """The step the run has reached (the last one saved or logged)."""
    return self._step

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

  def settle(self) -> None:
    """Waits for the previous asynchronous save: its storage error, if any, surfaces here (the
    loop agrees on it with the other processes before the next save starts)."""
    if self._pending is not None:
      with self.writing(f"checkpoint step {self._pending} in {self.checkpointer.directory}"):
        self.checkpointer.wait()
      self.checkpoint_step, self._pending = self._pending, None

  def save(self, step: int, tree) -> None:
    self._step = step
    where = self.checkpointer.directory
    self.settle()
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


def run(rec: Recorder, trainer: Trainer, *, start: int, total_steps: int, cadence: Cadence,
        callback: Callback | None = None, step_offset: int = 0) -> tuple[str, int]:
  """Runs ``trainer`` from step ``start`` to ``total_steps``; returns ``(status, step)``.

  Args:
    rec: the run directory (metrics, status, checkpoints).
    trainer: takes the steps, gives its state and evaluates (`Trainer`).
    start: the step the state is at.
    total_steps: the step to stop at.
    cadence: when to log, evaluate, checkpoint, profile (`Cadence`).
    callback: ``callback(step_offset + step, metrics)`` after every intermediate evaluation, with
      the evaluation's and the last logging window's metrics (``train_accuracy``, ...); a true
      return (process 0's, with several processes) saves a checkpoint and ends the run with
      status ``stopped``.
    step_offset: added to the steps the callback sees.

  With ``trainer.noise_scale`` = ``(b_small, b_big)`` each flush updates a
  `lbjax.noise_scale.NoiseScaleEMA` (decay ``config.noise_scale_decay`` per window) with the
  window means of ``grad_sq_small`` and ``grad_sq_big`` and writes its B_simple as
  ``train_noise_scale``, beside the window's own unbiased estimates of |G|² and tr(Σ) as
  ``train_noise_g_sq`` and ``train_noise_trace_sigma`` (for
  `lbjax.noise_scale.window_b_simple`); the moving averages start from a replay of
  ``metrics.jsonl``'s windows, so a resumed run continues them. With replicas (SWAP) the window means, and so the
  one B_simple, are over all replicas.

  Returns:
    ``status`` is ``completed``, ``diverged`` (``step``: the first non-finite step),
    ``preempted`` or ``stopped``.

  Raises:
    lbjax.workdir.WriteFailure: a storage error on any process (every process raises it, at
      the same step).
  """
  num_replicas, noise_scale = trainer.num_replicas, trainer.noise_scale
  pending: list[Any] = []
  last_train: dict[str, float] = {}
  clock = {"time": time.time(), "step": start}
  decay = cadence.noise_scale_decay
  ema = None  # the windows logged before a resume (metrics.jsonl was truncated to `start`)
  if noise_scale is not None:
    ema = noise_scale_lib.NoiseScaleEMA.replay(metrics_lib.read_metrics(rec.workdir),
                                               *noise_scale, decay=decay)

  def flush(step: int) -> int | None:
    """Writes the window means of the pending metrics; returns the first non-finite step."""
    nonlocal pending, ema
    if not pending:
      return None
    rows = {k: np.stack([np.asarray(m[k]).reshape(num_replicas, -1)
                         for m in jax.tree.map(np.asarray, to_host(pending))])
            for k in pending[0]}  # [steps, replicas, copies]
    first = step - len(pending) + 1
    pending = []
    finite = rows.pop("finite").all(axis=(1, 2))
    if not finite.all():  # replicated values: every process sees the same step
      bad = first + int(np.argmin(finite))
      rec.write_metrics(bad, {"loss": float(np.mean(rows["loss"][bad - first])), "diverged": 1})
      return bad
    means = {k: float(np.mean(v)) for k, v in rows.items()}
    if num_replicas > 1:
      means["replica_accuracy"] = rows["accuracy"].mean(axis=(0, 2)).tolist()
    now = time.time()
    means["images_per_sec"] = ((step - clock["step"]) * trainer.examples_per_step
                               / max(now - clock["time"], 1e-9))
    means["epoch"] = step / cadence.steps_per_epoch
    if noise_scale is not None:  # McCandlish et al. 2018 App. A.1, averaged across windows
      means["noise_g_sq"], means["noise_trace_sigma"] = noise_scale_lib.unbiased_estimates(
          means["grad_sq_small"], means["grad_sq_big"], *noise_scale)
      ema = ema.update(means["grad_sq_small"], means["grad_sq_big"], *noise_scale, decay=decay)
      means["noise_scale"] = ema.b_simple
    rec.write_metrics(step, means, prefix="train_")
    last_train.update({f"train_{k}": v for k, v in means.items()})
    clock.update(time=now, step=step)
    return None

  progress = None
  if cadence.progress_bar and rec.primary and start < total_steps:
    progress = tqdm(total=total_steps, initial=start, unit="step", dynamic_ncols=True,
                    mininterval=2.0)
  profiler = Profiler(rec.workdir, cadence.profile)
  status, step = "completed", start
  with Agreement(rec.checkpointer) as agreement:
    for step in range(start + 1, total_steps + 1):
      profiler.before(step)
      pending.append(trainer.step(step - 1))
      profiler.after(step, pending[-1])
      if progress is not None:
        progress.update(1)
      is_last = step == total_steps
      # Read once per step, the same on every process: a signal arriving later in this
      # iteration is handled at the next step, so a preemption never breaks out without the
      # save that goes with it.
      preempted = agreement.preempted(step) and not is_last
      save = rec.checkpointer.should_save(step) or is_last or preempted
      evaluate_now = step % cadence.eval_every_steps == 0 and not is_last
      failure = bad_step = stop = None
      flush_now = step % cadence.log_every_steps == 0 or save or evaluate_now
      try:
        if flush_now:
          bad_step = flush(step)
        if bad_step is None and evaluate_now:
          results = trainer.evaluate(step)
          rec.write_metrics(step, {**results, "epoch": step / cadence.steps_per_epoch})
          stop = callback is not None and bool(callback(step_offset + step,
                                                        {**last_train, **results}))
      except workdir_lib.WriteFailure as e:
        failure = e
      if flush_now:  # the steps where one process writes, and so may fail alone
        _agree_on_failure(agreement, failure, rec, step)
      if bad_step is not None:
        status, step = "diverged", bad_step
        break
      if evaluate_now:
        stop = agreement.primary(bool(stop))
      if save or stop:
        # The previous save's error first, agreed before this save's collectives start (a
        # process failing alone would leave the others in orbax's barrier).
        try:
          rec.settle()
        except workdir_lib.WriteFailure as e:
          failure = e
        _agree_on_failure(agreement, failure, rec, step)
        try:
          rec.save(step, trainer.host_state())
        except workdir_lib.WriteFailure as e:
          failure = e
        _agree_on_failure(agreement, failure, rec, step)
      if preempted:
        status = "preempted"
        break
      if stop:
        status = "stopped"
        break
  profiler.close()
  if progress is not None:
    progress.close()
  return status, step


def close(rec: Recorder) -> None:
  """`Recorder.close` (the last save's completion), agreed: a storage error on any process
  ends every process with it."""
  failure = None
  try:
    rec.close()
  except workdir_lib.WriteFailure as e:
    failure = e
  _agree_on_failure(Agreement(), failure, rec, rec.step)


def to_host(tree):
  """Replicated device values (metrics) → host arrays, each process reading its own copy."""
  return mesh_lib.to_host(tree)


def _agree_on_failure(agreement: Agreement, failure: workdir_lib.WriteFailure | None,
                      rec: Recorder, step: int) -> None:
  """Raises on every process when any process had a storage error at this point."""
  if agreement.any(failure is not None):
    if failure is None:  # another process failed: end this one the same way
      failure = workdir_lib.WriteFailure(f"files of another process in {rec.workdir}",
                                         "a storage error on another process")
      rec.fail(failure)
    raise failure
  if failure is not None:
    raise failure


class Profiler:
  """A ``jax.profiler`` trace of the steps ``[first, last]`` under ``WORKDIR/profile``."""

  def __init__(self, workdir: str, steps: tuple[int, int] | None):
    self.steps, self.dir, self.active = steps, os.path.join(workdir, "profile"), False

  def before(self, step: int) -> None:
    if self.steps is not None and step == self.steps[0] and not self.active:
      jax.profiler.start_trace(self.dir)
      self.active = True

  def after(self, step: int, outputs) -> None:
    if self.active and step == self.steps[1]:
      jax.block_until_ready(outputs)
      self.close()

  def close(self) -> None:
    if self.active:
      jax.profiler.stop_trace()
      self.active = False
      logging.info("profile of steps %d:%d written to %s", *self.steps, self.dir)


def print_outcome(status: str, step: int, what: str = "training") -> None:
  """The one line a run prints when it ends early."""
  if status == "diverged":
    print(f"lbjax: {what} diverged (non-finite loss) at step {step}", flush=True)
  elif status == "preempted":
    print(f"lbjax: preempted at step {step}; rerun the same command to resume", flush=True)
  elif status == "stopped":
    print(f"lbjax: stopped by the callback at step {step}", flush=True)
