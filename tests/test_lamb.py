"""LAMB (issue 17) against an independent NumPy float64 reference of You et al. 2019, Alg. 2;
its registry entry (weight-decay mask) and the quickstart through the launcher."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from optim_reference import NoisyQuadratic
from optim_reference import assert_trajectories_close
from optim_reference import mask_of
from optim_reference import random_tree
from optim_reference import run
import pytest

from configs import quickstart
from lbjax import optim
from lbjax.optim import registry
from tests import xla
from tests.hang import HANG_SECONDS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def reference_lamb(w0, grad64, steps, *, lr, b1=0.9, b2=0.999, eps=1e-6, wd=0.0, mask=None,
                   ratios=None):
  """You et al. 2019 ("Large Batch Optimization for Deep Learning"), Algorithm 2, φ(z) = z, per
  tensor, in float64. ``lr(t)`` and ``wd(t)`` take the 0-based step; ``mask`` leaves say which
  tensors get the decay λ w. Trust ratio 1 where ‖w‖ or ‖r‖ is 0. Returns weights after each
  step; ``ratios``, if a list, receives each step's trust ratios ‖w‖/‖r‖ (a tree)."""
  w = [np.asarray(x, np.float64) for x in jax.tree.leaves(w0)]
  decay = [True] * len(w) if mask is None else jax.tree.leaves(mask)
  treedef = jax.tree.structure(w0)
  m = [np.zeros_like(x) for x in w]
  v = [np.zeros_like(x) for x in w]
  history = []
  for t in range(1, steps + 1):
    g = jax.tree.leaves(grad64(jax.tree.unflatten(treedef, w), t - 1))
    new_w, trusts = [], []
    for i, (wi, gi) in enumerate(zip(w, g)):
      m[i] = b1 * m[i] + (1 - b1) * gi
      v[i] = b2 * v[i] + (1 - b2) * gi * gi
      m_hat = m[i] / (1 - b1 ** t)
      v_hat = v[i] / (1 - b2 ** t)
      r = m_hat / (np.sqrt(v_hat) + eps)
      if decay[i]:
        r = r + wd(t - 1) * wi
      w_norm, r_norm = np.linalg.norm(wi), np.linalg.norm(r)
      trust = w_norm / r_norm if w_norm > 0 and r_norm > 0 else 1.0
      trusts.append(trust)
      new_w.append(wi - lr(t - 1) * trust * r)
    w = new_w
    history.append(jax.tree.unflatten(treedef, w))
    if ratios is not None:
      ratios.append(jax.tree.unflatten(treedef, trusts))
  return history


def _reference(params, quad, steps, **kwargs):
  return reference_lamb(params, quad.grad64, steps, **kwargs)


def test_matches_algorithm_2_with_masked_decay():
  params, quad, steps = random_tree(0), NoisyQuadratic(0, 25), 25
  tx = optim.lamb(0.02, b1=0.8, b2=0.99, eps=1e-6, weight_decay=0.1, mask=mask_of(params))
  expected = _reference(params, quad, steps, lr=lambda t: 0.02, b1=0.8, b2=0.99, wd=lambda t: 0.1,
                        mask=mask_of(params))
  assert_trajectories_close(run(tx, params, quad, steps), expected, tol=2e-5)


def test_matches_algorithm_2_defaults_and_decay_everywhere():
  params, quad, steps = random_tree(1), NoisyQuadratic(1, 20), 20
  tx = optim.lamb(0.01, weight_decay=0.05)
  expected = _reference(params, quad, steps, lr=lambda t: 0.01, wd=lambda t: 0.05)
  assert_trajectories_close(run(tx, params, quad, steps), expected, tol=2e-5)


def test_matches_algorithm_2_with_schedules():
  """Warmup + cosine learning rate, weight decay switched off after 10 steps (seed 003)."""
  params, quad, steps = random_tree(2), NoisyQuadratic(2, 20), 20
  lr = optax.warmup_cosine_decay_schedule(0.0, 0.05, 5, steps)
  wd = optax.piecewise_constant_schedule(0.1, {10: 0.0})
  tx = optim.lamb(lr, weight_decay=wd, mask=mask_of(params))
  expected = _reference(params, quad, steps, lr=lambda t: float(lr(t)), wd=lambda t: float(wd(t)),
                        mask=mask_of(params))
  assert_trajectories_close(run(tx, params, quad, steps), expected, tol=2e-5)


