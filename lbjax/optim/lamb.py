"""LAMB, layer-wise adaptive moments (You et al. 2019, Algorithm 2): optax's chain, with a trust
ratio that keeps the factor it applied."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class ScaleByTrustRatioState(NamedTuple):
  r"""The factor :math:`\lVert w_l \rVert / \lVert r_l \rVert` the last update applied, per
  tensor (float32 scalars shaped like the parameters; 1 before the first update). Read it with
  `lbjax.optim.trust_ratios`."""
  trust_ratio: optax.Params


def scale_by_trust_ratio() -> optax.GradientTransformation:
  r"""You et al. 2019 Alg. 2's layer-wise scaling: :math:`u_l \mapsto
  \frac{\lVert w_l \rVert}{\lVert u_l \rVert} u_l` per tensor, 1 where either norm is 0.

  The arithmetic of ``optax.scale_by_trust_ratio()`` (trust coefficient 1, no minimum norm, no
  ε); unlike it, the state keeps the factor each tensor got (`ScaleByTrustRatioState`), so the
  trust ratios can be logged (``config.log_trust_ratios``).

  Returns:
    An ``optax.GradientTransformation`` that needs ``params`` in ``update``.
  """

  def init_fn(params):
    return ScaleByTrustRatioState(jax.tree.map(lambda _: jnp.ones([], jnp.float32), params))

  def update_fn(updates, state, params=None):
    del state
    if params is None:
      raise ValueError("lamb: update() needs params (the weights w_l)")

    def ratio(u, w):
      w_norm = jnp.sqrt(jnp.sum(jnp.square(w)))
      u_norm = jnp.sqrt(jnp.sum(jnp.square(u)))
      return jnp.where((w_norm == 0.0) | (u_norm == 0.0), 1.0, w_norm / u_norm)

    ratios = jax.tree.map(ratio, updates, params)
    updates = jax.tree.map(lambda r, u: (r * u).astype(u.dtype), ratios, updates)
    return updates, ScaleByTrustRatioState(jax.tree.map(lambda r: r.astype(jnp.float32), ratios))

  return optax.GradientTransformation(init_fn, update_fn)


def lamb(learning_rate: optax.ScalarOrSchedule,
         b1: float = 0.9,
         b2: float = 0.999,
         eps: float = 1e-6,
         weight_decay: optax.ScalarOrSchedule = 0.0,
         mask: optax.MaskOrFn = None) -> optax.GradientTransformation:
  r"""LAMB (You et al. 2019, "Large Batch Optimization for Deep Learning", Algorithm 2).

  For every parameter tensor :math:`l` (a layer's kernel, bias, BatchNorm scale, ...) with
  gradient :math:`g_t`, step :math:`t \ge 1` and learning rate :math:`\eta_t`:

  .. math::
    m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
    v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 \\
    \hat m_t &= m_t / (1 - \beta_1^t), \qquad \hat v_t = v_t / (1 - \beta_2^t) \\
    r_t &= \hat m_t / (\sqrt{\hat v_t} + \epsilon) + \lambda w_t \\
    w_{t+1} &= w_t - \eta_t \frac{\lVert w_t \rVert}{\lVert r_t \rVert} r_t

  (the trust ratio :math:`\lVert w \rVert / \lVert r \rVert` is 1 where either norm is 0, so a
  zero-initialised bias still moves). The scaling function :math:`\phi` of the paper is the
  identity, as in its experiments. :math:`\lambda w_t` (decoupled weight decay, as AdamW) is added
  only where ``mask`` is True; the trust ratio applies to every tensor, as in Algorithm 2.

  This is ``optax.lamb``'s chain (``scale_by_adam, add_decayed_weights(mask),
  scale_by_trust_ratio, scale_by_learning_rate``) with the same arithmetic; only its trust-ratio
  piece is lbjax's `scale_by_trust_ratio`, which keeps the factor it applied in its state
  (`lbjax.optim.trust_ratios`).

  Args:
    learning_rate: :math:`\eta_t`, a float or an optax schedule.
    b1: :math:`\beta_1` (0.9).
    b2: :math:`\beta_2` (0.999).
    eps: :math:`\epsilon` (1e-6, the paper's value), added to :math:`\sqrt{\hat v_t}`.
    weight_decay: :math:`\lambda` (0.0), a float or a schedule of the step.
    mask: pytree of bools or a function of the params: True for tensors that get weight decay.
      None decays every tensor. The registry passes ``lbjax.optim.decay_mask`` (kernels only).

  Returns:
    An ``optax.GradientTransformation`` that needs ``params`` in ``update``.

  Example:
    >>> tx = lamb(optax.cosine_decay_schedule(1e-2, 1000), weight_decay=0.01,
    ...           mask=lbjax.optim.decay_mask)

  References:
    You, Li, Reddi, Hseu, Kumar, Bhojanapalli, Song, Demmel, Keutzer & Hsieh, "Large Batch
    Optimization for Deep Learning: Training BERT in 76 minutes", arXiv:1904.00962 (ICLR 2020).
  """
  return optax.chain(
      optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
      optax.add_decayed_weights(weight_decay, mask),
      scale_by_trust_ratio(),
      optax.scale_by_learning_rate(learning_rate),
  )
