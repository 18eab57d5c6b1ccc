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

from lbjax import step as step_lib
from lbjax.analysis import runs
from lbjax.analysis import sharpness
from tests import experiment_runs
from tests import xla
from tests.hang import HANG_SECONDS

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
  h = np.asarray(jax.jit(jax.hessian(lambda v: loss_fn(unravel(v))))(flat), np.float64)
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


CLI_FLAGS = ["--k=2", "--batches=2", "--trace_samples=6", "--max_iterations=3", "--density",
             "--num_probes=2", "--num_steps=6", "--layers", "--layer_steps=6"]


def _command(workdir, devices):
  """Runs ``python -m lbjax.analysis.sharpness --workdir=workdir`` in a process that sees
  ``devices`` simulated CPU devices, its programs compiled with XLA's optimisations (its
  Hessian-vector products run dozens of times, `tests/xla.py`); returns its stdout and its
  ``sharpness.json``."""
  env = xla.process_env(devices, **xla.OPTIMIZED)
  proc = subprocess.run([sys.executable, "-m", "lbjax.analysis.sharpness", f"--workdir={workdir}",
                         *CLI_FLAGS], check=False, cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=HANG_SECONDS)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"BatchNorm in evaluation mode, {devices} device(s)" in proc.stdout, proc.stdout
  assert "Hessian eigenvalue λ2" in proc.stdout, proc.stdout
  assert f"wrote {workdir}/sharpness.json" in proc.stdout, proc.stdout
  with open(os.path.join(workdir, sharpness.SHARPNESS_FILE)) as f:
    return proc.stdout, json.load(f)


def test_command_gives_the_same_numbers_on_one_and_on_four_devices(tmp_path):
  """The command itself, in a process with 1 and in one with 4 devices: the same numbers up to
  float reduction order."""
  source = experiment_runs.workdir("seed=0")  # LeNet-5 on 8x8 digits, 12 steps, batch 64
  one, four = str(tmp_path / "one"), str(tmp_path / "four")
  shutil.copytree(source, one)
  shutil.copytree(source, four)
  stdout, r1 = _command(one, 1)
  assert f"{one}: trained weights (step 12); training loss" in stdout
  assert f"wrote {one}/density.png" in stdout
  with open(os.path.join(one, "density.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  # The per-module table: one line per module of LeNet-5, its λ_max and trace.
  lines = stdout.splitlines()
  header = next(i for i, line in enumerate(lines) if line.startswith("module "))
  assert lines[header].split() == ["module", "params", "λ_max", "trace", "±", "stderr"]
  table = {line.split()[0]: line.split() for line in lines[header + 1:header + 6]}
  assert sorted(table) == sorted(r1["layers"]) == ["conv1", "conv2", "fc1", "fc2", "logits"]
  for name, row in table.items():
    assert int(row[1]) == r1["layers"][name]["size"]
    assert float(row[2]) == pytest.approx(r1["layers"][name]["lambda_max"], rel=1e-4)
  _, r4 = _command(four, 4)
  assert (r1["devices"], r4["devices"]) == (1, 4)
  assert (r1["workdir"], r4["workdir"]) == (one, four)
  for key in ("step", "batches", "batch_size", "trace_samples", "epsilon", "seed",
              "epsilon_iterations", "batchnorm", "model"):
    assert r1[key] == r4[key], key
  assert r1["batch_size"] == 64 and r1["step"] == 12 and r1["batches"] == 2
  assert len(r1["top_eigenvalues"]) == len(r4["top_eigenvalues"]) == 2
  np.testing.assert_allclose(r4["top_eigenvalues"], r1["top_eigenvalues"], rtol=1e-4)
  assert r1["top_eigenvalues"][0] >= r1["top_eigenvalues"][1] > 0
  for key in ("train_loss", "hessian_trace", "hessian_trace_stderr", "epsilon_sharpness",
              "epsilon_max_loss"):
    assert r4[key] == pytest.approx(r1[key], rel=1e-4), key
  assert r1["epsilon_sharpness"] > 0 and r1["hessian_trace_stderr"] > 0
  # The density and the modules' blocks on 4 devices are those on 1.
  d1, d4 = r1["density"], r4["density"]
  np.testing.assert_allclose(np.asarray(d4["ritz_values"]), np.asarray(d1["ritz_values"]),
                             rtol=1e-3, atol=1e-4 * r1["top_eigenvalues"][0])
  grid, density = np.asarray(d1["grid"]), np.asarray(d1["density"])
  assert grid.shape == density.shape == (1024,)
  assert np.trapezoid(density, grid) == pytest.approx(1.0, abs=1e-9)
  np.testing.assert_allclose(d4["density"], density, atol=1e-3 * density.max())
  # The grid spans the extreme Ritz values, the largest of which is below λ1 (ARPACK).
  ritz = np.asarray(d1["ritz_values"])
  assert grid[0] < ritz.min() and grid[-1] > ritz.max()
  assert ritz.max() <= r1["top_eigenvalues"][0] * (1 + 1e-4)
  for name, layer in r1["layers"].items():
    for key in ("lambda_max", "trace"):
      assert r4["layers"][name][key] == pytest.approx(layer[key], rel=1e-3), (name, key)
  # The modules' trace samples are the whole trace's, split: their sum is the trace.
  assert sum(x["trace"] for x in r1["layers"].values()) == pytest.approx(r1["hessian_trace"],
                                                                          rel=1e-9)

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
  exp = step_lib.build(config)
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


def _small_mlp():
  """A 4-6-3 tanh MLP (51 parameters, modules Dense_0 and Dense_1) trained 200 steps on 32
  random points: a Hessian with positive and negative eigenvalues."""
  rng = np.random.default_rng(1)
  x = rng.standard_normal((32, 4)).astype(np.float32)
  targets = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 32)]
  params = {"Dense_0": {"kernel": jnp.asarray(rng.standard_normal((4, 6)) / 2, jnp.float32),
                        "bias": jnp.zeros(6)},
            "Dense_1": {"kernel": jnp.asarray(rng.standard_normal((6, 3)) / 2, jnp.float32),
                        "bias": jnp.zeros(3)}}

  def loss_fn(p):
    h = jnp.tanh(x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"])
    logits = h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]
    return -jnp.mean(jnp.sum(targets * jax.nn.log_softmax(logits), -1))

  step = jax.jit(lambda p: jax.tree.map(lambda a, g: a - 0.3 * g, p, jax.grad(loss_fn)(p)))
  for _ in range(200):
    params = step(params)
  return loss_fn, params


