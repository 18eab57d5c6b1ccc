"""ResNets with BasicBlocks (He, Zhang, Ren & Sun 2016, "Deep Residual Learning for Image
Recognition", CVPR), in the CIFAR forms used by large-batch studies.

* ``resnet18`` / ``resnet34``: the ImageNet stage layout ([2,2,2,2] / [3,4,6,3] BasicBlocks of
  64-128-256-512 channels) with a CIFAR stem: one 3x3 stride-1 conv and no max-pool, as in
  ``kuangliu/pytorch-cifar`` and ``tomgoldstein/loss-landscape`` (``cifar10/models/resnet.py``).
  Projection shortcuts (option B: 1x1 conv + BN) where the shape changes. With 10 classes:
  11,173,962 and 21,282,122 parameters.
* ``resnet56``: He et al. §4.2, the 6n+2 CIFAR network with n = 9: 3 stages of 9 BasicBlocks with
  16/32/64 channels, identity shortcuts with zero-padded channels and stride-2 subsampling where
  the shape changes (option A, as in the paper's CIFAR experiments, so shortcuts add no
  parameters). With 10 classes: 853,018 parameters (the paper's "0.85M").
* ``resnet_tiny``: two stages of one block with 8/16 channels, for tests.

Every network ends with global average pooling and one dense layer, so any input size works.
"""

from collections.abc import Callable, Sequence
import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from lbjax.errors import ConfigError
from lbjax.errors import check_choice
from lbjax.models import base
from lbjax.models import layers


class BasicBlock(nn.Module):
  """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU (He et al. 2016, Fig. 2 left).

  Attributes:
    features: output channels.
    strides: stride of the first conv (and of the shortcut).
    shortcut: ``"A"`` (subsample + zero-pad channels, parameter-free) or ``"B"`` (1x1 conv + BN),
      used only where the shape changes; otherwise the shortcut is the identity.
    norm: ``norm(name=..., scale_init=...)`` → normalisation module (``layers.norm`` with the
      model's mode bound).
    dtype: computation dtype.
    zero_init_residual: start the last BN scale of the residual branch at zero, so the block
      starts as the identity (Goyal et al. 2017, "Accurate, Large Minibatch SGD", §5.1).
  """
  features: int
  strides: int
  shortcut: str
  norm: Callable[..., nn.Module]
  dtype: Any = jnp.float32
  zero_init_residual: bool = False

  @nn.compact
  def __call__(self, x):
    y = layers.conv(self.features, 3, strides=self.strides, dtype=self.dtype, name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = layers.conv(self.features, 3, dtype=self.dtype, name="conv2")(y)
    last_scale_init = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
    y = self.norm(name="bn2", scale_init=last_scale_init)(y)
    if self.strides != 1 or x.shape[-1] != self.features:
      if self.shortcut == "A":
        x = x[:, ::self.strides, ::self.strides, :]
        x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, self.features - x.shape[-1])))
      else:
        x = layers.conv(self.features, 1, strides=self.strides, dtype=self.dtype,
                        name="shortcut_conv")(x)
        x = self.norm(name="shortcut_bn")(x)
    return nn.relu(x + y)


class ResNet(base.Classifier):
  """Stem conv3x3-BN-ReLU, stages of BasicBlocks, global average pooling, dense classifier.

  The first block of every stage but the first has stride 2. The stem has ``widths[0]`` channels.

  Attributes:
    stage_sizes: BasicBlocks per stage.
    widths: channels per stage.
    shortcut: ``"A"`` or ``"B"``, see :class:`BasicBlock`.
    zero_init_residual: see :class:`BasicBlock`.
  """
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  widths: Sequence[int] = (64, 128, 256, 512)
  shortcut: str = "B"
  zero_init_residual: bool = False

  @nn.compact
  def __call__(self, x, train: bool = True):
    check_choice("config.model.shortcut", self.shortcut, ("A", "B"))
    if len(self.stage_sizes) != len(self.widths):
      raise ConfigError("config.model.widths",
                        f"needs one width per stage: stage_sizes={tuple(self.stage_sizes)}, "
                        f"widths={tuple(self.widths)}")
    norm = functools.partial(layers.norm, train, self.axis_name, self.ghost_batch_size, self.dtype)
    x = layers.conv(self.widths[0], 3, dtype=self.dtype, name="stem_conv")(x.astype(self.dtype))
    x = nn.relu(norm(name="stem_bn")(x))
    for i, (num_blocks, features) in enumerate(zip(self.stage_sizes, self.widths)):
      for j in range(num_blocks):
        x = BasicBlock(features, strides=2 if i > 0 and j == 0 else 1, shortcut=self.shortcut,
                       norm=norm, dtype=self.dtype, zero_init_residual=self.zero_init_residual,
                       name=f"stage{i + 1}_block{j + 1}")(x)
    x = jnp.mean(x, axis=(1, 2))
    return layers.logits(x, self.num_classes, dtype=self.dtype)


class ResNet18(ResNet):
  """CIFAR ResNet-18: [2, 2, 2, 2] BasicBlocks, 64-128-256-512, option B (11,173,962 params)."""
  stage_sizes: Sequence[int] = (2, 2, 2, 2)


class ResNet34(ResNet):
  """CIFAR ResNet-34: [3, 4, 6, 3] BasicBlocks, 64-128-256-512, option B (21,282,122 params)."""
  stage_sizes: Sequence[int] = (3, 4, 6, 3)


class ResNet56(ResNet):
  """He et al. 2016 §4.2 ResNet-56: 3 x 9 BasicBlocks, 16-32-64, option A (853,018 params)."""
  stage_sizes: Sequence[int] = (9, 9, 9)
  widths: Sequence[int] = (16, 32, 64)
  shortcut: str = "A"


class ResNetTiny(ResNet):
  """Two stages of one BasicBlock, 8-16 channels, option B: a ResNet small enough for tests."""
  stage_sizes: Sequence[int] = (1, 1)
  widths: Sequence[int] = (8, 16)
