"""The layers every lbjax model is built from: convolutions, dense layers, normalisation.

Models never instantiate ``nn.Conv`` / ``nn.Dense`` / ``nn.BatchNorm`` directly; they go through
:func:`conv`, :func:`dense` and :func:`norm`, so a change that must touch every layer of a kind
(a different normalisation, say) happens here once. K-FAC needs no tags here: it captures the
statistics of every ``nn.Dense`` / ``nn.Conv`` call with a flax method interceptor, and only inside
its own train step (``lbjax/optim/kfac_capture.py``).

Normalisation (:func:`norm`) has three regimes, chosen by ``axis_name`` and ``ghost_batch_size``:

=====================  ==============  ===================================================
``ghost_batch_size``   ``axis_name``   training statistics
=====================  ==============  ===================================================
``None``               ``None``        the per-device batch (flax ``nn.BatchNorm``)
``None``               ``"batch"``     the global batch: per-device moments ``pmean``-ed
``g``                  any             each ghost batch of ``g`` local examples
                                       (:class:`GhostBatchNorm`); running averages
                                       ``pmean``-ed over ``axis_name``
=====================  ==============  ===================================================

All regimes store ``params/{scale,bias}`` and ``batch_stats/{mean,var}`` (float32), use momentum
0.9 and epsilon 1e-5, and normalise with the running statistics in evaluation.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
from jax import lax
import jax.numpy as jnp

from lbjax.errors import ConfigError

Dtype = Any

MOMENTUM = 0.9
EPSILON = 1e-5

# He et al. 2015 ("Delving deep into rectifiers") fan-out normal, as torchvision's ResNet.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv(features: int, kernel_size: int, *, strides: int = 1, padding: str = "SAME",
         use_bias: bool = False, dtype: Dtype = jnp.float32, name: str | None = None,
         kernel_init: Callable = conv_kernel_init) -> nn.Conv:
  """A square 2-D convolution with float32 parameters computing in ``dtype``."""
  return nn.Conv(features, (kernel_size, kernel_size), strides=(strides, strides),
                 padding=padding, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                 kernel_init=kernel_init, name=name)


def dense(features: int, *, use_bias: bool = True, dtype: Dtype = jnp.float32,
          name: str | None = None) -> nn.Dense:
  """A dense layer with float32 parameters computing in ``dtype`` (flax default init)."""
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32, name=name)


def logits(x, num_classes: int, *, dtype: Dtype = jnp.float32, name: str = "logits"):
  """The classifier head of every model: ``dense(num_classes)`` in ``dtype``, cast to float32.

  Mixed precision (Micikevicius et al. 2018, "Mixed Precision Training", ICLR) computes the
  network in a 16-bit dtype but the loss in float32; casting the logits up here means the
  softmax cross-entropy and its gradient start in float32 for every model and every caller.
  """
  return dense(num_classes, dtype=dtype, name=name)(x).astype(jnp.float32)


def check_ghost_batch_size(ghost_batch_size: int | None) -> None:
  """Raises ConfigError unless ``ghost_batch_size`` is None or a positive int."""
  if ghost_batch_size is None:
    return
  if isinstance(ghost_batch_size, bool) or not isinstance(ghost_batch_size, int) or (
      ghost_batch_size < 1):
    raise ConfigError("config.model.ghost_batch_size",
                      f"must be None or a positive integer, got {ghost_batch_size!r}")


def norm(train: bool, axis_name: str | None = None, ghost_batch_size: int | None = None,
         dtype: Dtype = jnp.float32, name: str | None = None,
         scale_init: Callable = nn.initializers.ones) -> nn.Module:
  """The normalisation layer of every lbjax model (see the module docstring for the regimes).

  Args:
    train: normalise with batch statistics and update the running averages (True), or with the
      running averages (False).
    axis_name: pmap axis. Without ghost batches the batch moments are averaged over it (global
      batch statistics); with ghost batches only the running averages are.
    ghost_batch_size: examples per ghost batch (Hoffer et al. 2017), or None for plain BatchNorm.
    dtype: dtype of the output; statistics are computed in (at least) float32.
    name: module name.
    scale_init: initialiser of the scale (``nn.initializers.zeros`` for a zero-init residual).

  Returns:
    A module mapping ``x`` of shape ``[batch, ..., features]`` to the same shape.
  """
  check_ghost_batch_size(ghost_batch_size)
  if ghost_batch_size is None:
    return nn.BatchNorm(use_running_average=not train, axis_name=axis_name, momentum=MOMENTUM,
                        epsilon=EPSILON, dtype=dtype, param_dtype=jnp.float32,
                        scale_init=scale_init, name=name)
  return GhostBatchNorm(ghost_batch_size=ghost_batch_size, use_running_average=not train,
                        axis_name=axis_name, dtype=dtype, scale_init=scale_init, name=name)


class GhostBatchNorm(nn.Module):
  """Ghost Batch Normalization (Hoffer, Hubara & Soudry 2017, "Train longer, generalize better:
  closing the generalization gap in large batch training of neural networks", Alg. 1).

  In training the per-device batch of ``b`` examples is split, in order, into ``n = b / g`` ghost
  batches of ``g = ghost_batch_size`` examples; ghost batch ``k`` is normalised with its own
  moments over its examples and all non-feature axes:

    mu_k = E[x],   var_k = E[x^2] - mu_k^2  (biased),
    y = (x - mu_k) / sqrt(var_k + eps) * scale + bias.

  The running averages take one momentum step per training call with the mean over ghost
  batches of their moments, ``mean(mu_k)`` and ``mean(var_k)`` (the per-ghost-batch variance,
  i.e. what a ghost batch sees, not the variance of the whole batch), and then, if ``axis_name``
  is set, the ``pmean`` of those over the axis, so replicas keep identical running statistics:

    ra_mean <- m * ra_mean + (1 - m) * pmean(mean_k mu_k),
    ra_var  <- m * ra_var  + (1 - m) * pmean(mean_k var_k).

  Ghost batches never span devices: normalisation statistics are local. ``g >= b`` means one ghost
  batch holding the whole per-device batch, i.e. plain per-device BatchNorm. ``b`` not divisible
  by ``g`` (with ``g < b``) raises ConfigError (a ValueError) naming
  ``config.model.ghost_batch_size``. Evaluation normalises with the running averages.

  Attributes:
    ghost_batch_size: examples per ghost batch.
    use_running_average: evaluation mode.
    axis_name: pmap axis over which the running-average updates are averaged.
    momentum: running-average momentum.
    epsilon: added to the variance.
    dtype: output dtype.
    scale_init: initialiser of ``scale``.
  """
  ghost_batch_size: int
  use_running_average: bool = False
  axis_name: str | None = None
  momentum: float = MOMENTUM
  epsilon: float = EPSILON
  dtype: Dtype = jnp.float32
  scale_init: Callable = nn.initializers.ones

  @nn.compact
  def __call__(self, x):
    features = x.shape[-1]
    scale = self.param("scale", self.scale_init, (features,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
    ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
    compute_dtype = jnp.promote_types(x.dtype, jnp.float32)

    if self.use_running_average:
      return _normalize(x.astype(compute_dtype), ra_mean.value, ra_var.value, scale, bias,
                        self.epsilon).astype(self.dtype)

    batch = x.shape[0]
    ghost = min(self.ghost_batch_size, batch)
    if batch % ghost:
      raise ConfigError(
          "config.model.ghost_batch_size",
          f"the per-device batch of {batch} examples is not divisible by ghost_batch_size={ghost}")
    xg = x.astype(compute_dtype).reshape((batch // ghost, ghost) + x.shape[1:])
    axes = tuple(range(1, xg.ndim - 1))  # per ghost batch: examples and spatial axes
    mean = xg.mean(axes, keepdims=True)
    var = jnp.maximum(0.0, (xg * xg).mean(axes, keepdims=True) - mean * mean)
    y = _normalize(xg, mean, var, scale, bias, self.epsilon).reshape(x.shape)

    if not self.is_initializing():
      stats = jnp.stack([mean.reshape(-1, features).mean(0), var.reshape(-1, features).mean(0)])
      if self.axis_name is not None:
        stats = lax.pmean(stats, self.axis_name)
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * stats[0]
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * stats[1]
    return y.astype(self.dtype)


def _normalize(x, mean, var, scale, bias, epsilon):
  """``(x - mean) / sqrt(var + eps) * scale + bias``, in the order flax's BatchNorm uses."""
  return (x - mean) * (lax.rsqrt(var + epsilon) * scale) + bias
