"""NAG: seed 003 eqs. (3)–(5) run literally in NumPy vs the reparameterised optax chain."""

import jax
import numpy as np
import optax
from optim_reference import NoisyQuadratic
from optim_reference import assert_trajectories_close
from optim_reference import mask_of
from optim_reference import random_tree
from optim_reference import run
from optim_reference import to64

from lbjax import optim

STEPS = 150
MU = 0.9


def nag_reference(theta, grad, steps, lr, momentum, weight_decay, mask):
  """Eqs. (3)–(5) in float64, gradient (+ L2 decay on masked tensors) at the look-ahead point.

  Returns the look-ahead points φ_t = θ_t − μΔθ_t, the weights the transform holds.
  """
  theta = to64(theta)
  delta = jax.tree.map(np.zeros_like, theta)
  history = []
  for t in range(steps):
    ahead = jax.tree.map(lambda th, d: th - momentum * d, theta, delta)
    g = grad(ahead, t)  # (5)
    g = jax.tree.map(lambda g_, a, m: g_ + weight_decay * a if m else g_, g, ahead, mask)
    eta = lr(t)
    delta = jax.tree.map(lambda d, g_, eta=eta: momentum * d + (1 - momentum) * eta * g_,
                         delta, g)  # (3)
    theta = jax.tree.map(lambda th, d: th - d, theta, delta)  # (4)
    history.append(jax.tree.map(lambda th, d: th - momentum * d, theta, delta))
  return history


def test_matches_seed_003_eqs_3_to_5_with_a_schedule():
  params = random_tree(5)
  mask = mask_of(params)
  quad = NoisyQuadratic(5, STEPS)
  lr = optax.piecewise_constant_schedule(0.1, {50: 0.1, 100: 0.1})  # step decay, seed 003 §4
  got = run(optim.nag(lr, momentum=MU, weight_decay=1e-2, mask=mask), params, quad, STEPS)
  ref = nag_reference(params, quad.grad64, STEPS, lambda t: float(lr(t)), MU, 1e-2, mask)
  # Measured ≤ 3e-7 of (1 + |θ|): float32 rounding of θ itself over 150 steps.
  assert_trajectories_close(got, ref, tol=1e-6)


def test_constant_rate_equals_optax_nesterov_sgd_with_dampened_rate():
  """With constant η, eqs. (3)–(5) are optax.sgd((1 − μ)η, μ, nesterov=True) on φ."""
  params = random_tree(6)
  quad = NoisyQuadratic(6, STEPS)
  ours = run(optim.nag(0.2, momentum=MU), params, quad, STEPS)
  theirs = run(optax.sgd((1 - MU) * 0.2, momentum=MU, nesterov=True), params, quad, STEPS)
  assert_trajectories_close(ours, [to64(x) for x in theirs], tol=1e-6)


def test_with_a_schedule_optax_sgd_is_not_the_same():
  """optax scales the trace by η_t; eq. (3) accumulates (1 − μ)η_t g_t: they differ after a drop."""
  params = random_tree(7)
  quad = NoisyQuadratic(7, 40)
  lr = optax.piecewise_constant_schedule(0.5, {20: 0.01})
  dampened = lambda t: (1 - MU) * lr(t)
  ours = run(optim.nag(lr, momentum=MU), params, quad, 40)
  theirs = run(optax.sgd(dampened, momentum=MU, nesterov=True), params, quad, 40)
  ref = nag_reference(params, quad.grad64, 40, lambda t: float(lr(t)), MU, 0.0, mask_of(params))
  assert_trajectories_close(ours, ref, tol=1e-6)
  gap = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(theirs[-1]),
                                                       jax.tree.leaves(ref[-1])))
  assert gap > 1e-2


def pytorch_nesterov_reference(w, grad, steps, lr, momentum, weight_decay, mask):
  """torch.optim.SGD(nesterov=True, dampening=0) in float64: b ← μb + g; w ← w − η(g + μb)."""
  w = to64(w)
  buf = jax.tree.map(np.zeros_like, w)
  history = []
  for t in range(steps):
    g = grad(w, t)
    g = jax.tree.map(lambda g_, p, m: g_ + weight_decay * p if m else g_, g, w, mask)
    buf = jax.tree.map(lambda b, g_: momentum * b + g_, buf, g)
    eta = lr(t)
    w = jax.tree.map(lambda p, g_, b, eta=eta: p - eta * (g_ + momentum * b), w, g, buf)
    history.append(w)
  return history


def test_undamped_is_optax_nesterov_sgd_and_pytorch_across_lr_drops():
  """Issue 18 item 1: nag(damped=False) is optax.sgd(η, μ, nesterov=True) over 50 steps with a
  step decay, and PyTorch's SGD(nesterov=True) (NumPy transcription)."""
  steps = 50
  params = random_tree(8)
  quad = NoisyQuadratic(8, steps)
  lr = optax.piecewise_constant_schedule(0.1, {15: 0.1, 35: 0.1})
  ours = run(optim.nag(lr, momentum=MU, damped=False), params, quad, steps)
  theirs = run(optax.sgd(lr, momentum=MU, nesterov=True), params, quad, steps)
  for a, b in zip(ours, theirs):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
  ref = pytorch_nesterov_reference(params, quad.grad64, steps, lambda t: float(lr(t)), MU, 0.0,
                                   mask_of(params))
  assert_trajectories_close(ours, ref, tol=1e-6)
  # The seed's damped form is another sequence at the same η.
  damped = run(optim.nag(lr, momentum=MU), params, quad, steps)
  assert max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(damped[-1]),
                                                          jax.tree.leaves(ours[-1]))) > 1e-2


def test_undamped_with_weight_decay_matches_pytorch():
  steps = 30
  params = random_tree(9)
  mask = mask_of(params)
  quad = NoisyQuadratic(9, steps)
  lr = optax.piecewise_constant_schedule(0.05, {20: 0.1})
  got = run(optim.nag(lr, momentum=MU, weight_decay=1e-2, mask=mask, damped=False), params,
            quad, steps)
  ref = pytorch_nesterov_reference(params, quad.grad64, steps, lambda t: float(lr(t)), MU, 1e-2,
                                   mask)
  assert_trajectories_close(got, ref, tol=1e-6)
