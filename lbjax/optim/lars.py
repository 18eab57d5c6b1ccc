"""LARS, layer-wise adaptive rate scaling, as written in seed 000 Algorithm 1."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from lbjax.optim import checks


class ScaleByLarsState(NamedTuple):
  r"""Steps taken so far (indexes a weight-decay schedule) and the last local rates.

  ``trust_ratio`` holds, per tensor, the :math:`\lambda_l` the last update applied (float32
  scalars shaped like the parameters; 1 before the first update). Read it with
  `lbjax.optim.trust_ratios`, which also resolves ``optax.masked``'s placeholders.
  """
  count: jax.Array  # shape=(), dtype=int32
  trust_ratio: optax.Params  # per tensor: shape=(), dtype=float32


def scale_by_lars(weight_decay: optax.ScalarOrSchedule = 0.0,
                  trust_coefficient: float = 1.0,
                  eps: float = 0.0) -> optax.GradientTransformation:
  r"""Seed 000's decayed gradient times its local rate: :math:`\lambda_l (g_l + \beta w_l)`.

  .. math::
    \lambda_l = \frac{\eta \lVert w_l \rVert}
                     {\lVert g_l \rVert + \beta \lVert w_l \rVert + \epsilon}

  per parameter tensor :math:`l`, with :math:`\lambda_l = 1` where :math:`\lVert w_l \rVert` or
  :math:`\lVert g_l \rVert` is 0: a fresh zero-initialised tensor still moves, and a tensor with
  no gradient gets :math:`\beta w_l`, i.e. plain weight decay (it stays only when
  :math:`\beta = 0`). This is the piece where the seed differs from ``optax.lars``: optax divides by
  :math:`\lVert g_l + \beta w_l \rVert` (the norm of the decayed gradient), the seed by
  :math:`\lVert g_l \rVert + \beta \lVert w_l \rVert`; the two agree when :math:`\beta = 0`.
  The state keeps the :math:`\lambda_l` of the last update (`ScaleByLarsState`), read back by
  `lbjax.optim.trust_ratios`.

  Args:
    weight_decay: :math:`\beta`, a float or a schedule of the step (e.g. switched off late).
    trust_coefficient: :math:`\eta`, > 0.
    eps: :math:`\epsilon`, added to the denominator (0 in the seed), >= 0.

  Returns:
    An ``optax.GradientTransformation`` that needs ``params`` in ``update``.
  """
  checks.non_negative("weight_decay", weight_decay)
  checks.positive("trust_coefficient", trust_coefficient)
  checks.non_negative("eps", eps)

  def init_fn(params):
    return ScaleByLarsState(count=jnp.zeros([], jnp.int32),
                            trust_ratio=jax.tree.map(lambda _: jnp.ones([], jnp.float32), params))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("lars: update() needs params (the weights w_l)")
    beta = weight_decay(state.count) if callable(weight_decay) else weight_decay

    def local_rate(g, w):
      # Plain norms, one pass over w and g each. optax.safe_norm takes every norm twice (to
      # have a gradient at 0, which an optimizer's update never needs): 2x the reductions.
      w_norm = jnp.sqrt(jnp.sum(jnp.square(w)))
      g_norm = jnp.sqrt(jnp.sum(jnp.square(g)))
      ratio = trust_coefficient * w_norm / (g_norm + beta * w_norm + eps)
      return jnp.where((w_norm == 0.0) | (g_norm == 0.0), 1.0, ratio)

    ratios = jax.tree.map(local_rate, updates, params)
    updates = jax.tree.map(lambda r, g, w: (r * (g + beta * w)).astype(g.dtype), ratios, updates,
                           params)
    return updates, ScaleByLarsState(count=optax.safe_increment(state.count),
                                     trust_ratio=jax.tree.map(
                                         lambda r: r.astype(jnp.float32), ratios))

  return optax.GradientTransformation(init_fn, update_fn)


def lars(learning_rate: optax.ScalarOrSchedule,
         momentum: float = 0.9,
         weight_decay: optax.ScalarOrSchedule = 0.0,
         trust_coefficient: float = 1.0,
         eps: float = 0.0,
         mask: optax.MaskOrFn = None) -> optax.GradientTransformation:
  r"""LARS, seed 000 Algorithm 1 (You, Gitman & Ginsburg 2017).

  For every parameter tensor :math:`l` where ``mask`` is True, with learning rate
  :math:`\gamma_t`, momentum :math:`m`, weight decay :math:`\beta` and trust coefficient
  :math:`\eta`:

  .. math::
    \lambda_l &= \frac{\eta \lVert w_l \rVert}{\lVert g_l \rVert + \beta \lVert w_l \rVert} \\
    v_l &\leftarrow m v_l + \gamma_t \lambda_l (g_l + \beta w_l) \\
    w_l &\leftarrow w_l - v_l

  (:math:`\lambda_l = 1` where :math:`\lVert w_l \rVert` or :math:`\lVert g_l \rVert` is 0).
  Where ``mask`` is False the tensor gets plain momentum SGD,
  :math:`v \leftarrow m v + \gamma_t g`, with no adaptation and no decay. Algorithm 1 adapts
  every layer (``mask=None``, ``config.optimizer.mask="all"``); the configs default to kernels
  only, biases and BatchNorm scale/bias excluded (``config.optimizer.mask="kernels"``), a
  choice of lbjax that no seed states.

  Built as ``chain(masked(scale_by_lars), scale_by_learning_rate, trace)``; only the trust ratio
  is new (see :func:`scale_by_lars`), so ``weight_decay=0`` reproduces ``optax.lars`` with the same
  trust coefficient and ``trust_ratio_mask``.

  Args:
    learning_rate: :math:`\gamma_t`, a float or an optax schedule.
    momentum: :math:`m` (0.9), in [0, 1).
    weight_decay: :math:`\beta` (0.0), a float or a schedule of the step.
    trust_coefficient: :math:`\eta` (1.0 as in the seed; You et al. use 0.001).
    eps: added to the trust-ratio denominator (0.0).
    mask: pytree of bools or a function of the params; True for tensors that get the layer-wise
      rate and decay. None adapts every tensor.

  Returns:
    An ``optax.GradientTransformation``.

  Example:
    >>> tx = lars(optax.linear_schedule(0.0, 3.2, 5 * 12), weight_decay=5e-4,
    ...           mask=lbjax.optim.decay_mask)

  References:
    You, Gitman & Ginsburg, "Large Batch Training of Convolutional Networks", arXiv:1708.03888.
    Seed 000 (LARS + SWAP for large-batch CIFAR-10), Algorithm 1.
  """
  checks.in_unit_interval("momentum", momentum)
  adapt = scale_by_lars(weight_decay, trust_coefficient, eps)
  if mask is not None:
    adapt = optax.masked(adapt, mask)
  return optax.chain(
      adapt,
      optax.scale_by_learning_rate(learning_rate),
      optax.trace(decay=momentum),
  )
