"""Nesterov's accelerated gradient: seed 003 eqs. (3)–(5) (dampened) or PyTorch's (undampened)."""

import optax

from lbjax.optim import checks


def nag(learning_rate: optax.ScalarOrSchedule,
        momentum: float = 0.9,
        weight_decay: optax.ScalarOrSchedule = 0.0,
        mask: optax.MaskOrFn = None,
        damped: bool = True) -> optax.GradientTransformation:
  r"""NAG as seed 003 writes it (``damped=True``) or as PyTorch runs it (``damped=False``).

  **damped=True**: dampened momentum with the gradient at the look-ahead point.

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

  **damped=False**: PyTorch's ``SGD(nesterov=True)`` exactly, the learning rate outside the
  momentum buffer and no :math:`(1 - \mu)`:

  .. math::
    b_t = \mu b_{t-1} + g_t, \qquad \phi_t = \phi_{t-1} - \eta_t (\mu b_t + g_t),

  the same parameter sequence as ``optax.sgd(learning_rate, momentum, nesterov=True)`` for a
  float or a schedule (after a learning-rate drop the new rate applies to the whole buffer at
  once). This is the usual ResNet-56 recipe at :math:`\eta = 0.1, \mu = 0.9` (seed 003's
  Table 1 baseline, 93.95%, is reported at that :math:`\eta`); the seed's eq. (3) at the same
  :math:`\eta` takes steps of the size of this form at :math:`(1 - \mu)\eta`.

  Weight decay is L2 added to the gradient, :math:`g_t + \lambda \phi_{t-1}` (seed 003 §2.2:
  "adding :math:`\lambda\theta_t` to eq. (1)"), on tensors where ``mask`` is True.

  Args:
    learning_rate: :math:`\eta_t`, a float or an optax schedule. Note the dampening
      :math:`(1 - \mu)` when ``damped``: seed 003's :math:`\eta = 0.1, \mu = 0.9` takes steps of
      the size of undampened momentum SGD with learning rate 0.01.
    momentum: :math:`\mu` (0.9), in [0, 1).
    weight_decay: :math:`\lambda` (0.0; seed 003 uses 1e-4), a float or a schedule of the step.
    mask: pytree of bools or a function of the params: True for tensors that get weight decay
      (None: every tensor).
    damped: seed 003's eq. (3) (True) or PyTorch's ``SGD(nesterov=True)`` (False).

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
  checks.in_unit_interval("momentum", momentum)
  checks.non_negative("weight_decay", weight_decay)
  checks.boolean("damped", damped)
  if not damped:
    return optax.chain(
        optax.add_decayed_weights(weight_decay, mask),
        optax.trace(decay=momentum, nesterov=True),
        optax.scale_by_learning_rate(learning_rate),
    )
  if callable(learning_rate):
    dampened = lambda count: (1.0 - momentum) * learning_rate(count)
  else:
    dampened = (1.0 - momentum) * learning_rate
  return optax.chain(
      optax.add_decayed_weights(weight_decay, mask),
      optax.scale_by_learning_rate(dampened),
      optax.trace(decay=momentum, nesterov=True),
  )
