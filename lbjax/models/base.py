"""Fields shared by every lbjax model."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class Classifier(nn.Module):
  """Base of every registered model: ``__call__(x, train=True) -> logits [batch, num_classes]``.

  ``x`` is float32 NHWC with any channel count and spatial size >= 8. The network computes in
  ``dtype`` (its input is cast to it first); the logits are cast to float32 at the end
  (:func:`lbjax.models.layers.logits`), so the loss is float32 whatever the computation dtype.

  Attributes:
    num_classes: number of output logits.
    dtype: computation dtype of convolutions, dense layers and activations (``config.model.dtype``:
      float32 or bfloat16); parameters and BatchNorm statistics stay float32.
    axis_name: pmap axis over which BatchNorm statistics are averaged in training.
    ghost_batch_size: examples per Ghost BatchNorm batch, or None for plain BatchNorm
      (see ``layers.norm``).
  """
  num_classes: int
  dtype: Any = jnp.float32
  axis_name: str | None = None
  ghost_batch_size: int | None = None
