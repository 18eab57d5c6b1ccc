"""Optimizer registry: ``config.optimizer`` → one ``optax.GradientTransformation``.

Every field of ``config.optimizer`` except ``name`` is passed as a keyword to the factory, so the
allowed keys of an optimizer are exactly its factory's keyword arguments (``mask`` excluded: the
registry supplies the weight-decay mask).
"""

import inspect
from typing import Any, Callable

import jax
import ml_collections
import optax

from lbjax.errors import ConfigError, check_choice
from lbjax.optim import baselines

OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "sgd": baselines.sgd,
    "adam": baselines.adam,
    "adamw": baselines.adamw,
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


def validate(opt_config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError for an unknown optimizer name or hyperparameter."""
  check_choice("config.optimizer.name", opt_config.name, OPTIMIZERS)
  allowed = hyperparameters(opt_config.name)
  for key, value in opt_config.items():
    if key == "name":
      continue
    if key not in allowed:
      raise ConfigError(
          f"config.optimizer.{key}",
          f"not a hyperparameter of optimizer {opt_config.name!r}; allowed: {', '.join(allowed)}")
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
  kwargs = {k: v for k, v in opt_config.items() if k not in ("name", "learning_rate")}
  kwargs.update(extra)
  factory = OPTIMIZERS[opt_config.name]
  if "mask" in inspect.signature(factory).parameters:
    kwargs["mask"] = decay_mask
  return factory(learning_rate=learning_rate, **kwargs)
