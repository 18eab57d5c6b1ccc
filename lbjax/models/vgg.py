"""VGG-9 of Li, Xu, Taylor, Studer & Goldstein 2018, "Visualizing the Loss Landscape of Neural
Nets" (NeurIPS): the CIFAR-10 network of their small-batch (128) vs large-batch (8192) sharpness
comparison, as defined in their code ``tomgoldstein/loss-landscape``, ``cifar10/models/vgg.py``
(config ``'VGG9'``).
"""

from collections.abc import Sequence

import flax.linen as nn

from lbjax.models import base
from lbjax.models import layers


class VGG9(base.Classifier):
  """Seven 3x3 conv-BN-ReLU layers, one fc-BN-ReLU layer and a linear classifier (9 layers).

  ``stages`` (default ``((64, 64), (128, 128), (256, 256, 256))``) lists the conv widths of each
  stage; every stage ends with 2x2 max-pooling (stride 2, SAME padding, which equals PyTorch's
  ``ceil_mode=True`` of the reference). The feature map is flattened into fc(``hidden``)-BN-ReLU
  and a dense classifier. Convolutions have biases, as in the reference. On 32x32x3, 10 classes:
  conv 1,735,488 + BN 2,816 + fc 1,048,832 + classifier 2,570 = 2,789,706 parameters.

  Small inputs work because SAME pooling of a 1x1 map is the identity: 8x8 → 4 → 2 → 1, and the
  fc layer then sees 256 features instead of 4x4x256.

  Attributes:
    stages: conv widths per stage, each stage followed by max-pooling.
    hidden: width of the fc layer before the classifier.
  """
  stages: Sequence[Sequence[int]] = ((64, 64), (128, 128), (256, 256, 256))
  hidden: int = 256

  @nn.compact
  def __call__(self, x, train: bool = True):
    x = x.astype(self.dtype)
    layer = 0
    for widths in self.stages:
      for features in widths:
        layer += 1
        x = layers.conv(features, 3, use_bias=True, dtype=self.dtype, name=f"conv{layer}")(x)
        x = nn.relu(self._norm(train, f"bn{layer}")(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
    x = x.reshape((x.shape[0], -1))
    x = layers.dense(self.hidden, dtype=self.dtype, name="fc")(x)
    x = nn.relu(self._norm(train, "fc_bn")(x))
    return layers.logits(x, self.num_classes, dtype=self.dtype)

  def _norm(self, train, name):
    return layers.norm(train, self.axis_name, self.ghost_batch_size, self.dtype, name=name)
