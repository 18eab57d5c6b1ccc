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
from lbjax import swa

STEPS = 120


def lars_reference(w, grad, steps, lr, momentum, weight_decay, trust, mask, ratios=None):
  """Seed 000 Alg. 1 per tensor, float64; masked-out tensors: v ← m v + γ g (no λ, no β).

  ``ratios``, if a list, receives each step's local rates λ_l (1.0 for masked-out tensors)."""
  w = to64(w)
  v = jax.tree.map(np.zeros_like, w)
  history = []
  for t in range(steps):
    g = grad(w, t)
    gamma, beta = lr(t), weight_decay(t)

    def local_rate(w_l, g_l, adapt, beta=beta):
      wn, gn = np.linalg.norm(w_l), np.linalg.norm(g_l)
      return trust * wn / (gn + beta * wn) if adapt and wn > 0 and gn > 0 else 1.0

    local = jax.tree.map(local_rate, w, g, mask)

    def step(w_l, g_l, v_l, adapt, lam, gamma=gamma, beta=beta):
      if adapt:
        return momentum * v_l + gamma * lam * (g_l + beta * w_l)
      return momentum * v_l + gamma * g_l

    v = jax.tree.map(step, w, g, v, mask, local)
    w = jax.tree.map(lambda a, b: a - b, w, v)
    history.append(w)
    if ratios is not None:
      ratios.append(local)
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


def test_trust_ratios_are_the_local_rates_of_algorithm_1():
  """`optim.trust_ratios` after each of several updates (warmup/cosine learning rate, decay
  switched off mid-way, kernels-only mask) equals the λ_l of the NumPy transcription; through
  ``inject_hyperparams``, a chain with update noise and the SWA wrapper."""
  steps = 8
  params, quad = random_tree(4), NoisyQuadratic(4, steps)
  mask = mask_of(params)
  lr = warmup_cosine(0.1, 3, steps)
  wd = optax.piecewise_constant_schedule(0.05, {5: 0.0})
  inner = optax.inject_hyperparams(optim.lars, static_args=("mask",))(
      learning_rate=lr, momentum=0.9, weight_decay=wd, trust_coefficient=0.5, mask=mask)
  tx = swa.swa(optax.chain(inner, optim.add_uniform_noise(0.0)), start_step=2)
  before = optim.trust_ratios(tx.init(params))
  assert all(float(r) == 1.0 for r in jax.tree.leaves(before))
  states, expected = [], []
  got = run(tx, params, quad, steps, states=states)
  ref = lars_reference(params, quad.grad64, steps, lambda t: float(lr(t)), 0.9,
                       lambda t: float(wd(t)), 0.5, mask, ratios=expected)
  assert_trajectories_close(got, ref, tol=1e-6)
  for t, (state, lam) in enumerate(zip(states, expected)):
    ratios = optim.trust_ratios(state)
    assert jax.tree.structure(ratios) == jax.tree.structure(params)
    for path, r, e, adapt in zip(jax.tree_util.tree_flatten_with_path(ratios)[0],
                                 jax.tree.leaves(ratios), jax.tree.leaves(lam),
                                 jax.tree.leaves(mask)):
      assert np.shape(r) == () and np.asarray(r).dtype == np.float32
      where = f"step {t + 1}, {jax.tree_util.keystr(path[0])}"
      if adapt:
        assert abs(e - 1.0) > 1e-2, where  # a real rate, not the default
        np.testing.assert_allclose(float(r), e, rtol=1e-5, err_msg=where)
      else:
        assert float(r) == 1.0, where  # outside the mask: no layer-wise factor
  metrics = optim.trust_ratio_metrics(states[-1])
  assert sorted(metrics) == sorted(
      "trust_ratio/" + "/".join(k.key for k in path)
      for path, _ in jax.tree_util.tree_flatten_with_path(params)[0])
  assert float(metrics["trust_ratio/conv/kernel"]) == float(optim.trust_ratios(states[-1])[
      "conv"]["kernel"])


def test_trust_ratio_is_one_where_a_norm_is_zero_and_absent_without_lars():
  params = {"zero_w": jnp.zeros((3, 3)), "w": jnp.ones((2, 2)), "v": jnp.ones((2, 2))}
  grads = {"zero_w": jnp.ones((3, 3)), "w": jnp.zeros((2, 2)), "v": jnp.full((2, 2), 3.0)}
  tx = optim.lars(1.0, weight_decay=0.5, trust_coefficient=0.1)
  _, state = tx.update(grads, tx.init(params), params)
  ratios = optim.trust_ratios(state)
  assert float(ratios["zero_w"]) == 1.0 and float(ratios["w"]) == 1.0
  # ‖v‖ = 2, ‖g‖ = 6: λ = 0.1 · 2 / (6 + 0.5 · 2)
  assert float(ratios["v"]) == pytest.approx(0.1 * 2 / 7, rel=1e-6)
  for tx in (optim.sgd(0.1), optax.chain(optim.adam(0.1), optim.add_uniform_noise(0.1))):
    assert not optim.has_trust_ratios(tx)
    with pytest.raises(ValueError, match="no trust ratios"):
      optim.trust_ratios(tx.init(params))
  assert optim.has_trust_ratios(tx=optim.lars(0.1)) and optim.has_trust_ratios(optim.lamb(0.1))
  both = optax.chain(optim.lars(0.1), optim.lamb(0.1))
  with pytest.raises(ValueError, match="2 sets"):
    optim.trust_ratios(both.init(params))
