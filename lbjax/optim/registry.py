"""Optimizer registry: ``config.optimizer`` → one ``optax.GradientTransformation``.

Every field of ``config.optimizer`` except ``name`` is passed as a keyword to the factory, so the
allowed keys of an optimizer are exactly its factory's keyword arguments (``mask`` excluded: the
registry supplies the weight-decay mask).

`config_block` makes a ``config.optimizer`` holding a typed placeholder for the hyperparameters
of *every* registered optimizer, so ``--config.optimizer.name=adam --config.optimizer.b1=0.8``
works on a locked config. A ``None`` value means "the factory's default"; a value set for a key
the chosen optimizer does not take is an error naming that key.
"""

import inspect
from typing import Any, Callable

import jax
import ml_collections
from ml_collections import config_dict
import optax

from lbjax.errors import ConfigError, check_choice
from lbjax.optim import baselines
from lbjax.optim.hybrid import hybrid
from lbjax.optim.kfac import kfac
from lbjax.optim.lamb import lamb
from lbjax.optim.lars import lars
from lbjax.optim.nag import nag
from lbjax.optim.noise import add_uniform_noise

OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "sgd": baselines.sgd,
    "nag": nag,
    "adam": baselines.adam,
    "adamw": baselines.adamw,
    "radam": baselines.radam,
    "adabelief": baselines.adabelief,
    "lars": lars,
    "lamb": lamb,
    "hybrid": hybrid,
    "kfac": kfac,
}


def decay_mask(params) -> Any:
  """True for tensors that get weight decay / layer-wise adaptation: kernels (ndim > 1).

  Biases and BatchNorm scale/bias (ndim 1) are excluded, as in the seeds' configs.
  """
  return jax.tree.map(lambda p: p.ndim > 1, params)


def hyperparameters(name: str) -> list[str]:
  """The ``config.optimizer`` keys accepted by optimizer ``name``."""
  sig = inspect.signature(OPTIMIZERS[name])
  return [k for k in sig.parameters if k != "mask"]


def _field_type(parameter: inspect.Parameter) -> type:
  default = parameter.default
  if isinstance(default, (bool, int, float, str)):
    return type(default)
  return float  # no default, None, or a schedule-valued default: numbers from a config


def config_block(name: str = "sgd", **values) -> ml_collections.ConfigDict:
  """``config.optimizer`` for ``name``: typed placeholders for every registered hyperparameter.

  Example: ``config.optimizer = registry.config_block("lars", learning_rate=3.2, momentum=0.9)``.
  """
  fields: dict[str, type] = {}
  for factory in OPTIMIZERS.values():
    for key, parameter in inspect.signature(factory).parameters.items():
      if key != "mask" and key not in fields:
        fields[key] = _field_type(parameter)
  block = ml_collections.ConfigDict()
  block.name = name
  for key in sorted(fields):
    block[key] = config_dict.placeholder(fields[key])
  for key, value in values.items():
    if key not in fields:
      raise ConfigError(f"config.optimizer.{key}", "no registered optimizer takes this "
                        f"hyperparameter; known: {', '.join(sorted(fields))}")
    block[key] = value
  return block


def set_values(opt_config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The hyperparameters actually set (not None), without ``name``."""
  return {k: v for k, v in opt_config.items() if k != "name" and v is not None}


def validate(opt_config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError for an unknown optimizer name or hyperparameter."""
  check_choice("config.optimizer.name", opt_config.name, OPTIMIZERS)
  allowed = hyperparameters(opt_config.name)
  for key, value in set_values(opt_config).items():
    if key not in allowed:
      raise ConfigError(
          f"config.optimizer.{key}",
          f"not a hyperparameter of optimizer {opt_config.name!r}; allowed: {', '.join(allowed)} "
          f"(a value set for another optimizer: start from a config block made for "
          f"{opt_config.name!r}, e.g. --config=configs/quickstart.py:{opt_config.name})")
  lr = opt_config.get("learning_rate")
  if lr is not None and not lr > 0:
    raise ConfigError("config.optimizer.learning_rate", f"must be > 0, got {lr}")


def build(opt_config: ml_collections.ConfigDict, learning_rate: optax.Schedule,
          **extra) -> optax.GradientTransformation:
  """The optimizer of ``opt_config`` with ``learning_rate`` (a schedule) and the decay mask.

  ``extra`` carries keyword arguments computed by the train loop (e.g. a weight-decay schedule);
  they override config values of the same name.
  """
  validate(opt_config)
  kwargs = {k: v for k, v in set_values(opt_config).items() if k != "learning_rate"}
  kwargs.update(extra)
  factory = OPTIMIZERS[opt_config.name]
  if "mask" in inspect.signature(factory).parameters:
    kwargs["mask"] = decay_mask
  return factory(learning_rate=learning_rate, **kwargs)


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Validates ``config.optimizer`` and the keys that change it: ``config.noise``,
  ``config.smoothout`` and ``config.schedule.weight_decay_off_fraction``."""
  from lbjax import schedules  # pylint: disable=g-import-not-at-top
  validate(config.optimizer)
  for block in ("noise", "smoothout"):
    if block in config:
      schedules.validate_annealed(config[block], f"config.{block}")
  if "smoothout" in config and not isinstance(config.smoothout.adaptive, bool):
    raise ConfigError("config.smoothout.adaptive",
                      f"must be True or False, got {config.smoothout.adaptive!r}")
  fraction = config.schedule.get("weight_decay_off_fraction")
  if fraction is not None:
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
      raise ConfigError("config.schedule.weight_decay_off_fraction",
                        f"must be in (0, 1] (seed 003: 0.75) or None, got {fraction!r}")
    if "weight_decay" not in hyperparameters(config.optimizer.name):
      raise ConfigError("config.schedule.weight_decay_off_fraction",
                        f"optimizer {config.optimizer.name!r} has no weight_decay")


def weight_decay_of(opt_config: ml_collections.ConfigDict) -> float:
  """The optimizer's weight decay: the config's value, else its factory's default."""
  if opt_config.get("weight_decay") is not None:
    return opt_config.weight_decay
  return inspect.signature(OPTIMIZERS[opt_config.name]).parameters["weight_decay"].default


def from_config(config: ml_collections.ConfigDict, learning_rate: optax.Schedule,
                total_steps: int) -> optax.GradientTransformation:
  """The whole update rule of a config: the optimizer of ``config.optimizer`` with its
  weight-decay schedule (``config.schedule.weight_decay_off_fraction``), followed by the
  uniform update noise of ``config.noise`` (seed 001 eq. (1)) when its scale is > 0.

  SmoothOut (``config.smoothout``) perturbs the weights the gradient is taken at, so it lives
  in the train step, not here.
  """
  from lbjax import schedules  # pylint: disable=g-import-not-at-top
  validate_config(config)
  extra = {}
  if config.schedule.get("weight_decay_off_fraction") is not None:
    extra["weight_decay"] = schedules.build_weight_decay(
        config, total_steps, weight_decay_of(config.optimizer))
  tx = build(config.optimizer, learning_rate, **extra)
  noise = config.get("noise")
  if noise is not None and noise.scale > 0:
    tx = optax.chain(tx, add_uniform_noise(schedules.build_annealed(noise, total_steps),
                                           seed=config.seed))
  return tx
