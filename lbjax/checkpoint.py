"""Orbax checkpoints of the train state under ``workdir/checkpoints``.

Orbax writes each step atomically (a temporary directory renamed on completion), so a killed job
never leaves a half-written step that looks complete; the temporary directory of a save cut
short (a kill, a full disk) is deleted when the next run opens the directory. If the newest step still cannot be read
(truncated files, a disk error), `Checkpointer.restore_latest` reports it and falls back to the
next older step, so at most the work since that one is lost.
"""

import errno
import os
from typing import Any

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

from lbjax import workdir as workdir_lib


def finished_steps(directory: str) -> list[int]:
  """The steps in ``directory`` whose save finished, by orbax's own listing (a step's temporary
  directory is renamed to ``<step>`` only once all of it is written); [] if there is none."""
  try:
    return sorted(ocp.utils.checkpoint_steps(directory))
  except (OSError, ValueError):
    return []


class Checkpointer:
  """Save / restore-latest for one pytree.

  Cadence and retention are orbax's (``CheckpointManagerOptions``): a step is due when
  `should_save` says so (``FixedIntervalPolicy``: the multiples of ``every``), and the last
  ``keep`` steps are kept (``max_to_keep``).
  """

  def __init__(self, directory: str, keep: int = 3, async_save: bool = True,
               every: int | None = None, timeout_secs: int = 1200):
    self.directory = os.path.abspath(directory)
    self.timeout_secs = timeout_secs
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True,
            save_decision_policy=ocp.checkpoint_managers.FixedIntervalPolicy(every or 1),
            enable_async_checkpointing=async_save, cleanup_tmp_directories=True,
            async_options=ocp.AsyncOptions(timeout_secs=timeout_secs)))

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def complete_steps(self) -> list[int]:
    """The steps on disk whose save finished (`finished_steps`: read from the directory, not
    the manager's memory of the saves it started)."""
    return finished_steps(self.directory)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def should_save(self, step: int) -> bool:
    """Whether ``step`` is due by orbax's interval policy (a multiple of ``every``)."""
    return self._manager.should_save(step)

  def reached_preemption(self, step: int) -> bool:
    """Whether every process has reached the preemption sync point ``step`` (orbax's
    ``reached_preemption``: JAX's preemption service under ``jax.distributed``; False in one
    process)."""
    return self._manager.reached_preemption(step)

  def save(self, step: int, tree: Any, *, force: bool = True) -> None:
    """Saves ``tree`` (host values) as ``step``.

    ``force`` (the default: the loop saves where it has decided to, `should_save` or an end)
    bypasses orbax's interval policy: a save requested while the previous asynchronous one is
    still writing waits for it instead of being skipped, which matters for the save on
    preemption.
    """
    tree = jax.tree.map(np.asarray, jax.device_get(tree))
    self._manager.save(step, args=ocp.args.StandardSave(tree), force=force)

  def restore(self, step: int, target: Any) -> Any:
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, jax.device_get(target))
    return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

  def restore_latest(self, target: Any) -> tuple[int | None, Any]:
    """(step, tree) of the newest readable checkpoint, or (None, target) if there is none."""
    for step in reversed(self.all_steps()):
      try:
        return step, self.restore(step, target)
      except Exception as e:  # noqa: BLE001  (any error of a corrupt checkpoint: fall back)
        aside = self._set_aside(step)
        logging.warning("checkpoint step %d in %s is unreadable (%s: %s); moved to %s; trying an "
                        "older one", step, self.directory, type(e).__name__, e, aside)
        print(f"lbjax: warning: checkpoint step {step} is unreadable "
              f"({type(e).__name__}); moved to {aside}; falling back to an older one", flush=True)
    return None, target

  def _set_aside(self, step: int) -> str:
    """Renames an unreadable step out of orbax's view (kept for inspection, not deleted), so
    that the resumed run can write that step again."""
    path = os.path.join(self.directory, str(step))
    aside = f"{path}.unreadable"
    n = 1
    while os.path.exists(aside):
      n += 1
      aside = f"{path}.unreadable{n}"
    if jax.process_index() == 0:
      os.rename(path, aside)
    self._manager.reload()
    return aside

  def wait(self) -> None:
    """Waits for the asynchronous save.

    Raises:
      OSError: ``ETIMEDOUT`` when, with several processes, orbax's barrier of the save timed out
        (``timeout_secs``: another process did not finish its part — its storage failed, or it
        stalled), so that the run ends as on a storage error instead of waiting forever.
    """
    try:
      self._manager.wait_until_finished()
    except Exception as e:
      if (jax.process_count() > 1 and workdir_lib.classify(e) is None
          and workdir_lib.is_barrier_timeout(e)):  # this process's own storage error comes first
        raise OSError(errno.ETIMEDOUT, "the save did not finish on every process within "
                      f"config.checkpoint_timeout_secs={self.timeout_secs} (a storage error or "
                      "a stall on another process)") from e
      raise

  def close(self) -> None:
    self.wait()
    self._manager.close()
