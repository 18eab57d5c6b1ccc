"""lbjax.analysis.sharpness against exact references: the dense Hessian of a small MLP
(``jax.hessian`` + ``numpy.linalg.eigvalsh``), the closed form of ε-sharpness of separable
quadratics, and the command on 1 and on 4 devices."""

import json
import os
import shutil
import subprocess
import sys

import jax
from jax.flatten_util import ravel_pytree
import jax.numpy as jnp
import numpy as np
import pytest

from lbjax.analysis import runs
from lbjax.analysis import sharpness
from tests import experiment_runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _mlp_problem():
  """A 16-48-10 tanh MLP (1306 parameters) trained 300 full-batch steps on 96 random points."""
  rng = np.random.default_rng(0)
  x = rng.standard_normal((96, 16)).astype(np.float32)
  targets = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 96)]
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  params = {"hidden": {"w": jax.random.normal(k1, (16, 48)) / 4.0, "b": jnp.zeros(48)},
            "out": {"w": jax.random.normal(k2, (48, 10)) / np.sqrt(48), "b": jnp.zeros(10)}}

  def loss_fn(p):
    h = jnp.tanh(x @ p["hidden"]["w"] + p["hidden"]["b"])
    logits = h @ p["out"]["w"] + p["out"]["b"]
    return -jnp.mean(jnp.sum(targets * jax.nn.log_softmax(logits), -1))

  step = jax.jit(lambda p: jax.tree.map(lambda a, g: a - 0.5 * g, p, jax.grad(loss_fn)(p)))
  for _ in range(300):
    params = step(params)
  return loss_fn, params


def _dense_hessian(loss_fn, params) -> np.ndarray:
  flat, unravel = ravel_pytree(params)
  h = np.asarray(jax.hessian(lambda v: loss_fn(unravel(v)))(flat), np.float64)
  return (h + h.T) / 2


def test_top_eigenvalues_and_trace_match_the_dense_hessian():
  loss_fn, params = _mlp_problem()
  hessian = _dense_hessian(loss_fn, params)
  assert hessian.shape == (1306, 1306)
  exact = np.linalg.eigvalsh(hessian)[::-1]

  top = sharpness.top_eigenvalues(loss_fn, params, k=3, seed=0)
  assert isinstance(top, np.ndarray) and top.shape == (3,)
  np.testing.assert_allclose(top, exact[:3], rtol=1e-3)
  assert np.all(np.diff(top) <= 0)
  assert sharpness.top_eigenvalues(loss_fn, params, k=1, seed=3)[0] == pytest.approx(exact[0],
                                                                                      rel=1e-3)

  trace = np.trace(hessian)
  off = hessian - np.diag(np.diag(hessian))
  stderr = np.sqrt(2 * np.sum(off**2) / 1000)  # Hutchinson's standard error at 1000 probes
  assert stderr < 0.02 * trace  # so the 5% check below is a real test (over 2.5 std)
  estimate = sharpness.hessian_trace(loss_fn, params, num_samples=1000, seed=0)
  assert estimate == pytest.approx(trace, rel=0.05)
  # The per-probe samples are z^T H z for Rademacher z drawn from the seed: check them exactly.
  obj = sharpness.objective(loss_fn, params)
  samples = sharpness.trace_samples_of(obj, num_samples=7, seed=5, probes_per_call=3)
  z = np.random.default_rng(5).integers(0, 2, size=(9, hessian.shape[0])) * 2.0 - 1.0
  np.testing.assert_allclose(samples, np.einsum("ij,jk,ik->i", z, hessian, z)[:7], rtol=1e-4)


def _separable_quadratic(seed: int):
  """f(θ) = Σ ½ a_i (θ_i − c_i)² + f0 over a two-leaf pytree, with its parts as NumPy arrays."""
  rng = np.random.default_rng(seed)
  theta = {"a": rng.normal(0, 2, (3, 4)).astype(np.float32), "b": rng.normal(0, 2, 5).astype(
      np.float32)}
  flat = ravel_pytree(theta)[0]
  a = rng.uniform(1, 10, flat.size)
  return theta, np.asarray(flat, np.float64), a


