"""Orbax checkpoints of the train state under ``workdir/checkpoints``.

Orbax writes each step atomically (a temporary directory renamed on completion), so a killed job
never leaves a half-written step that looks complete; the temporary directory of a save cut
short (a kill, a full disk) is deleted when the next run opens the directory. If the newest step still cannot be read
(truncated files, a disk error), `Checkpointer.restore_latest` reports it and falls back to the
next older step, so at most the work since that one is lost.
"""

import os
from typing import Any

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp


class Checkpointer:
  """Save / restore-latest for one pytree, keeping the last ``keep`` steps."""

  def __init__(self, directory: str, keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True))

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def complete_steps(self) -> list[int]:
    """The steps on disk whose save finished (orbax renames a step's temporary directory to
    ``<step>`` only once all of it is written), read from the directory, not orbax's memory."""
    try:
      names = os.listdir(self.directory)
    except OSError:
      return []
    return sorted(int(name) for name in names if name.isdigit())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, tree: Any) -> None:
    """Saves ``tree`` (host values) as ``step``.

    The caller decides when to save, so orbax's own interval policy is bypassed (``force``):
    a save requested while the previous asynchronous one is still writing waits for it
    instead of being skipped, which matters for the save on preemption.
    """
    tree = jax.tree.map(np.asarray, jax.device_get(tree))
    self._manager.save(step, args=ocp.args.StandardSave(tree), force=True)

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
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
