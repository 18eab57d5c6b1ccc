"""Baseline optimizers from optax, with the weight-decay conventions of the seeds.

* ``sgd``: momentum SGD (optionally Nesterov) with L2 weight decay added to the gradient
  (g + λw), as PyTorch's SGD does. Two placements of the learning rate: optax's and PyTorch's
  ``v ← μv + g; w ← w − ηv`` (default), or seed 002 eqs. (1)–(2) ``m ← αm − ε∇L; w ← w + m``
  (``lr_in_buffer=True``). Seed 002 does not say where its weight decay goes; here it is on the
  gradient in both forms.
* ``adam``: Adam with L2 weight decay added to the gradient (coupled, as torch.optim.Adam).
* ``adamw``: Adam with decoupled weight decay (Loshchilov & Hutter 2019).
* ``radam``, ``adabelief``: optax's RAdam and AdaBelief directions with AdamW's decoupled decay,
  θ ← θ − η(u + λθ), as seed 003 runs them ("weight decay handled as in AdamW", §4).

Every ``weight_decay`` is a float or a schedule of the step (``lbjax.schedules``: switched off
late in training, seed 003).

``mask`` (``optax.MaskOrFn``) selects the tensors that get weight decay; None decays every
tensor. The registry passes kernels only (``config.optimizer.mask``, ``lbjax.optim.registry``).

Every factory raises ``ValueError`` (``lbjax.optim.checks.InvalidArgument``) for an argument out
of range and works under ``optax.inject_hyperparams``.
"""

import optax

from lbjax.optim import checks


def _check_adaptive(b1, b2, eps, weight_decay, eps_root=0.0):
  checks.in_unit_interval("b1", b1)
  checks.in_unit_interval("b2", b2)
  checks.non_negative("eps", eps)
  checks.non_negative("eps_root", eps_root)
  checks.non_negative("weight_decay", weight_decay)


def sgd(learning_rate: optax.ScalarOrSchedule, momentum=0.9, nesterov=False,
        weight_decay: optax.ScalarOrSchedule = 0.0, mask: optax.MaskOrFn = None,
        lr_in_buffer: bool = False) -> optax.GradientTransformation:
  r"""Momentum SGD with coupled L2 weight decay, in one of two placements of the learning rate.

  ``lr_in_buffer=False`` (default; optax's and PyTorch's ``SGD``), with
  :math:`\tilde g_t = g_t + \lambda w_t` on masked tensors:

  .. math::
    v_t = \mu v_{t-1} + \tilde g_t, \qquad w_{t+1} = w_t - \eta_t v_t

  ``lr_in_buffer=True`` (seed 002 eqs. (1)–(2), momentum :math:`\alpha = \mu`, learning rate
  :math:`\epsilon_t = \eta_t`):

  .. math::
    m_t = \alpha m_{t-1} - \epsilon_t \tilde g_t, \qquad w_{t+1} = w_t + m_t

  With a constant learning rate the two are the same sequence. After a learning-rate drop the
  first keeps applying the new rate to the whole buffer at once, the second decays the old
  steps out over about :math:`1/(1 - \mu)` steps; seed 002 uses step decay, and its K-FAC
  (:func:`lbjax.optim.kfac`) has the second form.

  ``nesterov=True`` returns :math:`\mu v_t + \tilde g_t` (resp. :math:`\mu m_t - \epsilon_t
  \tilde g_t`) as the step, as ``optax.trace(nesterov=True)``.

  Args:
    learning_rate: :math:`\eta_t`, a float or an optax schedule.
    momentum: :math:`\mu` (0.9); 0 is plain SGD.
    nesterov: Nesterov's look-ahead form (False).
    weight_decay: :math:`\lambda` (0.0), a float or a schedule of the step.
    mask: tensors that get weight decay (None: every tensor).
    lr_in_buffer: seed 002's form (False: optax's).

  Returns:
    An ``optax.GradientTransformation``.

  References:
    Seed 002 (Naganuma et al.), §2.2, eqs. (1)–(2).
  """
  checks.in_unit_interval("momentum", momentum)
  checks.non_negative("weight_decay", weight_decay)
  checks.boolean("nesterov", nesterov)
  checks.boolean("lr_in_buffer", lr_in_buffer)
  decay = optax.add_decayed_weights(weight_decay, mask)
  if lr_in_buffer:
    return optax.chain(decay, optax.scale_by_learning_rate(learning_rate),
                       optax.trace(decay=momentum, nesterov=nesterov))
  # A Python 0 means no momentum buffer (optax.sgd(momentum=None)); an array (as
  # optax.inject_hyperparams passes it) always keeps one, so init and update agree on the state.
  no_buffer = isinstance(momentum, (int, float)) and momentum == 0
  return optax.chain(decay, optax.sgd(learning_rate, momentum=None if no_buffer else momentum,
                                      nesterov=nesterov))


def adam(learning_rate, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, mask=None):
  """Adam (Kingma & Ba 2015) on g + λw (coupled L2 decay)."""
  _check_adaptive(b1, b2, eps, weight_decay)
  return optax.chain(
      optax.add_decayed_weights(weight_decay, mask),
      optax.adam(learning_rate, b1=b1, b2=b2, eps=eps),
  )


def adamw(learning_rate, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01, mask=None):
  """AdamW (Loshchilov & Hutter 2019): θ ← θ − η(m̂/(√v̂+ε) + λθ)."""
  _check_adaptive(b1, b2, eps, weight_decay)
  return optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=mask)


def _decoupled(direction: optax.GradientTransformation, learning_rate, weight_decay, mask):
  """θ ← θ − η(u + λθ) for the direction u: AdamW's chain around another direction."""
  return optax.chain(
      direction,
      optax.add_decayed_weights(weight_decay, mask),
      optax.scale_by_learning_rate(learning_rate),
  )


def radam(learning_rate, b1=0.9, b2=0.999, eps=1e-8, threshold=5.0, weight_decay=0.01,
          mask=None):
  """RAdam (Liu et al. 2020; seed 003 eqs. (11)–(15)) with decoupled weight decay.

  θ ← θ − η(γ_t m̂/(√v̂ + ε) + λθ) when ρ_t ≥ ``threshold`` (optax's 5; at least 4, where γ_t
  is real), else θ − η(m̂ + λθ).
  """
  _check_adaptive(b1, b2, eps, weight_decay)
  checks.check("threshold", threshold, lambda v: v >= 4.0, ">= 4 (γ_t is real only for ρ_t > 4)")
  return _decoupled(optax.scale_by_radam(b1=b1, b2=b2, eps=eps, threshold=threshold),
                    learning_rate, weight_decay, mask)


def adabelief(learning_rate, b1=0.9, b2=0.999, eps=1e-16, eps_root=1e-16, weight_decay=0.01,
              mask=None):
  """AdaBelief (Zhuang et al. 2020; seed 003 eq. (16)) with decoupled weight decay.

  v ← β₂v + (1−β₂)(g − m)² + ε_root; θ ← θ − η(m̂/(√v̂ + ε) + λθ). Defaults are optax's.
  """
  _check_adaptive(b1, b2, eps, weight_decay, eps_root)
  return _decoupled(optax.scale_by_belief(b1=b1, b2=b2, eps=eps, eps_root=eps_root),
                    learning_rate, weight_decay, mask)
