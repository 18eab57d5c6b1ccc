"""LeNet-5 (LeCun, Bottou, Bengio & Haffner 1998, "Gradient-based learning applied to document
recognition", §II.B), in its common modern form: ReLU and max-pooling instead of scaled tanh and
trainable subsampling, and a full C3 connection table.
"""

import flax.linen as nn
import jax.numpy as jnp

from lbjax.models import base
from lbjax.models import layers


class LeNet5(base.Classifier):
  """conv5x5(6) → pool → conv5x5(16) → pool → fc120 → fc84 → fc(num_classes).

  VALID convolutions and 2x2 max-pooling; on 32x32x3 with 10 classes it has 62,006 parameters.
  An input smaller than ``min_size`` is zero-padded (centred) to ``min_size`` x ``min_size``,
  as LeCun et al. padded 28x28 MNIST digits to 32x32, so 8x8 digits work and the parameter count
  does not depend on the image size below ``min_size``. Has no normalisation: ``axis_name`` and
  ``ghost_batch_size`` are accepted and ignored.

  Attributes:
    min_size: smaller inputs are zero-padded to this height and width.
  """
  min_size: int = 32

  @nn.compact
  def __call__(self, x, train: bool = True):
    del train  # no dropout, no normalisation
    pads = [max(self.min_size - n, 0) for n in x.shape[1:3]]
    x = jnp.pad(x, [(0, 0)] + [(p // 2, p - p // 2) for p in pads] + [(0, 0)]).astype(self.dtype)
    for i, features in enumerate((6, 16)):
      x = layers.conv(features, 5, padding="VALID", use_bias=True, dtype=self.dtype,
                      name=f"conv{i + 1}")(x)
      x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    for i, features in enumerate((120, 84)):
      x = nn.relu(layers.dense(features, dtype=self.dtype, name=f"fc{i + 1}")(x))
    return layers.logits(x, self.num_classes, dtype=self.dtype)