@pytest.mark.parametrize("at_minimum", [True, False])
def test_epsilon_sharpness_of_a_separable_quadratic_is_its_closed_form(at_minimum):
  theta, flat, a = _separable_quadratic(1)
  eps, f0 = 1e-2, 0.5
  radius = eps * (np.abs(flat) + 1)
  if at_minimum:
    centre = flat  # max at any vertex: Σ ½ a r²
    distance = np.zeros_like(flat)
  else:  # the box lies on one side of c_i: max at the far end, Σ ½ a (|θ − c| + r)²
    distance = 3 * radius
    centre = flat + np.where(np.arange(flat.size) % 2, 1, -1) * distance
  unravel = ravel_pytree(theta)[1]
  centre_tree = unravel(jnp.asarray(centre, jnp.float32))
  a_tree = unravel(jnp.asarray(a, jnp.float32))

  def loss_fn(p):
    terms = jax.tree.map(lambda x, c, w: 0.5 * jnp.sum(w * (x - c) ** 2), p, centre_tree, a_tree)
    return sum(jax.tree.leaves(terms)) + f0

  f_theta = f0 + 0.5 * np.sum(a * distance**2)
  f_max = f0 + 0.5 * np.sum(a * (distance + radius) ** 2)
  exact = (f_max - f_theta) / (1 + f_theta) * 100
  got = sharpness.epsilon_sharpness(loss_fn, theta, epsilon=eps, seed=0)
  assert got == pytest.approx(exact, rel=1e-3)
  # A lower bound: one iteration never exceeds it; and a different start reaches the same max.
  assert sharpness.epsilon_sharpness(loss_fn, theta, epsilon=eps, seed=0,
                                     max_iterations=1) <= exact * (1 + 1e-4)
  assert sharpness.epsilon_sharpness(loss_fn, theta, epsilon=eps, seed=7) == pytest.approx(
      exact, rel=1e-3)


