"""Optimizer registry: ``config.optimizer`` → one ``optax.GradientTransformation``.

Every field of ``config.optimizer`` except ``name`` is passed as a keyword to the factory, so the
allowed keys of an optimizer are its factory's keyword arguments, with two translations:

* ``mask`` is a name in ``MASKS``: ``"kernels"`` (the default; tensors with ndim > 1, biases and
  BatchNorm scale/bias excluded) or ``"all"`` (every tensor, e.g. seed 000's Algorithm 1 for
  LARS), turned into the factory's ``mask``;
* the keys of the statistics capture (``kfac_capture.CONFIG_KEYS``: ``fisher``) are accepted for
  the optimizers that need statistics and go to ``kfac_capture.from_config``, not the factory.

A factory's ``ValueError`` for a bad argument (``checks.InvalidArgument``) becomes the one-line
``ConfigError`` of ``config.optimizer.<argument>``.

`config_block` makes a ``config.optimizer`` holding a typed placeholder for the hyperparameters
of *every* registered optimizer, so ``--config.optimizer.name=adam --config.optimizer.b1=0.8``
works on a locked config. A ``None`` value means "the factory's default"; a value set for a key
the chosen optimizer does not take is an error naming that key.

`switch_block` is what a block (``config.optimizer``, ``config.swap.optimizer``: :data:`BLOCKS`)
becomes when its ``name`` is changed from the command line (``python -m lbjax.main``,
``python -m lbjax.hpo``) or by a sweep's dotted ``"optimizer.name"`` override: the new
optimizer's defaults, the block's learning rate, and only the keys set explicitly beside the name,
so ``--config.optimizer.name=hybrid`` works on a config whose block was made for SGD, while
``--config.optimizer.name=hybrid --config.optimizer.momentum=0.5`` is refused, naming the key.
"""

from collections.abc import Callable, Mapping
import inspect
from typing import Any

import jax
import ml_collections
from ml_collections import config_dict
import optax

from lbjax import dotted
from lbjax import schedules
from lbjax.errors import ConfigError
from lbjax.errors import check_choice
from lbjax.optim import baselines
from lbjax.optim import checks
from lbjax.optim import kfac_capture
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

  Biases and BatchNorm scale/bias (ndim 1) are excluded. This is lbjax's default
  (``config.optimizer.mask="kernels"``), not something a seed states; ``"all"`` selects every
  tensor.
  """
  return jax.tree.map(lambda p: p.ndim > 1, params)


# config.optimizer.mask -> the factory's ``mask`` (None: every tensor).
MASKS: dict[str, Any] = {"kernels": decay_mask, "all": None}
DEFAULT_MASK = "kernels"


def capture_keys(name: str) -> list[str]:
  """The ``config.optimizer`` keys of the statistics capture that optimizer ``name`` takes."""
  return list(kfac_capture.CONFIG_KEYS) if name in kfac_capture.OPTIMIZERS_WITH_STATISTICS else []


def hyperparameters(name: str) -> list[str]:
  """The ``config.optimizer`` keys accepted by optimizer ``name``."""
  return list(inspect.signature(OPTIMIZERS[name]).parameters) + capture_keys(name)


def _field_type(parameter: inspect.Parameter) -> type:
  if parameter.name == "mask":
    return str  # a name in MASKS
  default = parameter.default
  if isinstance(default, (bool, int, float, str)):
    return type(default)
  return float  # no default, None, or a schedule-valued default: numbers from a config


def config_block(name: str = "sgd", **values) -> ml_collections.ConfigDict:
  """``config.optimizer`` for ``name``: typed placeholders for every registered hyperparameter.

  Example: ``config.optimizer = registry.config_block("lars", learning_rate=3.2, momentum=0.9)``.
  """
  fields: dict[str, type] = {key: type(default)
                             for key, default in kfac_capture.CONFIG_KEYS.items()}
  for factory in OPTIMIZERS.values():
    for key, parameter in inspect.signature(factory).parameters.items():
      if key not in fields:
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


# The config blocks that hold an optimizer (dotted paths below the config's root).
BLOCKS = ("optimizer", "swap.optimizer")


def switch_block(block: ml_collections.ConfigDict, name: str, explicit: Mapping[str, Any],
                 key: str = "config.optimizer") -> ml_collections.ConfigDict:
  """The block ``block`` becomes when its name is changed to ``name``.

  ``config_block(name, ...)``: every hyperparameter at ``name``'s factory default, except

  * ``learning_rate``: kept from ``block`` (a required key needs a value; another optimizer
    usually needs another rate, so set it beside the name);
  * the keys of ``explicit`` (the values set for this block beside the name, e.g. on the same
    command line; ``name`` itself is ignored), validated against ``name`` as any value is: one
    that ``name`` does not take is refused (`validate`).

  Args:
    block: the block as the config file made it (its other values are dropped).
    name: the new optimizer, a key of :data:`OPTIMIZERS`.
    explicit: block key -> value set explicitly beside the name.
    key: the block's dotted name in error messages (``config.swap.optimizer``).

  Raises:
    ConfigError: ``<key>.name`` for an unknown optimizer, ``<key>.<k>`` for an explicit key no
      registered optimizer has.
  """
  check_choice(f"{key}.name", name, OPTIMIZERS)
  values = {}
  if "learning_rate" in hyperparameters(name) and block.get("learning_rate") is not None:
    values["learning_rate"] = block.learning_rate
  values.update({k: v for k, v in explicit.items() if k != "name"})
  try:
    return config_block(name, **values)
  except ConfigError as e:
    raise ConfigError(e.key.replace("config.optimizer", key, 1), e.message) from None


def switch_blocks(config: ml_collections.ConfigDict, overrides: Mapping[str, Any],
                  names_before: Mapping[str, str] | None = None) -> list[str]:
  """Applies `switch_block` in place to each block of :data:`BLOCKS` whose ``name`` is in
  ``overrides`` (dotted key -> value, as ml_collections' ``get_override_values`` returns the
  ``--config.<key>`` flags) with a value other than ``names_before[block]`` (the config file's;
  None: the names in ``config``, when the overrides are not applied yet).

  A block whose name is overridden with its own name, or replaced whole, or that ``config``
  lacks, is left as it is.

  Returns:
    The blocks (dotted paths) that were switched and kept the file's ``learning_rate`` (not set
    in ``overrides``), for a launcher to mention.
  """
  kept_rate = []
  for path in BLOCKS:
    name = overrides.get(f"{path}.name")
    try:
      parent, last = dotted.parent(config, path)
    except KeyError:  # a config without this block (no config.swap)
      continue
    if name is None or path in overrides or last not in parent:
      continue
    before = parent[last].get("name") if names_before is None else names_before.get(path)
    if name == before:
      continue
    prefix = path + "."
    explicit = {k[len(prefix):]: v for k, v in overrides.items()
                if k.startswith(prefix) and "." not in k[len(prefix):]}
    block = switch_block(parent[last], name, explicit, key=f"config.{path}")
    if parent.is_locked:
      block.lock()
    parent[last] = block
    if "learning_rate" not in explicit and block.get("learning_rate") is not None:
      kept_rate.append(path)
  return kept_rate


def set_values(opt_config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The hyperparameters actually set (not None), without ``name``."""
  return {k: v for k, v in opt_config.items() if k != "name" and v is not None}


