"""LAMB, layer-wise adaptive moments (You et al. 2019, Algorithm 2): a thin factory over optax."""

import optax


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

  This is ``optax.lamb`` (``chain(scale_by_adam, add_decayed_weights(mask), scale_by_trust_ratio,
  scale_by_learning_rate)``) with the arguments lbjax's registry passes; nothing is re-implemented.

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
  return optax.lamb(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=mask)
