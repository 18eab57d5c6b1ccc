"""Search space and settings of a TPE study: plain data, no Optuna (configs import this module).

``config.search_space`` has one entry per tuned hyperparameter,
``{key: "optimizer.learning_rate", type: float | int | categorical, low, high, log, step, choices,
label, column}``: ``key`` is the dotted config key it sets, ``label`` its Table 1 column and
``column`` its position in the report. ``config.hpo`` holds the search settings; ``HPO_DEFAULTS``
lists them. Everything here checks or transforms configs; the Optuna side is `lbjax.hpo.worker`.

Which keys a space tunes: exactly the dotted keys its entries name, and any key of the config can
be named (``search_space`` and ``hpo`` excepted); every other value is the config's (the file's,
with the command line's overrides) in every trial. With SWAP (``config.swap.enabled``) the keys
are those of the phase they configure: ``optimizer.*``, ``schedule.*``, ``batch_size``,
``num_epochs``, ``noise.*``, ``smoothout.*`` are phase 1's; phase 2's replicas run
``swap.optimizer.*``, ``swap.schedule.*``, ``swap.batch_size``, ``swap.num_epochs``,
``swap.noise.*``, ``swap.smoothout.*`` (`lbjax.swap.phase2_config`); ``swa.*`` applies to phase 2
only. So a space over a SWAP config tunes phase 2 only through ``swap.*`` entries, e.g.
``{key: "swap.optimizer.learning_rate", type: "float", low: 1e-3, high: 0.1, log: True}``;
without one the worker prints `untuned_phase2_note`.
"""

import copy
import math
from typing import Any

import ml_collections
from ml_collections import config_dict

from lbjax import dotted
from lbjax.errors import ConfigError
from lbjax.errors import check_choice

# ``config.hpo`` keys and their defaults.
HPO_DEFAULTS: dict[str, Any] = {
    "validation_fraction": None,  # overrides config.validation_fraction in trials (None: keep)
    "sampler": "tpe",             # SAMPLERS
    "n_startup_trials": 10,       # random trials before TPE starts modelling
    "seed": None,                 # sampler seed (set it for single-worker reproducibility only)
    "pruner": "none",             # PRUNERS
    "pruner_startup_trials": 5,   # median: trials finished before pruning starts
    "pruner_warmup_steps": 0,     # median, threshold: no pruning before this train step
    "pruner_threshold": None,     # threshold: prune a trial whose validation accuracy is below
    "heartbeat_interval": 60,     # seconds between a running trial's heartbeats
    "grace_period": 180,          # seconds without heartbeat before a trial is stale
    "max_retry": 3,               # re-runs of a trial whose worker died
    "reconnect_seconds": 120,     # how long a worker retries a lost study database (0: no retry)
    "keep_trial_checkpoints": False,  # keep finished trials' checkpoints (metrics always kept)
    "compilation_cache": "jax_cache",  # launcher: JAX's persistent cache, under WORKDIR ("": off)
}

# Names of the samplers and pruners `lbjax.hpo.worker` builds (its SAMPLERS / PRUNERS).
SAMPLERS = ("tpe", "random")
PRUNERS = ("none", "median", "threshold")

# Search-space entry types and their required fields.
PARAM_TYPES: dict[str, tuple[str, ...]] = {
    "float": ("low", "high"),
    "int": ("low", "high"),
    "categorical": ("choices",),
}

_PLACEHOLDER_TYPES = {"validation_fraction": float, "seed": int, "pruner_threshold": float}


def default_config(**overrides) -> ml_collections.ConfigDict:
  """``config.hpo`` with every key of ``HPO_DEFAULTS`` (so each can be set from the command line),
  updated with ``overrides``."""
  c = ml_collections.ConfigDict()
  for key, value in {**HPO_DEFAULTS, **overrides}.items():
    c[key] = value if value is not None else config_dict.placeholder(_PLACEHOLDER_TYPES[key])
  return c


def settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """``HPO_DEFAULTS`` updated with ``config.hpo``; unknown keys are a ConfigError."""
  hpo = dict(HPO_DEFAULTS)
  for key, value in (config.get("hpo") or {}).items():
    if key not in HPO_DEFAULTS:
      raise ConfigError(f"config.hpo.{key}", f"unknown key; allowed: {', '.join(HPO_DEFAULTS)}")
    hpo[key] = value
  check_choice("config.hpo.sampler", hpo["sampler"], SAMPLERS)
  check_choice("config.hpo.pruner", hpo["pruner"], PRUNERS)
  threshold = hpo["pruner_threshold"]
  if (hpo["pruner"] == "threshold") != (threshold is not None) or not (
      threshold is None or 0.0 <= threshold <= 1.0):
    raise ConfigError("config.hpo.pruner_threshold",
                      "a validation accuracy in [0, 1], set exactly when config.hpo.pruner is "
                      f"'threshold'; got {threshold!r} with pruner {hpo['pruner']!r}")
  for key in ("heartbeat_interval", "grace_period"):
    if not isinstance(hpo[key], int) or hpo[key] <= 0:
      raise ConfigError(f"config.hpo.{key}",
                        f"must be a positive integer (seconds), got {hpo[key]!r}")
  if hpo["grace_period"] <= hpo["heartbeat_interval"]:
    raise ConfigError("config.hpo.grace_period",
                      f"must exceed config.hpo.heartbeat_interval ({hpo['heartbeat_interval']} s)")
  seconds = hpo["reconnect_seconds"]
  if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds >= 0:
    raise ConfigError("config.hpo.reconnect_seconds",
                      f"must be a number of seconds >= 0, got {seconds!r}")
  return hpo