def _probes(seed, num_probes, n):
  """The probes `spectral_quadrature_of` draws: Rademacher / √n from default_rng(seed)."""
  return (np.random.default_rng(seed).integers(0, 2, size=(num_probes, n)) * 2.0 - 1.0) / np.sqrt(n)


def test_density_with_full_krylov_spaces_is_the_dense_spectrum_smoothed():
  """With as many Lanczos steps as parameters each probe's quadrature is its exact spectral
  measure Σ_i (v·u_i)² δ(λ_i): the density is that of the dense eigendecomposition."""
  loss_fn, params = _small_mlp()
  hessian = _dense_hessian(loss_fn, params)
  n = hessian.shape[0]
  assert n == 51
  eigenvalues, vectors = np.linalg.eigh(hessian)
  assert eigenvalues[0] < -1e-4 and eigenvalues[-1] > 0.1  # not at a minimum: both signs
  grid, density = sharpness.spectral_density(loss_fn, params, num_probes=6, num_steps=64, seed=3)
  assert grid.dtype == density.dtype == np.float64 and grid.shape == density.shape == (1024,)
  assert np.trapezoid(density, grid) == pytest.approx(1.0, abs=1e-12)
  sigma = 0.01 * (eigenvalues[-1] - eigenvalues[0])  # the documented default
  assert grid[0] == pytest.approx(eigenvalues[0] - 5 * sigma, rel=1e-4, abs=1e-5)
  assert grid[-1] == pytest.approx(eigenvalues[-1] + 5 * sigma, rel=1e-4)
  weights = ((_probes(3, 6, n) @ vectors) ** 2).mean(0)  # [n]: mean over probes of (v·u_i)²
  gauss = np.exp(-0.5 * ((grid[:, None] - eigenvalues[None]) / sigma) ** 2)
  expected = gauss @ weights / (sigma * np.sqrt(2 * np.pi))
  expected /= np.trapezoid(expected, grid)
  np.testing.assert_allclose(density, expected, atol=2e-3 * expected.max())
  # A narrower width is honoured, and one below the grid spacing is refused.
  narrow_grid, narrow = sharpness.spectral_density(loss_fn, params, num_probes=6, seed=3,
                                                   sigma=sigma / 4, num_points=4096)
  assert narrow.max() > 2 * density.max()
  assert np.trapezoid(narrow, narrow_grid) == pytest.approx(1.0, abs=1e-12)
  with pytest.raises(ValueError, match="below the grid spacing"):
    sharpness.spectral_density(loss_fn, params, num_probes=2, sigma=sigma / 100, num_points=64)
  with pytest.raises(ValueError, match="sigma must be > 0"):
    sharpness.spectral_density(loss_fn, params, num_probes=2, sigma=0.0)


