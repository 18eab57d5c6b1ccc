"""Seed 003's hybrid of AdamW, RAdam and AdaBelief (§3; eqs. (6), (8)–(13), (16), (19)–(20))."""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from lbjax.optim import checks


class ScaleByHybridState(NamedTuple):
  """Step count and the AdaBelief moments."""
  count: jax.Array  # shape=(), dtype=int32: steps taken
  mu: optax.Updates  # m_t, eq. (6)
  nu: optax.Updates  # v_t, eq. (16)


def _log(b) -> jax.Array:
  """``log b``: in double precision for a Python float, else (an injected array) in its dtype."""
  if isinstance(b, (int, float)):
    return math.log(b)
  return jnp.log(b)


def one_minus_power(b: float, t: jax.Array) -> jax.Array:
  """``1 - b**t`` for ``b`` in [0, 1) and integer ``t >= 1``, accurate in f32.

  As ``-expm1(t log b)`` with ``log b`` taken in double precision for a Python float ``b``: the
  direct form loses the digits of ``b`` that its f32 rounding drops (f32(0.999) = 0.999 + 1.3e-8,
  so ``1 - b**t`` is off by ~1e-5 relative), which bias correction and the rectifier then carry.
  An array ``b`` (``optax.inject_hyperparams``) is already rounded; its log is taken as it is.
  """
  if isinstance(b, (int, float)) and b == 0.0:
    return jnp.ones_like(t, dtype=jnp.float32)
  return -jnp.expm1(t.astype(jnp.float32) * _log(b))


def rectifier_length(b2: float, t: jax.Array) -> jax.Array:
  r"""RAdam's :math:`\rho_t = \rho_\infty - 2 t \beta_2^t / (1 - \beta_2^t)`, eqs. (11)–(12).

  Accurate in f32 for every ``t >= 1``. The direct form subtracts two numbers near
  :math:`\rho_\infty` (1999 for :math:`\beta_2 = 0.999`) to get :math:`\rho_t \approx t`, so at
  small ``t`` f32 rounding leaves an absolute error of ~0.03, i.e. ~2% in :math:`\gamma_5`. With
  :math:`a = -\log \beta_2`, :math:`x = a t` and :math:`B(x) = x / (e^x - 1)`,
  :math:`\rho_t + 1 = (2/a)(B(-a) - B(x))`, and the Bernoulli series of
  :math:`B` divides exactly by :math:`(a + x)/2`:

  .. math::
    \rho_t = (1 + t) S - 1, \quad
    S = 1 + \tfrac{a - x}{6} - \tfrac{(a - x)(a^2 + x^2)}{360}
          + \tfrac{(a - x)(a^4 + a^2 x^2 + x^4)}{15120}
          - \tfrac{(a - x)(a^2 + x^2)(a^4 + x^4)}{604800}

  with truncation error below :math:`4 \cdot 10^{-8} x^9` (used for :math:`x \le 1`). For
  :math:`x > 1`, :math:`\rho_t \ge 0.4 \rho_\infty` and the direct form
  :math:`\rho_\infty - 2t / \mathrm{expm1}(x)` has no cancellation to speak of.
  """
  a = -_log(b2)
  rho_inf = 2.0 / (1.0 - b2) - 1.0
  t = t.astype(jnp.float32)
  x = a * t
  d, a2, x2 = a - x, a * a, x * x
  series = (1.0 + d / 6.0 - d * (a2 + x2) / 360.0 + d * (a2 * a2 + a2 * x2 + x2 * x2) / 15120.0
            - d * (a2 + x2) * (a2 * a2 + x2 * x2) / 604800.0)
  small = (1.0 + t) * series - 1.0
  large = rho_inf - 2.0 * t / jnp.expm1(jnp.maximum(x, 1.0))
  return jnp.where(x <= 1.0, small, large)


def rectifier(b2: float, rho: jax.Array) -> jax.Array:
  r"""RAdam's :math:`\gamma_t`, eq. (13); defined (clipped) for :math:`\rho_t > 4` only."""
  rho_inf = 2.0 / (1.0 - b2) - 1.0
  rho = jnp.maximum(rho, 4.0 + 1e-3)
  return jnp.sqrt((rho - 4.0) * (rho - 2.0) * rho_inf
                  / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho))


def scale_by_hybrid(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                    threshold: float = 4.0) -> optax.GradientTransformation:
  r"""The update direction of seed 003's hybrid, before decay and learning rate.

  .. math::
    m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t &\text{(6)} \\
    v_t &= \beta_2 v_{t-1} + (1 - \beta_2)(g_t - m_t)^2 + \varepsilon &\text{(16)} \\
    \hat m_t &= m_t / (1 - \beta_1^t), \quad \hat v_t = v_t / (1 - \beta_2^t) &\text{(8), (9)} \\
    u_t &= \gamma_t \hat m_t / \sqrt{\hat v_t + \varepsilon} \text{ if } \rho_t > \tau
      \text{, else } \hat m_t &\text{(19), (20)}

  :math:`\varepsilon` is inside the square root (and also added to :math:`v_t`), as the seed
  writes it. It differs from ``optax.scale_by_belief`` (ε outside the root, no rectifier) and
  ``optax.scale_by_radam`` (:math:`g^2` instead of :math:`(g - m)^2`), hence a piece of its own.
  """
  checks.in_unit_interval("b1", b1)
  checks.check("b2", b2, lambda v: 0.0 < v < 1.0, "in (0, 1)")
  checks.non_negative("eps", eps)
  checks.check("threshold", threshold, lambda v: v >= 4.0,
               ">= 4 (γ_t is real only for ρ_t > 4)")

  def init_fn(params):
    return ScaleByHybridState(count=jnp.zeros([], jnp.int32),
                              mu=optax.tree.zeros_like(params),
                              nu=optax.tree.zeros_like(params))

  def update_fn(updates, state, params=None):
    del params
    count = optax.safe_increment(state.count)
    mu = optax.tree.update_moment(updates, state.mu, b1, 1)
    # Eq. (16) in one pass, with ε added to the new term before the sum: XLA:CPU then updates
    # v_t in place. Written as (β₂ v + (1-β₂)(g-m)²) + ε it copies v and recomputes it for the
    # update, per tensor: 3x the update time on ResNet-18 (benchmarks/hybrid_vs_adamw.py).
    nu = jax.tree.map(lambda g, m, v: b2 * v + ((1.0 - b2) * jnp.square(g - m) + eps),
                      updates, mu, state.nu)
    c1, c2 = one_minus_power(b1, count), one_minus_power(b2, count)
    rho = rectifier_length(b2, count)
    gamma = rectifier(b2, rho)
    rectified = rho > threshold

    def direction(m, v):
      m_hat = m / c1
      adaptive = gamma * m_hat / jnp.sqrt(v / c2 + eps)
      return jnp.where(rectified, adaptive, m_hat).astype(m.dtype)

    return jax.tree.map(direction, mu, nu), ScaleByHybridState(count=count, mu=mu, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)


