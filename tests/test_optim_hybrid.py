"""The hybrid optimizer against a float64 NumPy transcription of seed 003 §3."""

import math

import jax.numpy as jnp
import numpy as np
import optax
from optim_reference import NoisyQuadratic
from optim_reference import assert_trajectories_close
from optim_reference import mask_of
from optim_reference import random_tree
from optim_reference import run
from optim_reference import to64
import pytest

from lbjax import optim
from lbjax.optim.hybrid import one_minus_power
from lbjax.optim.hybrid import rectifier_length

STEPS = 150


def hybrid_reference(w, grad, steps, lr, b1, b2, eps, weight_decay, threshold, mask):
  """Seed 003 eqs. (6), (16), (8), (9), (11)–(13), (19)/(20), float64, one tensor at a time."""
  w = {k: dict(v) for k, v in to64(w).items()}
  m = {k: {n: np.zeros_like(x) for n, x in v.items()} for k, v in w.items()}
  v2 = {k: {n: np.zeros_like(x) for n, x in v.items()} for k, v in w.items()}
  rho_inf = 2 / (1 - b2) - 1
  history = []
  for t in range(1, steps + 1):
    g = grad(w, t - 1)
    eta, lam = lr(t - 1), weight_decay(t - 1)
    rho = rho_inf - 2 * t * b2**t / (1 - b2**t)  # (12)
    for k in w:
      for n in w[k]:
        m[k][n] = b1 * m[k][n] + (1 - b1) * g[k][n]  # (6)
        v2[k][n] = b2 * v2[k][n] + (1 - b2) * (g[k][n] - m[k][n]) ** 2 + eps  # (16)
        m_hat = m[k][n] / (1 - b1**t)  # (8)
        v_hat = v2[k][n] / (1 - b2**t)  # (9)
        decay = lam * w[k][n] if mask[k][n] else 0.0
        if rho > threshold:
          gamma = math.sqrt((rho - 4) * (rho - 2) * rho_inf
                            / ((rho_inf - 4) * (rho_inf - 2) * rho))  # (13)
          w[k][n] = w[k][n] - eta * (gamma * m_hat / np.sqrt(v_hat + eps) + decay)  # (19)
        else:
          w[k][n] = w[k][n] - eta * (m_hat + decay)  # (20)
    history.append({k: dict(v) for k, v in w.items()})
  return history


@pytest.mark.parametrize("b2,eps", [(0.999, 1e-8), (0.99, 1e-6)])
def test_matches_seed_003_section_3(b2, eps):
  params = random_tree(4)
  mask = mask_of(params)
  quad = NoisyQuadratic(4, STEPS)
  lr = optax.join_schedules([optax.linear_schedule(0.0, 0.01, 10),
                             optax.cosine_decay_schedule(0.01, STEPS - 10)], [10])  # eq. (17)
  wd = optax.piecewise_constant_schedule(0.05, {int(0.75 * STEPS): 0.0})  # off at 75%
  got = run(optim.hybrid(lr, b1=0.9, b2=b2, eps=eps, weight_decay=wd, mask=mask), params,
            quad, STEPS)
  ref = hybrid_reference(params, quad.grad64, STEPS, lambda t: float(lr(t)), 0.9, b2, eps,
                         lambda t: float(wd(t)), 4.0, mask)
  # Measured ≤ 8.2e-7·(1 + |θ|): the floor set by storing θ in float32 at all (a random walk of
  # ±ulp/2 roundings, ≈ 3.5 ulp after 150 steps, max over 168 elements). It needs ρ_t and the
  # bias corrections computed accurately (hybrid.rectifier_length): the naive f32 ρ_t is off by
  # ~0.03 at t = 5, i.e. ~2% in γ_5.
  assert_trajectories_close(got, ref, tol=1e-6)


def test_first_steps_are_unrectified():
  """ρ_1..ρ_4 ≤ 4 for β₂ = 0.999: the update is η·m̂ (eq. (20)), exactly the momentum average."""
  params = {"w": jnp.ones((2, 3))}
  tx = optim.hybrid(0.1, weight_decay=0.0)
  state = tx.init(params)
  g = {"w": jnp.full((2, 3), 2.0)}
  for _ in range(4):
    updates, state = tx.update(g, state, params)
    np.testing.assert_allclose(updates["w"], -0.1 * 2.0, rtol=1e-6)  # m̂ = g for constant g
  updates, state = tx.update(g, state, params)  # t = 5: ρ_5 = 4.996 > 4, rectified
  assert abs(float(updates["w"][0, 0])) < 0.1 * 2.0 * 0.05


def test_rectifier_length_is_accurate_in_float32():
  for b2 in (0.9, 0.99, 0.999, 0.9999):
    t = np.arange(1, 30001, dtype=np.float64)
    exact = (2 / (1 - b2) - 1) - 2 * t * b2**t / (1 - b2**t)
    got = np.asarray(rectifier_length(b2, jnp.arange(1, 30001)), np.float64)
    np.testing.assert_allclose(got, exact, rtol=1e-6)
    got = np.asarray(one_minus_power(b2, jnp.arange(1, 30001)), np.float64)
    np.testing.assert_allclose(got, 1 - b2**t, rtol=1e-6)


def test_eps_sits_inside_the_square_root():
  """With v̂ ≈ 0 the step is γ m̂ / √ε (eq. (19)), not γ m̂ / ε as with ε outside the root."""
  params = {"w": jnp.zeros((3,))}
  tx = optim.scale_by_hybrid(b1=0.0, b2=0.9, eps=1e-4)
  state = tx.init(params)
  g = {"w": jnp.full((3,), 1e-3)}
  for _ in range(10):
    updates, state = tx.update(g, state, params)
  t, b2, eps = 10, 0.9, 1e-4
  rho_inf = 2 / (1 - b2) - 1
  rho = rho_inf - 2 * t * b2**t / (1 - b2**t)
  gamma = math.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
  v_hat = eps * (1 - b2**t) / (1 - b2) / (1 - b2**t)  # only the ε of eq. (16): g − m = 0
  np.testing.assert_allclose(updates["w"], gamma * 1e-3 / math.sqrt(v_hat + eps), rtol=1e-5)