def validate(opt_config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError for an unknown optimizer name or hyperparameter, or a bad value."""
  lr = opt_config.get("learning_rate")
  build(opt_config, 1.0 if lr is None else lr)  # the factory checks the values


def _check_keys(opt_config: ml_collections.ConfigDict) -> None:
  """The names of ``opt_config`` and the values the registry itself interprets."""
  check_choice("config.optimizer.name", opt_config.name, OPTIMIZERS)
  allowed = hyperparameters(opt_config.name)
  for key in set_values(opt_config):
    if key not in allowed:
      raise ConfigError(
          f"config.optimizer.{key}",
          f"not a hyperparameter of optimizer {opt_config.name!r}; allowed: {', '.join(allowed)} "
          f"(a value for another optimizer: drop it, or start from a block made for "
          f"{opt_config.name!r}, e.g. --config=configs/quickstart.py:{opt_config.name})")
  lr = opt_config.get("learning_rate")
  if lr is not None and not lr > 0:
    raise ConfigError("config.optimizer.learning_rate", f"must be > 0, got {lr}")
  if opt_config.get("mask") is not None:
    check_choice("config.optimizer.mask", opt_config.mask, MASKS)
  if capture_keys(opt_config.name):
    kfac_capture.settings(opt_config)


def _factory_kwargs(opt_config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The factory's keywords of ``opt_config`` (no learning rate, no capture keys, mask resolved)."""
  skip = {"learning_rate", *capture_keys(opt_config.name)}
  kwargs = {k: v for k, v in set_values(opt_config).items() if k not in skip}
  if "mask" in inspect.signature(OPTIMIZERS[opt_config.name]).parameters:
    kwargs["mask"] = MASKS[kwargs.get("mask") or DEFAULT_MASK]
  return kwargs


def build(opt_config: ml_collections.ConfigDict, learning_rate: optax.Schedule,
          **extra) -> optax.GradientTransformation:
  """The optimizer of ``opt_config`` with ``learning_rate`` (a schedule) and its mask.

  ``extra`` carries keyword arguments computed by the train loop (e.g. a weight-decay schedule);
  they override config values of the same name.

  Raises:
    ConfigError: an unknown name or key, or ``config.optimizer.<argument>`` for an argument
      the factory refuses.
  """
  _check_keys(opt_config)
  kwargs = {**_factory_kwargs(opt_config), **extra}
  try:
    return OPTIMIZERS[opt_config.name](learning_rate=learning_rate, **kwargs)
  except checks.InvalidArgument as e:
    raise ConfigError(f"config.optimizer.{e.argument}", e.message) from None


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Validates ``config.optimizer`` and the keys that change it: ``config.noise``,
  ``config.smoothout`` and ``config.schedule.weight_decay_off_fraction``."""
  validate(config.optimizer)
  for block in ("noise", "smoothout"):
    if block in config:
      schedules.validate_annealed(config[block], f"config.{block}")
  if "smoothout" in config and not isinstance(config.smoothout.adaptive, bool):
    raise ConfigError("config.smoothout.adaptive",
                      f"must be True or False, got {config.smoothout.adaptive!r}")
  fraction = config.schedule.get("weight_decay_off_fraction")
  if fraction is not None:
    if (isinstance(fraction, bool) or not isinstance(fraction, (int, float))
        or not 0 < fraction <= 1):
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