def validate_search_space(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError for the first bad entry of ``config.search_space``."""
  space = config.get("search_space")
  if not space:
    raise ConfigError("config.search_space", "the config declares no search space (a ConfigDict "
                      "of {key, type, low, high, log, ...} entries; see configs/seed002_common.py)")
  for name, entry in space.items():
    where = f"config.search_space.{name}"
    if not isinstance(entry, ml_collections.ConfigDict) or "key" not in entry:
      raise ConfigError(where, "must be a ConfigDict with at least `key` and `type`")
    key = entry.key
    if key.split(".")[0] in ("search_space", "hpo"):
      raise ConfigError(f"{where}.key", f"{key!r} is not a training hyperparameter")
    try:
      dotted.get(config, key)
    except (KeyError, AttributeError, TypeError):
      raise ConfigError(f"{where}.key", f"config.{key} does not exist") from None
    check_choice(f"{where}.type", entry.get("type"), PARAM_TYPES)
    for field in PARAM_TYPES[entry.type]:
      if entry.get(field) is None:
        raise ConfigError(f"{where}.{field}", f"required for type {entry.type!r}")
    if entry.type == "categorical":
      if not entry.choices:
        raise ConfigError(f"{where}.choices", "must not be empty")
      continue
    if not entry.low <= entry.high:
      raise ConfigError(f"{where}.low", f"low={entry.low} must be <= high={entry.high}")
    if entry.get("log", False) and entry.low <= 0:
      raise ConfigError(f"{where}.low", f"a log-uniform range needs low > 0, got {entry.low}")
    step = entry.get("step", 1)
    if entry.type == "int" and not (isinstance(step, int) and step > 0):
      raise ConfigError(f"{where}.step", f"must be a positive integer, got {step!r}")


def untuned_phase2_note(config: ml_collections.ConfigDict) -> str | None:
  """For a SWAP config whose space names no ``swap.*`` key: the line saying that phase 2 runs the
  config's own ``swap.optimizer`` in every trial (None otherwise)."""
  block = config.get("swap")
  if block is None or not block.enabled:
    return None
  if any(entry.key.startswith("swap.") for entry in config.search_space.values()):
    return None
  opt = block.optimizer
  rate = "" if opt.get("learning_rate") is None else f", learning_rate {opt.learning_rate:g}"
  return (f"the search space tunes no config.swap.* key: SWAP's phase 2 runs config.swap.optimizer "
          f"({opt.name}{rate}) and config.swap.schedule as the config sets them in every trial")


def columns(config: ml_collections.ConfigDict) -> list[list[str]]:
  """``[name, label, key]`` of every search-space entry, ordered by the entries' optional
  ``column`` (a ConfigDict sorts its keys), then by name."""
  entries = sorted(config.search_space.items(),
                   key=lambda item: (item[1].get("column", math.inf), item[0]))
  return [[name, e.get("label", name), e.key] for name, e in entries]


def corner(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The low end of every range (the first choice of a categorical entry)."""
  return {name: (e.choices[0] if e.type == "categorical" else e.low)
          for name, e in config.search_space.items()}


def trial_config(config: ml_collections.ConfigDict, params: dict[str, Any]
                 ) -> ml_collections.ConfigDict:
  """``config`` with the search-space ``params`` (by entry name) and the HPO validation split."""
  out = copy.deepcopy(config)
  for name, value in params.items():
    key = config.search_space[name].key
    try:
      dotted.assign(out, key, value)
    except (TypeError, ValueError) as e:
      raise ConfigError(f"config.search_space.{name}.type",
                        f"value {value!r} does not fit config.{key}: {e}") from None
  fraction = settings(config)["validation_fraction"]
  if fraction is not None:
    out.validation_fraction = fraction
  if not out.validation_fraction > 0:
    raise ConfigError("config.validation_fraction", "the HPO objective is the validation "
                      "accuracy: set config.validation_fraction or config.hpo.validation_fraction "
                      "> 0 (the test split is never tuned on)")
  out.progress_bar = False  # N workers writing progress bars to log files help no one
  return out
