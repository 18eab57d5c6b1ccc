"""Checks a config before anything is written, and converts epochs to steps once.

Every error is a `ConfigError` naming the key; `lbjax.main` prints it and exits non-zero before
the workdir is created or changed.
"""

import json
import math
import os
from typing import Any

import ml_collections

from lbjax import accumulate
from lbjax import dotted
from lbjax import models
from lbjax import noise_scale
from lbjax import schedules
from lbjax import swa
from lbjax.data import augment
from lbjax.data import datasets
from lbjax.errors import ConfigError
from lbjax.errors import check_choice
from lbjax.optim import registry
from lbjax.optim import trust

# Keys that only change logging or bookkeeping: a rerun may change them and still resume.
# (``log_noise_scale`` is not one: on one device without micro-batches it splits the batch into
# halves, which changes BatchNorm training, and the workdir check does not know the device count;
# ``noise_scale_decay`` is: the loop replays the logged windows with it on resume.)
RESUMABLE_KEYS = ("log_every_steps", "eval_every_epochs", "checkpoint_every_steps",
                  "keep_checkpoints", "checkpoint_timeout_secs", "progress_bar", "eval_batch_size",
                  "accumulation", "noise_scale_decay", "profile_steps", "log_trust_ratios")


def _positive(config, key: str, allow_zero: bool = False) -> None:
  value = dotted.get(config, key)
  ok = value >= 0 if allow_zero else value > 0
  if not isinstance(value, (int, float)) or isinstance(value, bool) or not ok:
    raise ConfigError(f"config.{key}", f"must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def profile_steps(value: str | None) -> tuple[int, int] | None:
  """``config.profile_steps`` ``"A:B"`` → ``(A, B)``, the steps (1-based, as the loop counts
  them) of the ``jax.profiler`` trace; None: no trace.

  Raises:
    ConfigError: naming ``config.profile_steps``.
  """
  if value is None or value == "":
    return None
  parts = str(value).split(":")
  try:
    first, last = (int(parts[0]), int(parts[1])) if len(parts) == 2 else (0, 0)
  except ValueError:
    first = last = 0
  if not 1 <= first <= last:
    raise ConfigError("config.profile_steps",
                      f"must be 'A:B' with 1 <= A <= B (the steps to trace), got {value!r}")
  return first, last


def validate(config: ml_collections.ConfigDict, *, device_count: int, process_count: int = 1
             ) -> None:
  """Raises ConfigError for the first bad value of ``config`` as a normal run on
  ``device_count`` devices (a SWAP config is checked by its runner, `lbjax.swap.validate`)."""
  if isinstance(config.seed, bool) or not isinstance(config.seed, int) or config.seed < 0:
    raise ConfigError("config.seed", f"must be an integer >= 0 (a PRNG seed), got {config.seed!r}")
  check_choice("config.dataset", config.dataset, datasets.DATASETS)
  if config.dataset == "cifar10" and not config.data_dir:
    raise ConfigError("config.data_dir", "CIFAR-10 is read with TFDS from a data_dir; set "
                      "--config.data_dir=DIR (prepare it with `tfds build cifar10 --data_dir=DIR` "
                      "on a machine with internet access)")
  augment.validate_mode(config.augment)
  check_choice("config.model.name", config.model.name, models.MODELS)
  for key in ("eval_batch_size", "log_every_steps", "eval_every_epochs",
              "checkpoint_every_steps", "keep_checkpoints", "checkpoint_timeout_secs"):
    _positive(config, key)
  profile_steps(config.get("profile_steps"))
  if not 0.0 <= config.validation_fraction < 1.0:
    raise ConfigError("config.validation_fraction",
                      f"must be in [0, 1), got {config.validation_fraction}")
  validate_training(config, device_count=device_count, process_count=process_count)
  if config.get("log_trust_ratios") and not logs_trust_ratios(config):
    raise ConfigError("config.log_trust_ratios",
                      f"optimizer {config.optimizer.name!r} applies no layer-wise factor; trust "
                      "ratios are LARS's and LAMB's (lbjax.optim.trust_ratios)")


def logs_trust_ratios(config: ml_collections.ConfigDict) -> bool:
  """Whether the train step of ``config`` logs trust ratios: ``config.log_trust_ratios`` and
  an optimizer that has them (`lbjax.optim.trust_ratios`). A normal run with an optimizer
  without them is refused by `validate`; SWAP's phase 2 (`lbjax.swap.phase2_config`) logs them
  only if its own optimizer has them (seed 000: LARS in phase 1, SGD in phase 2)."""
  if not config.get("log_trust_ratios", False):
    return False
  lr = config.optimizer.get("learning_rate")
  return trust.has_trust_ratios(registry.build(config.optimizer, 1.0 if lr is None else lr))


def validate_training(config: ml_collections.ConfigDict, *, device_count: int,
                      process_count: int = 1) -> None:
  """The keys of one training phase: batch, length, micro-batches, noise-scale and trust-ratio
  logging, Ghost BN, optimizer (with update noise and SmoothOut), schedule and SWA. SWAP checks
  its phase 2 with this alone."""
  for key in ("batch_size", "num_epochs"):
    _positive(config, key)
  if not isinstance(config.batch_size, int):
    raise ConfigError("config.batch_size", f"must be an integer, got {config.batch_size!r}")
  if config.batch_size % device_count:
    raise ConfigError("config.batch_size",
                      f"{config.batch_size} is not divisible by the {device_count} devices "
                      f"({process_count} process(es)); use a multiple of {device_count}")
  augment.validate_batch(config.augment, config.batch_size // device_count)  # CutMix pairs
  accumulate.validate_config(config, device_count=device_count)  # micro_batch_size, accumulation
  validate_noise_scale(config, device_count=device_count)  # before Ghost BN: it sets the halves
  log_trust = config.get("log_trust_ratios", False)
  if not isinstance(log_trust, bool):
    raise ConfigError("config.log_trust_ratios", f"must be True or False, got {log_trust!r}")
  ghost = config.model.get("ghost_batch_size")
  if ghost is not None:
    # Ghost batches split each forward pass: the per-device (micro-)batch.
    forward, what = accumulate.forward_batch(config, device_count)
    if not isinstance(ghost, int) or ghost <= 0 or forward % ghost:
      raise ConfigError("config.model.ghost_batch_size",
                        f"must be a positive divisor of the {what}, got {ghost}")
  registry.validate_config(config)  # optimizer, noise, smoothout, weight-decay switch-off
  check_choice("config.schedule.name", config.schedule.name, schedules.SCHEDULES)
  _positive(config, "schedule.warmup_epochs", allow_zero=True)
  if config.schedule.warmup_epochs >= config.num_epochs:
    raise ConfigError("config.schedule.warmup_epochs",
                      f"warmup ({config.schedule.warmup_epochs} epochs) must be shorter than "
                      f"training (config.num_epochs={config.num_epochs})")
  if config.schedule.base_batch_size is not None:
    _positive(config, "schedule.base_batch_size")
  swa.validate_config(config)  # config.swa


def validate_noise_scale(config: ml_collections.ConfigDict, *, device_count: int) -> None:
  """``config.log_noise_scale`` (a bool; its pieces must split the batch, halves holding whole
  CutMix pairs) and ``config.noise_scale_decay`` (in [0, 1)). Absent keys: nothing to check."""
  log = config.get("log_noise_scale")
  if log is None:
    return
  if not isinstance(log, bool):
    raise ConfigError("config.log_noise_scale", f"must be True or False, got {log!r}")
  decay = config.get("noise_scale_decay", 0.9)
  if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay < 1.0:
    raise ConfigError("config.noise_scale_decay", f"must be in [0, 1), got {decay!r}")
  if not log:
    return
  try:
    b_small, _, _ = noise_scale.batch_sizes(config.batch_size, device_count,
                                            config.get("micro_batch_size"))
  except ValueError as e:
    raise ConfigError("config.log_noise_scale", str(e)) from None
  if device_count == 1 and 2 * b_small == config.batch_size:  # the halves (or 2 micro-batches)
    bad = augment.straddling(config.augment, b_small)
    if bad is not None:
      token, group = bad
      raise ConfigError("config.log_noise_scale",
                        f"on one device the batch is split in two halves of {b_small}, and "
                        f"augment token {token!r} mixes groups of {group} rows across them")


def total_steps(num_epochs: float, num_examples: int, batch_size: int) -> int:
  """Optimizer updates of the global batch in ``num_epochs`` epochs (at least 1)."""
  return max(1, math.ceil(num_epochs * num_examples / batch_size))


def steps_per_epoch(num_examples: int, batch_size: int) -> float:
  return num_examples / batch_size


def config_diff(a: dict, b: dict, prefix: str = "config") -> list[str]:
  """Keys (dotted) whose values differ between two nested dicts."""
  out = []
  for key in sorted(set(a) | set(b)):
    va, vb = a.get(key, "<absent>"), b.get(key, "<absent>")
    if isinstance(va, dict) and isinstance(vb, dict):
      out += config_diff(va, vb, f"{prefix}.{key}")
    elif va != vb:
      out.append(f"{prefix}.{key}")
  return out


def to_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """JSON round-tripped dict of the config (tuples become lists), for comparison and saving."""
  return json.loads(config.to_json())


def check_workdir(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses a workdir that holds a run of a different config (nothing is written)."""
  path = os.path.join(workdir, "config.json")
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ConfigError("--workdir", f"{workdir} exists and is not a directory")
  parent = workdir
  while not os.path.exists(parent):
    parent = os.path.dirname(parent) or "."
  if not os.path.isdir(parent):
    raise ConfigError("--workdir", f"{parent} is not a directory")
  if not os.access(parent, os.W_OK):
    raise ConfigError("--workdir", f"{parent} is not writable")
  if not os.path.exists(path):
    return
  with open(path) as f:
    saved = json.load(f)
  differ = [k for k in config_diff(saved, to_dict(config))
            if k.removeprefix("config.") not in RESUMABLE_KEYS]
  if differ:
    raise ConfigError("--workdir", f"{workdir} holds a run of a different config (differs in "
                      f"{', '.join(differ)}); use a new --workdir")
