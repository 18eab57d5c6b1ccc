"""LARS against a float64 NumPy transcription of seed 000 Algorithm 1, and against optax.lars."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from optim_reference import NoisyQuadratic
from optim_reference import assert_trajectories_close
from optim_reference import mask_of
from optim_reference import max_rel_error
from optim_reference import random_tree
from optim_reference import run
from optim_reference import to64
import pytest

from lbjax import optim

STEPS = 120


def lars_reference(w, grad, steps, lr, momentum, weight_decay, trust, mask):
  """Seed 000 Alg. 1 per tensor, float64; masked-out tensors: v ← m v + γ g (no λ, no β)."""
  w = to64(w)
  v = jax.tree.map(np.zeros_like, w)
  history = []
  for t in range(steps):
    g = grad(w, t)
    gamma, beta = lr(t), weight_decay(t)

    def step(w_l, g_l, v_l, adapt, gamma=gamma, beta=beta):
      if adapt:
        wn, gn = np.linalg.norm(w_l), np.linalg.norm(g_l)
        local = trust * wn / (gn + beta * wn) if wn > 0 and gn > 0 else 1.0
        v_l = momentum * v_l + gamma * local * (g_l + beta * w_l)
      else:
        v_l = momentum * v_l + gamma * g_l
      return v_l

    v = jax.tree.map(step, w, g, v, mask)
    w = jax.tree.map(lambda a, b: a - b, w, v)
    history.append(w)
  return history


def warmup_cosine(peak, warmup, total):
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup),
                               optax.cosine_decay_schedule(peak, total - warmup)], [warmup])


@pytest.mark.parametrize("trust,weight_decay", [(1.0, 5e-4), (0.02, 0.05)])
def test_matches_seed_algorithm_1(trust, weight_decay):
  params = random_tree(0)
  mask = mask_of(params)
  quad = NoisyQuadratic(0, STEPS)
  lr = warmup_cosine(0.1, 10, STEPS)
  # Weight decay switched off after 75% of the steps, as a schedule of the step.
  wd = optax.piecewise_constant_schedule(weight_decay, {int(0.75 * STEPS): 0.0})
  got = run(optim.lars(lr, momentum=0.9, weight_decay=wd, trust_coefficient=trust, mask=mask),
            params, quad, STEPS)
  ref = lars_reference(params, quad.grad64, STEPS, lambda t: float(lr(t)), 0.9,
                       lambda t: float(wd(t)), trust, mask)
  # float32 rounding accumulated over 120 steps: measured ≤ 6e-7 absolute (weights O(1)).
  assert_trajectories_close(got, ref, tol=1e-6)
  # The masked tensors really took plain momentum steps and the kernels adapted ones.
  assert not np.allclose(got[-1]["norm"]["scale"], params["norm"]["scale"])


def test_local_rate_is_one_where_a_norm_is_zero():
  params = {"zero_w": jnp.zeros((3, 3)), "w": jnp.ones((2, 2))}
  grads = {"zero_w": jnp.ones((3, 3)), "w": jnp.zeros((2, 2))}
  tx = optim.scale_by_lars(weight_decay=0.1, trust_coefficient=0.001)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_array_equal(updates["zero_w"], np.ones((3, 3)))  # λ = 1, βw = 0
  np.testing.assert_allclose(updates["w"], 0.1 * np.ones((2, 2)))  # λ = 1: g + βw = 0.1


@pytest.mark.parametrize("trust", [1.0, 0.001])
def test_agrees_with_optax_lars_without_weight_decay(trust):
  params = random_tree(1)
  mask = mask_of(params)
  quad = NoisyQuadratic(1, STEPS)
  lr = warmup_cosine(0.5, 5, STEPS)
  ours = run(optim.lars(lr, momentum=0.9, weight_decay=0.0, trust_coefficient=trust, mask=mask),
             params, quad, STEPS)
  theirs = run(optax.lars(lr, weight_decay=0.0, trust_coefficient=trust, momentum=0.9,
                          trust_ratio_mask=mask), params, quad, STEPS)
  assert_trajectories_close(ours, [to64(x) for x in theirs], tol=1e-6)


def test_differs_from_optax_lars_with_weight_decay():
  """The seed's denominator ‖g‖ + β‖w‖ is not optax's ‖g + βw‖: the difference is real."""
  params = random_tree(2)
  grads = random_tree(3)
  ours = optim.lars(1.0, weight_decay=0.5)
  theirs = optax.lars(1.0, weight_decay=0.5, trust_coefficient=1.0)
  u1, _ = ours.update(grads, ours.init(params), params)
  u2, _ = theirs.update(grads, theirs.init(params), params)
  assert max_rel_error(u1, to64(u2)) > 1e-3