def test_density_moments_and_support_against_the_dense_hessian():
  """20 Lanczos steps on 1306 parameters: the density integrates to 1, its mean and second
  moment are the probes' quadratic forms (Gauss quadrature is exact to degree 2m − 1), within
  SLQ's standard error of tr H / n and tr H² / n, and its grid spans the spectrum."""
  loss_fn, params = _mlp_problem()
  hessian = _dense_hessian(loss_fn, params)
  n = hessian.shape[0]
  eigenvalues = np.linalg.eigvalsh(hessian)
  obj = sharpness.objective(loss_fn, params)
  quad = sharpness.spectral_quadrature_of(obj, num_probes=10, num_steps=20, seed=0)
  grid, density, sigma = sharpness.density_of(quad)
  assert np.trapezoid(density, grid) == pytest.approx(1.0, abs=1e-12)
  mean = np.trapezoid(grid * density, grid)
  second = np.trapezoid(grid**2 * density, grid)

  v = _probes(0, 10, n)
  forms = np.einsum("pi,ij,pj->p", v, hessian, v)            # v^T H v per probe
  squares = np.sum((v @ hessian) ** 2, axis=1)                # v^T H² v per probe
  assert mean == pytest.approx(forms.mean(), rel=1e-4)
  assert second == pytest.approx(squares.mean() + sigma**2, rel=1e-4)
  # Against the spectrum: the probes' standard errors, from the dense matrices.
  off = lambda m: np.sum(m**2) - np.sum(np.diag(m) ** 2)
  h2 = hessian @ hessian
  se_mean = np.sqrt(2 * off(hessian)) / n / np.sqrt(10)
  se_second = np.sqrt(2 * off(h2)) / n / np.sqrt(10)
  assert abs(mean - eigenvalues.mean()) < 4 * se_mean
  assert abs(second - sigma**2 - np.mean(eigenvalues**2)) < 4 * se_second
  assert se_mean < 0.2 * abs(eigenvalues.mean())  # so the check above is a real one
  # Support: Ritz values lie in [λ_min, λ_max]; the extreme ones converge to its ends.
  nodes = np.concatenate(quad.nodes)
  tol = 1e-5 * np.abs(eigenvalues).max()
  assert eigenvalues[0] - tol <= nodes.min() and nodes.max() <= eigenvalues[-1] + tol
  assert nodes.max() == pytest.approx(eigenvalues[-1], rel=1e-3)
  assert grid[0] <= eigenvalues[0] and grid[-1] >= eigenvalues[-1]
  assert grid[0] == pytest.approx(nodes.min() - 5 * sigma) and grid[-1] == pytest.approx(
      nodes.max() + 5 * sigma)
  for w in quad.weights:
    assert w.sum() == pytest.approx(1.0, abs=1e-9) and np.all(w >= 0)


def test_modules_are_parameter_paths_without_the_leaf():
  params = {"stage1": {"block0": {"Conv_0": {"kernel": np.zeros((3, 3, 2, 4)), "bias": np.zeros(4)},
                                  "BatchNorm_0": {"scale": np.zeros(4), "bias": np.zeros(4)}}},
            "Dense_0": {"kernel": np.zeros((4, 2))}, "temperature": np.zeros(())}
  blocks = sharpness.modules(params)
  assert sorted(blocks) == ["Dense_0", "stage1/block0/BatchNorm_0", "stage1/block0/Conv_0",
                            "temperature"]
  flat, unravel = ravel_pytree(params)
  marker = np.zeros(flat.size)
  marker[blocks["stage1/block0/Conv_0"]] = 1.0
  tree = unravel(jnp.asarray(marker))
  assert float(jnp.sum(tree["stage1"]["block0"]["Conv_0"]["kernel"])) == 72.0
  assert float(jnp.sum(tree["stage1"]["block0"]["Conv_0"]["bias"])) == 4.0
  assert float(jnp.sum(tree["stage1"]["block0"]["BatchNorm_0"]["scale"])) == 0.0
  assert sum(len(b) for b in blocks.values()) == flat.size


@pytest.mark.parametrize("problem", ["small", "large"])
def test_layer_sharpness_matches_the_dense_diagonal_blocks(problem):
  loss_fn, params = _small_mlp() if problem == "small" else _mlp_problem()
  hessian = _dense_hessian(loss_fn, params)
  blocks = sharpness.modules(params)
  assert list(blocks) == (["Dense_0", "Dense_1"] if problem == "small" else ["hidden", "out"])
  samples = 400
  got = sharpness.layer_sharpness(loss_fn, params, num_samples=samples, seed=2)
  assert list(got) == list(blocks)
  obj = sharpness.objective(loss_fn, params)
  n = obj.x0.size
  z = np.random.default_rng(2).integers(0, 2, size=(samples, n)) * 2.0 - 1.0
  hz = z @ hessian
  for name, idx in blocks.items():
    block = hessian[np.ix_(idx, idx)]
    assert set(got[name]) == {"lambda_max", "trace"}
    # λ_max: exact Lanczos for the 51-parameter MLP's modules, 48 steps for 816 and 490.
    assert got[name]["lambda_max"] == pytest.approx(np.linalg.eigvalsh(block)[-1], rel=1e-4)
    # trace: the same probes' restricted sums exactly, and within 4 standard errors of tr H_mm.
    assert got[name]["trace"] == pytest.approx(np.mean(np.sum(z[:, idx] * hz[:, idx], 1)),
                                               rel=1e-4, abs=1e-6)
    inside = np.zeros(n)
    inside[idx] = 1.0
    coupling = np.triu(hessian**2 * (inside[:, None] + inside[None, :]) ** 2, 1).sum()
    stderr = np.sqrt(coupling / samples)
    assert abs(got[name]["trace"] - np.trace(block)) < 4 * stderr + 1e-6
  # One product per probe serves every module: their traces sum to Hutchinson's estimate.
  total = sharpness.hessian_trace(loss_fn, params, num_samples=samples, seed=2)
  assert sum(d["trace"] for d in got.values()) == pytest.approx(total, rel=1e-9)
