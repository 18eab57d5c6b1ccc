"""Restore the model of a finished (or running) workdir: its ``config.json`` and latest checkpoint.

A normal run keeps its `lbjax.train.TrainState` under ``WORKDIR/checkpoints``; a SWAP run
(``config.swap.enabled``, `lbjax.swap`) keeps its averaged model, BatchNorm recomputed, under
``WORKDIR/phase3/checkpoints`` (and its large-batch phase as a normal run in ``WORKDIR/phase1``).
`restore` returns either as one `Solution`: the weights, the BatchNorm statistics, and the
`lbjax.train.Experiment` that built the model (data, eval step, schedule).
"""

import json
import os
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np

from lbjax import checkpoint as checkpoint_lib
from lbjax import metrics as metrics_lib
from lbjax import swap
from lbjax import train
from lbjax.data import datasets
from lbjax.errors import ConfigError


class Solution(NamedTuple):
  """One trained model, on the host."""
  workdir: str
  config: ml_collections.ConfigDict  # the run's config (a SWAP run: its phase-1 config)
  exp: train.Experiment
  params: Any
  batch_stats: Any
  step: int              # the checkpoint's step
  status: dict | None  # WORKDIR/status.json, None if absent


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
  if config.get("swap") is not None and config.swap.enabled:
    return swap.phase1_config(config)
  return config


def restore(workdir: str, data: datasets.Dataset | None = None) -> Solution:
  """The model of ``workdir`` at its latest readable checkpoint.

  Args:
    workdir: a run directory written by `lbjax.train.train_and_evaluate` (or `lbjax.swap.run`).
    data: the dataset, if already loaded (else loaded from the config).

  Raises:
    ConfigError: (``--workdir``) no config.json or no checkpoint.
  """
  config = _model_config(load_config(workdir))
  exp = train.build(config, data)
  state = jax.device_get(exp.init_state())
  swap_dir = os.path.join(workdir, "phase3", "checkpoints")
  if os.path.isdir(os.path.join(workdir, "checkpoints")):
    ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"))
    step, state = ckpt.restore_latest(state)
    ckpt.close()
    params, batch_stats = (state.params, state.batch_stats) if step is not None else (None, None)
  elif os.path.isdir(swap_dir):  # SWAP: the averaged model of phase 3
    ckpt = checkpoint_lib.Checkpointer(swap_dir)
    step, model = ckpt.restore_latest({"params": state.params, "batch_stats": state.batch_stats})
    ckpt.close()
    params, batch_stats = model["params"], model["batch_stats"]
  else:
    step = None
  if step is None:
    raise ConfigError("--workdir", f"{workdir} holds no readable checkpoint")
  to_host = lambda tree: jax.tree.map(np.asarray, tree)
  return Solution(workdir, config, exp, to_host(params), to_host(batch_stats), int(step),
                  metrics_lib.read_status(workdir))