def hybrid(learning_rate: optax.ScalarOrSchedule,
           b1: float = 0.9,
           b2: float = 0.999,
           eps: float = 1e-8,
           weight_decay: optax.ScalarOrSchedule = 0.01,
           threshold: float = 4.0,
           mask: optax.MaskOrFn = None) -> optax.GradientTransformation:
  r"""Seed 003's proposed optimizer: AdamW's decoupled decay, RAdam's rectifier, AdaBelief's moment.

  With learning rate :math:`\eta_t` and weight decay :math:`\lambda`, per element:

  .. math::
    m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
    v_t &= \beta_2 v_{t-1} + (1 - \beta_2)(g_t - m_t)^2 + \varepsilon \\
    \hat m_t &= \frac{m_t}{1 - \beta_1^t}, \quad \hat v_t = \frac{v_t}{1 - \beta_2^t} \\
    \rho_\infty &= \frac{2}{1 - \beta_2} - 1, \quad
      \rho_t = \rho_\infty - \frac{2 t \beta_2^t}{1 - \beta_2^t}, \quad
      \gamma_t = \sqrt{\frac{(\rho_t - 4)(\rho_t - 2)\rho_\infty}
                            {(\rho_\infty - 4)(\rho_\infty - 2)\rho_t}} \\
    \theta_{t+1} &= \theta_t - \eta_t \Bigl(\gamma_t \frac{\hat m_t}{\sqrt{\hat v_t + \varepsilon}}
      + \lambda \theta_t\Bigr) \text{ if } \rho_t > \tau, \text{ else }
      \theta_t - \eta_t (\hat m_t + \lambda \theta_t)

  The seed's text switches on ":math:`\gamma_t > 4`", which never holds
  (:math:`\gamma_t \le 1`); the switch here is RAdam's, on :math:`\rho_t` (Liu et al. 2020
  Alg. 2: the variance is tractable for :math:`\rho_t > 4`), with :math:`\tau` = ``threshold``
  = 4 (optax's RAdam uses 5). For :math:`\beta_2 = 0.999` the first 4 steps are unrectified.

  Built as ``chain(scale_by_hybrid, add_decayed_weights(weight_decay, mask),
  scale_by_learning_rate)``, the structure of ``optax.adamw``. :math:`\rho_t` and the bias
  corrections are computed accurately in f32 (see :func:`rectifier_length`).

  Args:
    learning_rate: :math:`\eta_t`, a float or an optax schedule.
    b1: :math:`\beta_1` (0.9).
    b2: :math:`\beta_2` (0.999).
    eps: :math:`\varepsilon` (1e-8), added to :math:`v_t` and inside the square root. The seed
      gives no :math:`\varepsilon` for the hybrid (1e-8 is Adam's default). It is not negligible:
      added to :math:`v_t` every step it keeps :math:`\hat v_t \ge \varepsilon / (1 - \beta_2)`,
      so the denominator never drops below
      :math:`\sqrt{\varepsilon / (1 - \beta_2) + \varepsilon} \approx 3.2 \cdot 10^{-3}`
      (defaults): coordinates whose :math:`(g - m)^2` is below about 1e-5 are not normalised,
      a real damping of the adaptivity. The seed 003 configs set it with the argument ``eps=``
      (``configs/seed003_table3.py:eps=1e-16``) or ``--config.optimizer.eps``.
    weight_decay: :math:`\lambda` (0.01, seed 003's value), a float or a schedule of the step
      (seed 003 switches it off after 75% of training, see ``lbjax.schedules``).
    threshold: :math:`\tau` (4.0).
    mask: pytree of bools or a function of the params: True for tensors that get weight decay.

  Returns:
    An ``optax.GradientTransformation``.

  Example:
    >>> tx = hybrid(optax.cosine_decay_schedule(0.01, 1000), weight_decay=0.01)

  References:
    Seed 003 (Noguchi & Yamauchi, robust and accurate training), §2.1.2–2.2 and §3.
    Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019.
    Liu et al., "On the Variance of the Adaptive Learning Rate and Beyond", ICLR 2020.
    Zhuang et al., "AdaBelief Optimizer", NeurIPS 2020.
  """
  checks.non_negative("weight_decay", weight_decay)
  return optax.chain(
      scale_by_hybrid(b1=b1, b2=b2, eps=eps, threshold=threshold),
      optax.add_decayed_weights(weight_decay, mask),
      optax.scale_by_learning_rate(learning_rate),
  )
