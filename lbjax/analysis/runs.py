"""Restore the model a finished (or running) workdir reports: its ``config.json`` and checkpoints.

The model analysed is the one whose accuracy the run reports as its result
(`lbjax.train.result_keys`, ``result_test_accuracy``):

* a normal run (``WORKDIR/checkpoints``, `lbjax.step.TrainState`): the trained weights with their
  running BatchNorm statistics;
* with ``config.swa.enabled``: the SWA average :math:`W_{swa}` of seed 000 eq. (1) kept in the
  optimizer state (`lbjax.swa.averaged_params`), with BatchNorm statistics **recomputed** on the
  training data (`lbjax.evaluation.recompute_on_train_data`), as the run evaluated it
  (`lbjax.evaluation.evaluate_averaged`): the checkpoint's running statistics belong to the last
  raw weights, not to their average;
* a SWAP run (``config.swap.enabled``, `lbjax.swap`): phase 3's average of the replicas, BatchNorm
  recomputed, saved under ``WORKDIR/phase3/checkpoints`` (its large-batch phase is a normal run in
  ``WORKDIR/phase1``).

`restore` returns either as one `Solution`: the weights, the BatchNorm statistics, the
`lbjax.step.Experiment` that built the model (data, eval step, schedule), the step, and a
sentence naming the model (`Solution.model`) for the analyses to print and record.
"""

from collections.abc import Sequence
import json
import os
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np

from lbjax import checkpoint as checkpoint_lib
from lbjax import evaluation
from lbjax import mesh as mesh_lib
from lbjax import metrics as metrics_lib
from lbjax import step as step_lib
from lbjax import swa
from lbjax import swap
from lbjax.data import datasets
from lbjax.errors import ConfigError


class Solution(NamedTuple):
  """One trained model, on the host."""
  workdir: str
  config: ml_collections.ConfigDict  # the run's config (a SWAP run: its phase-1 config)
  exp: step_lib.Experiment
  params: Any
  batch_stats: Any
  step: int              # the checkpoint's step (SWAP: phase 2's last, whose replicas it averages)
  status: dict | None  # WORKDIR/status.json, None if absent
  model: str = "trained weights"  # which model of the run this is, in words


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run saved in ``WORKDIR/config.json`` (unlocked)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise ConfigError("--workdir", f"{workdir} holds no config.json (not an lbjax run)")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def _model_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config whose experiment builds a SWAP run's averaged model: phase 1's (same model,
  and its batch is the one phase 3 recomputes BatchNorm with)."""
  if swap.enabled(config):
    return swap.phase1_config(config)
  return config


def _to_host(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))


def recompute_batch_stats(exp: step_lib.Experiment, params, batch_stats,
                          devices: Sequence[jax.Device] | None = None):
  """BatchNorm statistics of ``params`` (host arrays) by one pass over ``exp``'s training data
  (`lbjax.evaluation.recompute_on_train_data`, torch ``update_bn``), on ``devices`` (default:
  this process's); host arrays. ``batch_stats`` gives only the structure; without BatchNorm it
  is returned unchanged."""
  if not jax.tree.leaves(batch_stats):
    return batch_stats
  mesh = mesh_lib.data_mesh(jax.local_devices() if devices is None else list(devices))
  stats = evaluation.recompute_on_train_data(exp, mesh_lib.put_replicated(params, mesh),
                                             mesh_lib.put_replicated(batch_stats, mesh),
                                             mesh=mesh)
  return mesh_lib.to_host(stats)


def _complete_steps(directory: str) -> list[int]:
  if not os.path.isdir(directory):
    return []
  ckpt = checkpoint_lib.Checkpointer(directory)
  try:
    return ckpt.complete_steps()
  finally:
    ckpt.close()


def _restore_run(workdir: str, config, exp, state):
  """A normal run's model: ``(params, batch_stats, step, model)``."""
  ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"))
  step, state = ckpt.restore_latest(state)
  ckpt.close()
  if step is None:
    return None
  if not swa.enabled(config):
    return state.params, state.batch_stats, step, f"trained weights (step {step})"
  average, count = swa.averaged_params(state.opt_state)
  count = int(count)
  if count == 0:
    raise ConfigError("--workdir", f"{workdir} is an SWA run (config.swa.enabled) whose checkpoint "
                      f"(step {step}) has averaged no weights yet: the run reports no model")
  stats = recompute_batch_stats(exp, average, state.batch_stats)
  model = (f"SWA average of {count} weights (step {step}; seed 000 eq. (1)), BatchNorm "
           "recomputed on the training data" if jax.tree.leaves(stats) else
           f"SWA average of {count} weights (step {step}; seed 000 eq. (1))")
  return average, stats, step, model


def _restore_swap(workdir: str, config, state, status: dict | None):
  """A SWAP run's phase-3 model: ``(params, batch_stats, step, model)``."""
  ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, "phase3", "checkpoints"))
  saved, model = ckpt.restore_latest({"params": state.params, "batch_stats": state.batch_stats})
  ckpt.close()
  if saved is None:
    return None
  # Phase 3 saves its one model as step 0; the run's steps are phase 2's (and phase 1's before).
  phase2 = _complete_steps(os.path.join(workdir, "phase2", "checkpoints"))
  step = phase2[-1] if phase2 else int((status or {}).get("step", 0))
  phase1 = (status or {}).get("phase1_step")
  if phase1 is None:
    done = _complete_steps(os.path.join(workdir, "phase1", "checkpoints"))
    phase1 = done[-1] if done else None
  what = "SWA averages" if swa.enabled(config) else "weights"
  after = f"phase 1: {phase1} steps, phase 2: {step} steps" if phase1 is not None else (
      f"phase 2: {step} steps")
  text = (f"SWAP average of {config.swap.num_replicas} replicas' {what} ({after}), BatchNorm "
          "recomputed on the training data")
  return model["params"], model["batch_stats"], step, text


def restore(workdir: str, data: datasets.Dataset | None = None) -> Solution:
  """The model ``workdir`` reports, at its latest readable checkpoint (see the module doc).

  Args:
    workdir: a run directory written by `lbjax.train.train_and_evaluate` (or `lbjax.swap.run`).
    data: the dataset, if already loaded (else loaded from the config).

  Raises:
    ConfigError: (``--workdir``) no config.json, no checkpoint, or an SWA run that has averaged
      no weights yet.
  """
  run_config = load_config(workdir)
  config = _model_config(run_config)
  exp = step_lib.build(config, data)
  state = jax.device_get(exp.init_state())
  status = metrics_lib.read_status(workdir)
  found = None
  if os.path.isdir(os.path.join(workdir, "checkpoints")):
    found = _restore_run(workdir, config, exp, state)
  elif os.path.isdir(os.path.join(workdir, "phase3", "checkpoints")):
    found = _restore_swap(workdir, run_config, state, status)
  if found is None:
    raise ConfigError("--workdir", f"{workdir} holds no readable checkpoint")
  params, batch_stats, step, model = found
  return Solution(workdir, config, exp, _to_host(params), _to_host(batch_stats), int(step),
                  status, model)
