"""Model registry: ``config.model`` → one flax.linen module.

Every field of ``config.model`` except ``name`` is passed as a keyword to the model class, so the
allowed keys of a model are exactly its dataclass fields (see :func:`fields`). Every model is called
as ``model.apply(variables, x, train=...)`` on float32 NHWC images and returns
``[batch, num_classes]`` float32 logits; BatchNorm statistics live in the ``batch_stats``
collection.

``config.model.dtype`` is the computation dtype (:data:`DTYPES`): ``"float32"`` (default) or
``"bfloat16"`` (convolutions, dense layers and activations in bfloat16; parameters, BatchNorm
statistics, the logits and so the loss, gradients and optimizer state stay float32).
``"float16"`` is refused (:data:`REFUSED_DTYPES`): its 5-bit exponent underflows small gradients
unless the loss is scaled, and lbjax has no loss scaling.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from lbjax.errors import ConfigError
from lbjax.errors import check_choice
from lbjax.models import layers
from lbjax.models.lenet import LeNet5
from lbjax.models.resnet import ResNet
from lbjax.models.resnet import ResNet18
from lbjax.models.resnet import ResNet34
from lbjax.models.resnet import ResNet56
from lbjax.models.resnet import ResNetTiny
from lbjax.models.vgg import VGG9

MODELS: dict[str, type[nn.Module]] = {
    "lenet5": LeNet5,
    "vgg9": VGG9,
    "resnet18": ResNet18,
    "resnet34": ResNet34,
    "resnet56": ResNet56,
    "resnet_tiny": ResNetTiny,
}

# config.model.dtype -> computation dtype.
DTYPES: dict[str, Any] = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# Dtypes a user may expect, and why lbjax refuses them.
REFUSED_DTYPES: dict[str, str] = {
    "float16": "float16 needs loss scaling (its smallest normal number is 6e-5, so small "
               "gradients underflow to 0) and lbjax has none; use bfloat16 (float32's exponent "
               "range, no scaling needed)",
}

# Dataclass fields of every flax module that are not hyperparameters.
_NOT_CONFIG = ("parent", "name", "num_classes")


def fields(name: str) -> list[str]:
  """The ``config.model`` keys (besides ``name``) accepted by model ``name``."""
  check_choice("config.model.name", name, MODELS)
  return [f.name for f in dataclasses.fields(MODELS[name]) if f.name not in _NOT_CONFIG]


def dtype_of(value: Any) -> Any:
  """The computation dtype named by ``value`` (a key of :data:`DTYPES`, a jnp dtype, or None for
  float32).

  Raises:
    ConfigError: ``config.model.dtype`` for float16 (saying why) or any other dtype.
  """
  if value is None:
    return jnp.float32
  try:
    name = jnp.dtype(value).name
  except TypeError:
    name = str(value)
  if name in REFUSED_DTYPES:
    raise ConfigError("config.model.dtype", REFUSED_DTYPES[name])
  if name not in DTYPES:
    raise ConfigError("config.model.dtype",
                      f"unknown computation dtype {value!r}; allowed: {', '.join(DTYPES)}")
  return DTYPES[name]


def validate(name: str, **kwargs) -> None:
  """Raises ConfigError for an unknown model name, an unknown field, a bad ghost batch size or a
  bad computation dtype."""
  allowed = fields(name)
  for key in kwargs:
    if key not in allowed:
      raise ConfigError(
          f"config.model.{key}",
          f"not a field of model {name!r}; allowed: {', '.join(allowed)}")
  layers.check_ghost_batch_size(kwargs.get("ghost_batch_size"))
  dtype_of(kwargs.get("dtype"))


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Validates ``config.model``: its name, that every other key is a field of that model, the
  ghost batch size and the computation dtype (``config.model.dtype``).

  Raises:
    ConfigError: naming the first bad ``config.model.<key>``.
  """
  validate(config.model.name, **{k: v for k, v in config.model.items() if k != "name"})


def create(name: str, num_classes: int, **kwargs) -> nn.Module:
  """The model ``name`` with ``num_classes`` outputs and fields ``kwargs``.

  Example::

    model = create("resnet18", 10, axis_name="batch", ghost_batch_size=128, dtype="bfloat16")
    variables = model.init(key, images, train=False)
    logits, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])

  Raises:
    ConfigError: ``config.model.name`` for an unknown name (listing the registered ones),
      ``config.model.<key>`` for a field the model does not have (listing its fields) or a bad
      value of ``ghost_batch_size`` or ``dtype``.
  """
  validate(name, **kwargs)
  if "dtype" in kwargs:
    kwargs["dtype"] = dtype_of(kwargs["dtype"])
  return MODELS[name](num_classes=num_classes, **kwargs)


__all__ = [
  "DTYPES",
  "MODELS",
  "REFUSED_DTYPES",
  "VGG9",
  "LeNet5",
  "ResNet",
  "ResNet18",
  "ResNet34",
  "ResNet56",
  "ResNetTiny",
  "create",
  "dtype_of",
  "fields",
  "validate",
  "validate_config",
]
