"""Uniform update noise (seed 001 eq. (1)): the update rule, the law of δ, annealing, replicas."""

import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import ml_collections
import numpy as np
import optax
from optim_reference import NoisyQuadratic
from optim_reference import assert_trajectories_close
from optim_reference import mask_of
from optim_reference import random_tree
from optim_reference import run
from optim_reference import to64
import pytest

from lbjax import mesh as mesh_lib
from lbjax import optim
from lbjax import schedules

STEPS = 120


def draws(scale, steps, like, seed=0):
  """The δ_t the transform adds, read off by feeding it zero updates."""
  tx = optim.add_uniform_noise(scale, seed=seed)
  update = jax.jit(tx.update)
  state = tx.init(like)
  zeros = jax.tree.map(jnp.zeros_like, like)
  out = []
  for _ in range(steps):
    delta, state = update(zeros, state)
    out.append(jax.device_get(delta))
  return out


def test_eq_1_against_numpy_reference():
  """θ_{t+1} = θ_t − η(∇E(θ_t) + λθ_t[mask]) + δ_t, δ_t ~ U(−s_t, s_t), for 120 steps."""
  params = random_tree(8)
  mask = mask_of(params)
  quad = NoisyQuadratic(8, STEPS)
  eta, lam = 0.05, 1e-2
  scale = optax.exponential_decay(1e-2, STEPS, 0.01)
  got = run(optax.chain(optim.sgd(eta, momentum=0.0, weight_decay=lam, mask=mask),
                        optim.add_uniform_noise(scale, seed=3)), params, quad, STEPS)
  # The draws do not depend on the update they are added to: zero updates give the same δ_t.
  deltas = draws(scale, STEPS, params, seed=3)
  theta, ref = to64(params), []
  for t in range(STEPS):
    g = quad.grad64(theta, t)
    theta = jax.tree.map(lambda th, g_, m, d: th - eta * (g_ + (lam * th if m else 0.0)) + d,
                         theta, g, mask, deltas[t])
    ref.append(theta)
  assert_trajectories_close(got, ref, tol=1e-6)
  for t in (0, STEPS - 1):  # |δ_t| ≤ s_t, and the noise is really there
    leaves = np.concatenate([np.ravel(d) for d in jax.tree.leaves(deltas[t])])
    assert np.max(np.abs(leaves)) <= float(scale(t))
    assert np.max(np.abs(leaves)) > 0.5 * float(scale(t))


def test_law_of_delta_is_uniform():
  s, n = 0.3, 200_000
  like = {"a": jnp.zeros((n,)), "b": jnp.zeros((400, 500))}
  out = draws(s, 3, like)
  for t, d in enumerate(out):
    for x in (d["a"], d["b"].ravel()):
      assert x.min() >= -s and x.max() <= s
      assert x.min() < -s * (1 - 1e-3) and x.max() > s * (1 - 1e-3)
      # Mean 0 ± 5σ, σ² = s²/(3n); variance s²/3 ± 5σ, σ(var)/var = √(0.8/n).
      assert abs(x.mean()) < 5 * s / math.sqrt(3 * n)
      assert abs(x.var() / (s * s / 3) - 1) < 5 * math.sqrt(0.8 / n)
      # Flat density: empirical quantiles of δ/s at 2q − 1 (DKW bound ~ 5e-3 at this n).
      q = np.linspace(0.05, 0.95, 19)
      np.testing.assert_allclose(np.quantile(x / s, q), 2 * q - 1, atol=1e-2)
    # Independent across tensors and steps.
    assert abs(np.corrcoef(d["a"], d["b"].ravel())[0, 1]) < 5 / math.sqrt(n)
  assert abs(np.corrcoef(out[0]["a"], out[1]["a"])[0, 1]) < 5 / math.sqrt(n)


