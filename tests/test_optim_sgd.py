"""Momentum SGD in its two placements of the learning rate, against NumPy loops.

``sgd(lr_in_buffer=True)`` is seed 002 eqs. (1)–(2), m ← αm − ε∇L, w ← w + m; the default is
optax's (and PyTorch's) v ← μv + g, w ← w − ηv. They agree for a constant rate and differ for
about 1/(1 − μ) steps after a learning-rate drop.
"""

import jax
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

STEPS = 40
DROP = 20  # step decay at step 20 (seed 002: lr ← lr · lr_decay every lr_decay_epoch epochs)


def seed002_reference(w, grad, steps, lr, alpha, weight_decay, mask):
  """Seed 002 eqs. (1)–(2) in float64, L2 decay on masked tensors: m ← αm − ε(g + λw); w ← w + m."""
  w = to64(w)
  m = jax.tree.map(np.zeros_like, w)
  history = []
  for t in range(steps):
    g = grad(w, t)
    g = jax.tree.map(lambda g_, p, k: g_ + weight_decay * p if k else g_, g, w, mask)
    eps = lr(t)
    m = jax.tree.map(lambda m_, g_, eps=eps: alpha * m_ - eps * g_, m, g)  # (1)
    w = jax.tree.map(lambda p, m_: p + m_, w, m)  # (2)
    history.append(w)
  return history


def optax_reference(w, grad, steps, lr, mu, weight_decay, mask):
  """optax / PyTorch momentum SGD in float64: v ← μv + (g + λw); w ← w − ηv."""
  w = to64(w)
  v = jax.tree.map(np.zeros_like, w)
  history = []
  for t in range(steps):
    g = grad(w, t)
    g = jax.tree.map(lambda g_, p, k: g_ + weight_decay * p if k else g_, g, w, mask)
    v = jax.tree.map(lambda v_, g_: mu * v_ + g_, v, g)
    eta = lr(t)
    w = jax.tree.map(lambda p, v_, eta=eta: p - eta * v_, w, v)
    history.append(w)
  return history


@pytest.mark.parametrize("lr_in_buffer,reference", [(True, seed002_reference),
                                                     (False, optax_reference)])
def test_each_form_matches_its_equations_across_a_learning_rate_drop(lr_in_buffer, reference):
  params = random_tree(20)
  mask = mask_of(params)
  quad = NoisyQuadratic(20, STEPS)
  lr = optax.piecewise_constant_schedule(0.05, {DROP: 0.1})
  got = run(optim.sgd(lr, momentum=0.9, weight_decay=5e-3, mask=mask, lr_in_buffer=lr_in_buffer),
            params, quad, STEPS)
  ref = reference(params, quad.grad64, STEPS, lambda t: float(lr(t)), 0.9, 5e-3, mask)
  assert_trajectories_close(got, ref, tol=1e-6)


def test_the_forms_agree_before_the_drop_and_differ_after():
  params = random_tree(21)
  quad = NoisyQuadratic(21, STEPS)
  lr = optax.piecewise_constant_schedule(0.05, {DROP: 0.1})
  seed = run(optim.sgd(lr, momentum=0.9, lr_in_buffer=True), params, quad, STEPS)
  default = run(optim.sgd(lr, momentum=0.9), params, quad, STEPS)
  gap = [max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(y)))
         for x, y in zip(seed, default)]
  assert max(gap[:DROP]) < 1e-5
  assert gap[DROP] > 1e-3  # the old steps still in m are not rescaled by the drop