def test_zero_tensor_moves_and_step_is_lr_times_weight_norm():
  """‖Δw‖ = η‖w‖ per tensor (the layer-wise trust ratio); a zero tensor (trust 1) still moves."""
  params = {"kernel": jnp.asarray(np.random.default_rng(3).normal(size=(4, 3)), jnp.float32),
            "bias": jnp.zeros((3,), jnp.float32)}
  grads = {"kernel": jnp.ones((4, 3)), "bias": jnp.full((3,), -2.0)}
  tx = optim.lamb(0.1)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(np.linalg.norm(updates["kernel"]),
                             0.1 * np.linalg.norm(params["kernel"]), rtol=1e-5)
  # Bias: w = 0, so the trust ratio is 1 and the step is η m̂/(√v̂ + ε) = η · sign(g) here.
  np.testing.assert_allclose(updates["bias"], 0.1 * np.ones(3), rtol=1e-5)


def test_registered_with_the_default_decay_mask():
  """``registry.build`` passes ``decay_mask``: kernels are decayed, biases and norms are not."""
  assert registry.OPTIMIZERS["lamb"] is optim.lamb
  keys = {"learning_rate", "b1", "b2", "eps", "weight_decay"}
  assert keys <= set(registry.hyperparameters("lamb"))
  c = quickstart.get_config("lamb")
  registry.validate(c.optimizer)
  params, quad, steps = random_tree(4), NoisyQuadratic(4, 10), 10
  lr = c.optimizer.learning_rate
  tx = registry.build(c.optimizer, optax.constant_schedule(lr))
  expected = _reference(params, quad, steps, lr=lambda t: lr, wd=lambda t: c.optimizer.weight_decay,
                        mask=mask_of(params))
  assert_trajectories_close(run(tx, params, quad, steps), expected, tol=2e-5)
  unmasked = _reference(params, quad, steps, lr=lambda t: lr, wd=lambda t: c.optimizer.weight_decay)
  with pytest.raises(AssertionError):  # the mask matters on this tree
    assert_trajectories_close(run(tx, params, quad, steps), unmasked, tol=2e-5)


def test_state_and_updates_are_float32():
  params = random_tree(5)
  tx = optim.lamb(0.01, weight_decay=0.01, mask=mask_of(params))
  state = tx.init(params)
  updates, state = jax.jit(tx.update)(params, state, params)
  for leaf in jax.tree.leaves((updates, state)):
    assert leaf.dtype in (jnp.float32, jnp.int32)


def test_launcher_quickstart_lamb_reaches_090(tmp_path):
  env = xla.process_env(1, **xla.OPTIMIZED)
  run_ = subprocess.run([sys.executable, "-m", "lbjax.main", "--config=configs/quickstart.py:lamb",
                         f"--workdir={tmp_path / 'run'}", "--config.progress_bar=False"],
                        check=False, cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=HANG_SECONDS)
  assert run_.returncode == 0, run_.stderr[-3000:]
  last = run_.stdout.strip().splitlines()[-1]
  assert last.startswith("final test accuracy: ")
  assert float(last.split(": ")[1].split()[0]) >= 0.90, run_.stdout[-2000:]


def test_trust_ratios_are_algorithm_2s_after_several_updates():
  """`optim.trust_ratios` after each update (warmup/cosine learning rate, decay switched off
  mid-way, kernels-only decay mask) equals ‖w‖/‖r + λw‖ of the NumPy transcription, for every
  tensor: the mask gates only the decay, so biases and norms have their own ratio too."""
  steps = 8
  params, quad = random_tree(6, scale=4.0), NoisyQuadratic(6, steps)  # ratios near 4, not 1
  lr = optax.warmup_cosine_decay_schedule(0.0, 0.05, 3, steps)
  wd = optax.piecewise_constant_schedule(0.1, {5: 0.0})
  mask = mask_of(params)
  tx = optax.inject_hyperparams(optim.lamb, static_args=("mask",))(
      learning_rate=lr, weight_decay=wd, mask=mask)
  assert all(float(r) == 1.0 for r in jax.tree.leaves(optim.trust_ratios(tx.init(params))))
  states, expected = [], []
  got = run(tx, params, quad, steps, states=states)
  ref = _reference(params, quad, steps, lr=lambda t: float(lr(t)), wd=lambda t: float(wd(t)),
                   mask=mask, ratios=expected)
  assert_trajectories_close(got, ref, tol=2e-5)
  for t, (state, trust) in enumerate(zip(states, expected)):
    ratios = optim.trust_ratios(state)
    assert jax.tree.structure(ratios) == jax.tree.structure(params)
    for path, r, e in zip(jax.tree_util.tree_flatten_with_path(ratios)[0],
                          jax.tree.leaves(ratios), jax.tree.leaves(trust)):
      where = f"step {t + 1}, {jax.tree_util.keystr(path[0])}"
      assert np.asarray(r).dtype == np.float32 and abs(e - 1.0) > 1e-2, where
      np.testing.assert_allclose(float(r), e, rtol=1e-4, err_msg=where)
