"""Nesterov's accelerated gradient with dampened momentum, seed 003 eqs. (3)–(5)."""

from typing import Any, Callable, Optional, Union

import optax

MaskOrFn = Optional[Union[Any, Callable[[optax.Params], Any]]]


def nag(learning_rate: optax.ScalarOrSchedule,
        momentum: float = 0.9,
        weight_decay: optax.ScalarOrSchedule = 0.0,
        mask: MaskOrFn = None) -> optax.GradientTransformation:
  r"""NAG as seed 003 writes it: dampened momentum with the gradient at the look-ahead point.

  Seed 003 eqs. (3)–(5), with learning rate :math:`\eta_t` and momentum :math:`\mu`:

  .. math::
    g_t &= \nabla L(\theta_{t-1} - \mu \Delta\theta_{t-1}) &\text{(5)} \\
    \Delta\theta_t &= \mu \Delta\theta_{t-1} + (1 - \mu) \eta_t g_t &\text{(3)} \\
    \theta_t &= \theta_{t-1} - \Delta\theta_t &\text{(4)}

  The seed prints eq. (5) as :math:`\theta_{t-1} + \mu\Delta\theta_{t-1}`; with eq. (4)
  *subtracting* :math:`\Delta\theta`, that point lies behind the iterate, while the text (and
  Nesterov) evaluate the gradient at the estimate of the *next* parameters,
  :math:`\theta_{t-1} - \mu\Delta\theta_{t-1}`; we follow the text.

  The train step evaluates the gradient at the parameters it holds, so this transform holds the
  look-ahead point :math:`\phi_t = \theta_t - \mu\Delta\theta_t` (as PyTorch's and optax's
  Nesterov SGD do). Substituting eqs. (3)–(4):

  .. math::
    \phi_t = \phi_{t-1} - \bigl(\mu \Delta\theta_t + (1 - \mu)\eta_t g_t\bigr),
    \quad g_t = \nabla L(\phi_{t-1}),

  which is ``chain(scale_by_learning_rate((1 - μ) η_t), trace(μ, nesterov=True))``: the trace
  holds :math:`-\Delta\theta_t`. With a constant :math:`\eta` this equals
  ``optax.sgd((1 - μ) η, momentum=μ, nesterov=True)``; with a schedule it differs from that
  (optax scales the trace, eq. (3) accumulates the scaled gradients). :math:`\phi_t` and
  :math:`\theta_t` differ by :math:`\mu \Delta\theta_t`, which vanishes as training converges.
  ``tests/test_optim_nag.py`` runs eqs. (3)–(5) literally in NumPy and checks :math:`\phi_t`.

  Weight decay is L2 added to the gradient, :math:`g_t + \lambda \phi_{t-1}` (seed 003 §2.2:
  "adding :math:`\lambda\theta_t` to eq. (1)"), on tensors where ``mask`` is True.

  Args:
    learning_rate: :math:`\eta_t`, a float or an optax schedule. Note the dampening
      :math:`(1 - \mu)`: seed 003's :math:`\eta = 0.1, \mu = 0.9` takes steps of the size of
      undampened momentum SGD with learning rate 0.01.
    momentum: :math:`\mu` (0.9).
    weight_decay: :math:`\lambda` (0.0; seed 003 uses 1e-4), a float or a schedule of the step.
    mask: pytree of bools or a function of the params: True for tensors that get weight decay.

  Returns:
    An ``optax.GradientTransformation``.

  Example:
    >>> tx = nag(0.1, momentum=0.9, weight_decay=1e-4, mask=lbjax.optim.decay_mask)

  References:
    Seed 003 (Noguchi & Yamauchi), §2.1.1, eqs. (3)–(5).
    Nesterov, "A method for solving the convex programming problem with convergence rate
    O(1/k^2)", 1983; Sutskever et al., "On the importance of initialization and momentum in
    deep learning", ICML 2013.
  """
  if callable(learning_rate):
    dampened = lambda count: (1.0 - momentum) * learning_rate(count)
  else:
    dampened = (1.0 - momentum) * learning_rate
  return optax.chain(
      optax.add_decayed_weights(weight_decay, mask),
      optax.scale_by_learning_rate(dampened),
      optax.trace(decay=momentum, nesterov=True),
  )
