"""Model registry: ``config.model`` → one flax.linen module.

Every field of ``config.model`` except ``name`` is passed as a keyword to the model class, so the
allowed keys of a model are exactly its dataclass fields (see :func:`fields`). Every model is called
as ``model.apply(variables, x, train=...)`` on float32 NHWC images and returns
``[batch, num_classes]`` logits; BatchNorm statistics live in the ``batch_stats`` collection.
"""

import dataclasses

import flax.linen as nn

from lbjax.errors import ConfigError, check_choice
from lbjax.models import layers
from lbjax.models.lenet import LeNet5
from lbjax.models.resnet import ResNet, ResNet18, ResNet34, ResNet56, ResNetTiny
from lbjax.models.vgg import VGG9

MODELS: dict[str, type[nn.Module]] = {
    "lenet5": LeNet5,
    "vgg9": VGG9,
    "resnet18": ResNet18,
    "resnet34": ResNet34,
    "resnet56": ResNet56,
    "resnet_tiny": ResNetTiny,
}

# Dataclass fields of every flax module that are not hyperparameters.
_NOT_CONFIG = ("parent", "name", "num_classes")


def fields(name: str) -> list[str]:
  """The ``config.model`` keys (besides ``name``) accepted by model ``name``."""
  check_choice("config.model.name", name, MODELS)
  return [f.name for f in dataclasses.fields(MODELS[name]) if f.name not in _NOT_CONFIG]


def validate(name: str, **kwargs) -> None:
  """Raises ConfigError for an unknown model name, an unknown field or a bad ghost batch size."""
  allowed = fields(name)
  for key in kwargs:
    if key not in allowed:
      raise ConfigError(
          f"config.model.{key}",
          f"not a field of model {name!r}; allowed: {', '.join(allowed)}")
  layers.check_ghost_batch_size(kwargs.get("ghost_batch_size"))


def create(name: str, num_classes: int, **kwargs) -> nn.Module:
  """The model ``name`` with ``num_classes`` outputs and fields ``kwargs``.

  Example::

    model = create("resnet18", 10, axis_name="batch", ghost_batch_size=128)
    variables = model.init(key, images, train=False)
    logits, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])

  Raises:
    ConfigError: ``config.model.name`` for an unknown name (listing the registered ones),
      ``config.model.<key>`` for a field the model does not have (listing its fields).
  """
  validate(name, **kwargs)
  return MODELS[name](num_classes=num_classes, **kwargs)


__all__ = ["MODELS", "create", "fields", "validate", "LeNet5", "VGG9", "ResNet", "ResNet18",
           "ResNet34", "ResNet56", "ResNetTiny"]
