"""SmoothOut: the law of the weight perturbation, and the train step's use of it."""

import math

import jax
import jax.numpy as jnp
import numpy as np
from optim_reference import random_tree
import pytest

from configs import quickstart
from configs import sweeps
from lbjax import mesh as mesh_lib
from lbjax import optim
from lbjax import step as step_lib


def test_perturbation_is_uniform_in_the_box():
  s, n = 0.05, 100_000
  params = {"w": jnp.ones((n,)), "b": jnp.full((1000,), -3.0, jnp.bfloat16)}
  out = optim.smoothout_perturb(params, jax.random.PRNGKey(0), s)
  assert jax.tree.map(lambda x: x.dtype, out) == jax.tree.map(lambda x: x.dtype, params)
  d = np.asarray(out["w"], np.float64) - 1.0
  assert d.min() >= -s * (1 + 1e-6) and d.max() <= s * (1 + 1e-6)
  assert abs(d.mean()) < 5 * s / math.sqrt(3 * n)
  assert abs(d.var() / (s * s / 3) - 1) < 5 * math.sqrt(0.8 / n)


def test_adaptive_scales_each_tensor_by_its_rms():
  s = 0.1
  params = {"big": jnp.full((200, 50), 4.0), "small": jnp.full((300,), 1e-2),
            "mixed": jnp.asarray(random_tree(0)["dense"]["kernel"])}
  out = optim.smoothout_perturb(params, jax.random.PRNGKey(1), s, adaptive=True)
  unit = optim.smoothout_perturb(jax.tree.map(jnp.zeros_like, params), jax.random.PRNGKey(1), 1.0)
  for k, p in params.items():
    rms = float(np.sqrt(np.mean(np.square(np.asarray(p, np.float64)))))
    d = np.asarray(out[k], np.float64) - np.asarray(p, np.float64)
    # The same unit draws as the plain perturbation, scaled by s·RMS(θ_l).
    np.testing.assert_allclose(d, s * rms * np.asarray(unit[k]), rtol=1e-5, atol=1e-6 * rms)
    assert np.abs(d).max() <= s * rms * (1 + 1e-5)


def test_key_depends_on_step_and_seed_only():
  params = random_tree(1)
  a = optim.smoothout_perturb(params, optim.smoothout_key(0, 7), 0.1)
  b = optim.smoothout_perturb(params, optim.smoothout_key(0, 7), 0.1)
  c = optim.smoothout_perturb(params, optim.smoothout_key(0, 8), 0.1)
  d = optim.smoothout_perturb(params, optim.smoothout_key(1, 7), 0.1)
  leaves = lambda t: np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)])
  np.testing.assert_array_equal(leaves(a), leaves(b))
  assert not np.allclose(leaves(a), leaves(c)) and not np.allclose(leaves(a), leaves(d))


def small_config(**overrides):
  c = quickstart.get_config()
  c.image_size = 16
  c.batch_size = 32
  c.num_epochs = 1.0
  c.progress_bar = False
  c.optimizer.weight_decay = 0.0
  return sweeps.apply_overrides(c, overrides, where="test")


def test_train_step_takes_the_gradient_at_the_perturbed_weights():
  """One SGD step with SmoothOut from θ equals a plain step from θ + δ, shifted back by −δ."""
  s = 0.05
  exp = step_lib.build(small_config(**{"smoothout.scale": s}))
  plain = step_lib.build(small_config(), data=exp.data)
  mesh = mesh_lib.data_mesh(jax.devices()[:1])
  state = exp.init_state()
  delta_params = optim.smoothout_perturb(state.params, optim.smoothout_key(0, 0), s)
  delta = jax.tree.map(lambda a, b: a - b, delta_params, state.params)
  smooth, _ = exp.train_program(mesh)(mesh_lib.put_replicated(state, mesh),
                                      exp.put_train_batch(0, mesh))
  shifted, _ = plain.train_program(mesh)(
      mesh_lib.put_replicated(state.replace(params=delta_params), mesh),
      plain.put_train_batch(0, mesh))
  smooth, shifted = mesh_lib.to_host(smooth), mesh_lib.to_host(shifted)
  for a, b, d in zip(jax.tree.leaves(smooth.params), jax.tree.leaves(shifted.params),
                     jax.tree.leaves(delta)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b - d), atol=1e-6)
  assert max(float(np.abs(d).max()) for d in jax.tree.leaves(delta)) > 0.9 * s


@pytest.mark.parametrize("adaptive", [False, True])
def test_replicas_stay_bit_identical_with_smoothout_and_noise(adaptive):
  n = 4
  assert jax.device_count() >= n, "tests/conftest.py must simulate 4 CPU devices"
  config = small_config(**{"smoothout.scale": 0.05, "smoothout.adaptive": adaptive,
                           "smoothout.annealing": "cosine", "noise.scale": 1e-3,
                           "noise.annealing": "linear"})
  exp = step_lib.build(config)
  mesh = mesh_lib.data_mesh(jax.devices()[:n])
  step = exp.train_program(mesh)
  state = mesh_lib.put_replicated(exp.init_state(), mesh)
  for t in range(3):
    state, _ = step(state, exp.put_train_batch(t, mesh))
  for leaf in jax.tree.leaves(state):
    replicas = [np.asarray(shard.data) for shard in leaf.addressable_shards]  # each device's
    assert len(replicas) == n
    for replica in replicas[1:]:
      np.testing.assert_array_equal(replica, replicas[0])