def test_data_parallel_objective_equals_the_one_device_objective():
  """The data-parallel loss, gradient and HVPs over 4 devices and 3 batches equal those of the mean
  loss over all examples on one device."""
  rng = np.random.default_rng(2)
  w_true = rng.standard_normal(6)
  xs = rng.standard_normal((3, 4, 5, 6)).astype(np.float32)  # [batches, devices, b, dim]
  ys = (xs @ w_true + 0.1 * rng.standard_normal((3, 4, 5))).astype(np.float32)
  params = {"w": jnp.zeros(6), "s": jnp.ones(())}
  batch_loss = lambda p, b: jnp.mean(jnp.log1p((b["x"] @ p["w"] * p["s"] - b["y"]) ** 2))
  everything = {"x": xs.reshape(-1, 6), "y": ys.reshape(-1)}
  single = sharpness.objective(lambda p: batch_loss(p, everything), params)
  parallel = sharpness.data_parallel_objective(
      batch_loss, params, [{"x": xs[i], "y": ys[i]} for i in range(3)], jax.local_devices()[:4])
  x = single.x0 + 0.1 * rng.standard_normal(single.x0.size)
  (v1, g1), (v4, g4) = single.value_and_grad(x), parallel.value_and_grad(x)
  assert v4 == pytest.approx(v1, rel=1e-5)
  np.testing.assert_allclose(g4, g1, rtol=1e-4, atol=1e-6)
  vs = rng.standard_normal((2, single.x0.size))
  np.testing.assert_allclose(parallel.hvp(vs), single.hvp(vs), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(parallel.hvp(vs[0]), single.hvp(vs)[0], rtol=1e-4, atol=1e-6)


CLI_FLAGS = ["--k=2", "--batches=2", "--trace_samples=20", "--max_iterations=3"]


def test_command_gives_the_same_numbers_on_one_and_on_four_devices(tmp_path):
  source = experiment_runs.workdir("seed=0")  # LeNet-5 on 8x8 digits, 12 steps, batch 64
  one, four = str(tmp_path / "one"), str(tmp_path / "four")
  shutil.copytree(source, one)
  shutil.copytree(source, four)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  env.pop("NPROC", None)
  proc = subprocess.run([sys.executable, "-m", "lbjax.analysis.sharpness", f"--workdir={one}",
                         *CLI_FLAGS], check=False, cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "BatchNorm in evaluation mode, 1 device(s)" in proc.stdout
  assert "Hessian eigenvalue λ2" in proc.stdout and f"wrote {one}/sharpness.json" in proc.stdout
  with open(os.path.join(one, sharpness.SHARPNESS_FILE)) as f:
    r1 = json.load(f)

  assert len(jax.local_devices()) == 4  # conftest: this process has 4 simulated devices
  r4 = sharpness.measure(four, k=2, batches=2, trace_samples=20, max_iterations=3)
  assert (r1["devices"], r4["devices"]) == (1, 4)
  for key in ("step", "batches", "batch_size", "trace_samples", "epsilon"):
    assert r1[key] == r4[key]
  assert r1["batch_size"] == 64 and r1["step"] == 12
  np.testing.assert_allclose(r4["top_eigenvalues"], r1["top_eigenvalues"], rtol=1e-4)
  assert r1["top_eigenvalues"][0] >= r1["top_eigenvalues"][1] > 0
  for key in ("train_loss", "hessian_trace", "epsilon_sharpness"):
    assert r4[key] == pytest.approx(r1[key], rel=1e-4), key
  assert r1["epsilon_sharpness"] > 0

  # The loss is the restored model's mean cross-entropy over the first two training batches.
  solution = runs.restore(four)
  batch_loss = sharpness.train_loss(solution)
  batches = sharpness.train_batches(solution, 2, devices=jax.local_devices()[:1])
  direct = np.mean([float(batch_loss(solution.params, jax.tree.map(lambda x: x[0], b)))
                    for b in batches])
  assert r1["train_loss"] == pytest.approx(direct, rel=1e-5)


def test_the_commands_loss_uses_batchnorm_in_evaluation_mode():
  """With running statistics (evaluation mode) each example's loss does not depend on the rest
  of its batch: the batch loss is the mean of the one-example losses, and it changes when the
  running statistics do. (With batch statistics, training mode, neither would hold.)"""
  from configs import quickstart  # pylint: disable=g-import-not-at-top

  config = quickstart.get_config()
  config.model.name, config.image_size, config.batch_size = "resnet_tiny", 8, 8
  exp = sharpness.step_lib.build(config)
  state = jax.device_get(exp.init_state())
  rng = np.random.default_rng(0)
  stats = jax.tree_util.tree_map_with_path(
      lambda path, x: (rng.uniform(0.5, 2.0, x.shape) if path[-1].key == "var"
                       else rng.normal(0.0, 0.2, x.shape)).astype(np.float32), state.batch_stats)
  solution = runs.Solution("/nonexistent", config, exp, state.params, stats, 0, None)
  batch = sharpness.train_batches(solution, 1, devices=jax.local_devices()[:1])[0]
  batch = jax.tree.map(lambda x: x[0], batch)  # one device's 8 examples
  batch_loss = jax.jit(sharpness.train_loss(solution))
  loss = float(batch_loss(state.params, batch))
  singles = [float(batch_loss(state.params, jax.tree.map(lambda x, i=i: x[i:i + 1], batch)))
             for i in range(8)]
  assert np.std(singles) > 1e-3  # the examples' losses differ: the model is not constant
  assert loss == pytest.approx(np.mean(singles), rel=1e-5)
  other = solution._replace(batch_stats=jax.tree.map(lambda x: x * 2.0, stats))
  assert abs(float(jax.jit(sharpness.train_loss(other))(state.params, batch)) - loss) > 1e-3
