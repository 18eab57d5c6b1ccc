"""A study on several processes (``jax.distributed``): process 0 is the Optuna worker, every
process trains its trials.

A trial is one SPMD run over every host's devices, so all processes must run the same trial at
the same time. Process 0 alone talks to the study (asks for a trial, reports, tells the
outcome); before each trial it broadcasts the trial's suggested values and workdir (`share`),
and the other processes run the same `lbjax.runners.run` (`follow`). A trial's stops are agreed
inside the loop (`lbjax.loop.Agreement`): the pruner is asked on process 0 and its answer
broadcast, a preemption of any process stops all at the same step. When process 0's worker
ends it broadcasts ``None`` and the followers return.
"""

import json
from typing import Any

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from lbjax import runners
from lbjax.hpo import space


def share(message: dict[str, Any] | None) -> dict[str, Any] | None:
  """Process 0's ``message`` (JSON-serialisable, or None) on every process. A collective: every
  process calls it at the same point (the others' ``message`` is ignored)."""
  if jax.process_count() == 1:
    return message
  data = json.dumps(message).encode() if jax.process_index() == 0 else b""
  size = int(multihost_utils.broadcast_one_to_all(np.asarray(len(data), np.int64)))
  buffer = np.zeros(size, np.uint8)
  if jax.process_index() == 0:
    buffer[:] = np.frombuffer(data, np.uint8)
  return json.loads(bytes(multihost_utils.broadcast_one_to_all(buffer)).decode())


def follow(config: ml_collections.ConfigDict) -> int:
  """On a process other than 0: runs every trial process 0 shares until it shares None;
  returns the number of trials run. The callback answers "go on": process 0's pruner decides
  (`lbjax.loop.Agreement.primary`)."""
  count = 0
  while (trial := share(None)) is not None:
    if trial.get("skip"):
      continue
    runners.run(space.trial_config(config, trial["params"]), trial["workdir"],
                callback=lambda step, metrics: False)
    count += 1
  return count