@pytest.mark.parametrize("annealing,final_ratio,expected", [
    ("none", 0.0, lambda s, r, t, T: s),
    ("exponential", 0.01, lambda s, r, t, T: s * r ** (t / T)),
    ("linear", 0.1, lambda s, r, t, T: s + (s * r - s) * t / T),
    ("cosine", 0.0, lambda s, r, t, T: s * (r + (1 - r) * (1 + math.cos(math.pi * t / T)) / 2)),
])
def test_annealed_scale_follows_its_schedule(annealing, final_ratio, expected):
  s, total = 0.05, 40
  block = ml_collections.ConfigDict({"scale": s, "annealing": annealing,
                                     "final_ratio": final_ratio})
  scale = schedules.build_annealed(block, total)
  like = {"w": jnp.zeros((64, 8)), "b": jnp.zeros((8,))}
  annealed, unit = draws(scale, total, like, seed=5), draws(1.0, total, like, seed=5)
  for t in range(total):
    d = np.concatenate([np.ravel(x) for x in jax.tree.leaves(annealed[t])]).astype(np.float64)
    u = np.concatenate([np.ravel(x) for x in jax.tree.leaves(unit[t])]).astype(np.float64)
    s_t = d @ u / (u @ u)  # δ_t = s_t·u_t: the same unit draws, scaled
    # The schedule is evaluated in float32: near the end of cosine annealing (1 + cos → 0) its
    # error is absolute, ~ulp(s), hence atol relative to the initial scale s.
    np.testing.assert_allclose(s_t, expected(s, final_ratio, t, total), rtol=1e-6, atol=1e-6 * s)
    np.testing.assert_allclose(d, s_t * u, rtol=1e-6, atol=1e-6 * s)


def test_replicas_stay_bit_identical_on_4_devices():
  n = 4
  assert jax.device_count() >= n, "tests/conftest.py must simulate 4 CPU devices"
  mesh = mesh_lib.data_mesh(jax.devices()[:n])
  params = random_tree(9)
  tx = optax.chain(optim.sgd(0.1, momentum=0.9), optim.add_uniform_noise(1e-2, seed=0))
  rng = np.random.default_rng(0)
  local_grads = [jax.tree.map(lambda p: rng.standard_normal((n, *p.shape)).astype(np.float32),
                              params) for _ in range(10)]

  def step(params, state, grads):
    grads = jax.tree.map(lambda g: g[0], grads)  # this device's own gradients
    grads = jax.lax.pmean(grads, "batch")  # each device saw different data
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  p_step = mesh_lib.data_parallel(step, mesh, in_specs=(P(), P(), P("batch")), out_specs=P())
  p_params = mesh_lib.put_replicated(params, mesh)
  p_state = mesh_lib.put_replicated(tx.init(params), mesh)
  for grads in local_grads:
    p_params, p_state = p_step(p_params, p_state, mesh_lib.put_sharded(grads, mesh, "batch"))
  for leaf in jax.tree.leaves((p_params, p_state)):
    replicas = [np.asarray(shard.data) for shard in leaf.addressable_shards]  # each device's
    assert len(replicas) == n
    for replica in replicas[1:]:
      np.testing.assert_array_equal(replica, replicas[0])
  # The noise did act: the same run without it ends elsewhere.
  quiet = optim.sgd(0.1, momentum=0.9)
  q_params, q_state = params, quiet.init(params)
  for grads in local_grads:
    updates, q_state = quiet.update(jax.tree.map(lambda g: g.mean(0), grads), q_state, q_params)
    q_params = optax.apply_updates(q_params, updates)
  gap = max(float(np.abs(a - b).max())
            for a, b in zip(jax.tree.leaves(mesh_lib.to_host(p_params)), jax.tree.leaves(q_params)))
  assert gap > 1e-3


def test_negative_scale_is_a_value_error_naming_the_argument():
  with pytest.raises(ValueError) as e:
    optim.add_uniform_noise(-1e-3)
  assert e.value.argument == "scale"
