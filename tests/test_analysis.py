"""lbjax.analysis: linear interpolation between checkpoints, filter-normalised directions, and
the model of a run that the analyses restore (the SWA average, SWAP's average)."""

import json
import os

import jax
import numpy as np
import pytest

from lbjax import checkpoint as checkpoint_lib
from lbjax import evaluation
from lbjax import mesh as mesh_lib
from lbjax import metrics as metrics_lib
from lbjax import runners
from lbjax import step as step_lib
from lbjax import swa
from lbjax import train
from lbjax.analysis import interpolate as interpolate_cli
from lbjax.analysis import interpolation
from lbjax.analysis import runs
from lbjax.analysis import sharpness
from tests import experiment_runs
from tests.test_train import small_config


def test_interpolate_and_direction_match_numpy():
  a = {"w": np.array([[1.0, 2.0], [3.0, 4.0]], np.float32), "b": np.array([0.5, -1.0], np.float32)}
  b = {"w": np.array([[0.0, 2.0], [1.0, 0.0]], np.float32), "b": np.array([1.5, 1.0], np.float32)}
  for alpha in (-1.0, 0.0, 0.25, 1.0, 2.0):
    got = interpolation.interpolate(a, b, alpha)
    for k, v in a.items():
      np.testing.assert_allclose(got[k], (1 - alpha) * v + alpha * b[k], rtol=1e-6)
      assert got[k].dtype == np.float32
  d = {"w": np.array([[3.0, 0.0], [4.0, 2.0]]), "b": np.array([7.0, 7.0])}
  normed = interpolation.filter_normalize(d, a)
  # Filters are the columns (last axis): |a[:,0]| = sqrt(10), |d[:,0]| = 5; |a[:,1]| = sqrt(20).
  np.testing.assert_allclose(normed["w"][:, 0], np.array([3.0, 4.0]) / 5 * np.sqrt(10), rtol=1e-6)
  np.testing.assert_allclose(normed["w"][:, 1], np.array([0.0, 2.0]) / 2 * np.sqrt(20), rtol=1e-6)
  np.testing.assert_array_equal(normed["b"], 0.0)  # biases / BatchNorm: no direction
  np.testing.assert_allclose(interpolation.add_direction(a, normed, 0.5)["w"],
                             a["w"] + 0.5 * normed["w"], rtol=1e-6)


def test_random_direction_filters_have_the_weights_norms():
  params = {"conv": {"kernel": np.random.default_rng(0).normal(size=(3, 3, 2, 4)),
                     "bias": np.ones(4)}}
  d = interpolation.random_direction(params, seed=3)
  np.testing.assert_allclose(np.linalg.norm(d["conv"]["kernel"].reshape(-1, 4), axis=0),
                             np.linalg.norm(params["conv"]["kernel"].reshape(-1, 4), axis=0),
                             rtol=1e-5)
  assert not np.allclose(d["conv"]["kernel"], interpolation.random_direction(params, 4)["conv"]
                         ["kernel"])
  np.testing.assert_array_equal(d["conv"]["bias"], 0.0)


def test_alphas_include_both_solutions():
  np.testing.assert_allclose(interpolation.alphas(-1, 2, 13), np.arange(-1, 2.01, 0.25))
  assert {0.0, 1.0} <= set(interpolation.alphas(-1, 2, 4).tolist())
  curve = {"t": np.array([-1.0, -0.5, 0.0, 0.5, 1.0]),
           "train_loss": np.array([9.0, 2.0, 1.0, 1.5, 5.0])}
  assert interpolation.sharpness(curve, 0.5) == pytest.approx(1.0)
  assert interpolation.sharpness(curve, 1.0) == pytest.approx(8.0)


def test_interpolation_endpoints_equal_each_checkpoints_evaluated_loss(tmp_path):
  a_dir, b_dir = experiment_runs.workdir("seed=0"), experiment_runs.workdir("seed=1")
  out = str(tmp_path / "fig3.png")
  result = interpolate_cli.run(a_dir, b_dir, out, alpha_min=0.0, alpha_max=1.0, num_points=3)
  curve = {k: np.asarray(v) for k, v in result["curves"][0].items()}
  np.testing.assert_allclose(curve["alpha"], [0.0, 0.5, 1.0])
  for i, workdir in ((0, a_dir), (2, b_dir)):
    # The loss train_and_evaluate measured at the end of the run, from status.json.
    status = metrics_lib.read_status(workdir)
    assert curve["test_loss"][i] == pytest.approx(status["test_loss"], rel=1e-5)
    assert curve["test_accuracy"][i] == pytest.approx(status["test_accuracy"], abs=1e-9)
    # The training loss: the restored checkpoint evaluated on the training split directly.
    sol = runs.restore(workdir)
    mesh = mesh_lib.data_mesh()
    direct = evaluation.evaluate(sol.exp.eval_program(mesh),
                                 mesh_lib.put_replicated(sol.params, mesh),
                                 mesh_lib.put_replicated(sol.batch_stats, mesh),
                                 sol.exp.data.train, batch_size=256, mesh=mesh)
    assert curve["train_loss"][i] == pytest.approx(direct["loss"], rel=1e-5)
  assert result["steps"] == [12, 12]
  with open(out, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with open(str(tmp_path / "fig3.json")) as f:
    assert json.load(f)["curves"][0]["test_loss"] == pytest.approx(curve["test_loss"].tolist())


def test_batchnorm_statistics_are_recomputed_for_the_weights_evaluated():
  config = small_config(**{"model.name": "resnet_tiny", "image_size": 8, "batch_size": 256})
  exp = step_lib.build(config)
  state = jax.device_get(exp.init_state())
  evaluator = interpolation.Evaluator(exp, max_train_examples=64)
  garbage = jax.tree.map(lambda s: s + 5.0, state.batch_stats)
  recomputed = evaluator(state.params, state.batch_stats)
  # Recomputed: the statistics passed in do not matter...
  assert evaluator(state.params, garbage) == pytest.approx(recomputed, rel=1e-6)
  # ...whereas without recompute they do.
  fixed = interpolation.Evaluator(exp, recompute_batch_stats=False, max_train_examples=64)
  assert fixed(state.params, garbage)["test_loss"] != pytest.approx(recomputed["test_loss"],
                                                                    rel=1e-3)
  assert len(evaluator.splits["train"]["label"]) == 64


def test_random_direction_curves_centre_on_each_solution(tmp_path):
  dirs = [experiment_runs.workdir("seed=0"), experiment_runs.workdir("seed=1")]
  result = interpolate_cli.run(dirs[0], dirs[1], str(tmp_path / "sharp.png"), mode="random",
                               radius=0.5, num_points=3, sharpness_radius=0.5)
  assert len(result["curves"]) == 2
  for workdir, curve, sharp in zip(dirs, result["curves"], result["sharpness"]):
    assert curve["t"] == [-0.5, 0.0, 0.5]
    # At t = 0 the weights are the solution's own (LeNet-5 has no BatchNorm to recompute).
    assert curve["test_loss"][1] == pytest.approx(metrics_lib.read_status(workdir)["test_loss"],
                                                  rel=1e-5)
    assert sharp == pytest.approx(max(curve["train_loss"]) - curve["train_loss"][1])
    assert curve["train_loss"][0] != pytest.approx(curve["train_loss"][1], rel=1e-4)


def _evaluated(solution) -> dict[str, float]:
  """The restored model evaluated on the test split, as the runs evaluate theirs."""
  mesh = mesh_lib.data_mesh(jax.local_devices())
  return evaluation.evaluate_splits(solution.exp, solution.exp.eval_program(mesh),
                                    mesh_lib.put_replicated(solution.params, mesh),
                                    mesh_lib.put_replicated(solution.batch_stats, mesh), mesh=mesh)


def test_an_swa_run_is_measured_at_its_swa_average_with_batchnorm_recomputed(tmp_path):
  from tests.test_swa import _swa_config  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "swa")
  config = _swa_config()
  summary = train.train_and_evaluate(config, workdir)
  assert summary["status"] == "completed" and summary["swa_models"] == 4
  exp = step_lib.build(config)
  ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"))
  step, state = ckpt.restore_latest(jax.device_get(exp.init_state()))
  ckpt.close()
  sol = runs.restore(workdir)
  assert sol.step == step == 12
  assert sol.model == ("SWA average of 4 weights (step 12; seed 000 eq. (1)), BatchNorm "
                       "recomputed on the training data")
  # The weights are W_swa of the optimizer state, not the last raw weights...
  average, _ = swa.averaged_params(state.opt_state)
  for got, want in zip(jax.tree.leaves(sol.params), jax.tree.leaves(average)):
    np.testing.assert_array_equal(got, want)
  assert max(np.abs(a - b).max() for a, b in zip(jax.tree.leaves(average),
                                                 jax.tree.leaves(state.params))) > 1e-3
  # ...and the statistics are not the checkpoint's (those of the raw weights): with them, the
  # model's test loss and accuracy are the SWA model's the run reported.
  assert max(np.abs(a - b).max() for a, b in zip(jax.tree.leaves(sol.batch_stats),
                                                 jax.tree.leaves(state.batch_stats))) > 1e-3
  status = metrics_lib.read_status(workdir)
  got = _evaluated(sol)
  assert got["test_loss"] == pytest.approx(status["swa_test_loss"], rel=1e-5)
  assert got["test_accuracy"] == pytest.approx(status["result_test_accuracy"], abs=1e-9)
  assert status["swa_test_loss"] != pytest.approx(status["test_loss"], rel=1e-3)

  # The command measures that model and names it.
  result = sharpness.measure(workdir, k=1, batches=1, trace_samples=2, max_iterations=1)
  assert result["model"] == sol.model and result["step"] == 12
  with open(os.path.join(workdir, sharpness.SHARPNESS_FILE)) as f:
    assert json.load(f)["model"] == sol.model
  batch = sharpness.train_batches(sol, 1, devices=jax.local_devices()[:1])[0]
  batch = jax.tree.map(lambda x: x[0], batch)
  assert result["train_loss"] == pytest.approx(
      float(sharpness.train_loss(sol)(sol.params, batch)), rel=1e-5)
  raw = sol._replace(params=state.params, batch_stats=state.batch_stats)
  assert result["train_loss"] != pytest.approx(
      float(sharpness.train_loss(raw)(raw.params, batch)), rel=1e-3)
  assert sharpness.table(result).startswith(f"{os.path.abspath(workdir)}: SWA average of 4 "
                                            "weights (step 12;")


def test_a_swap_run_is_measured_at_its_average_and_named_with_its_steps(tmp_path):
  from tests.test_swap import tiny_config  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "swap")
  summary = runners.run(tiny_config(), workdir)
  assert summary["status"] == "completed" and summary["phase"] == 3
  sol = runs.restore(workdir)
  # Phase 3 saved its model as step 0; the run's steps are phase 1's 6 and phase 2's 5.
  assert sol.step == 5
  assert sol.model == ("SWAP average of 4 replicas' weights (phase 1: 6 steps, phase 2: 5 "
                       "steps), BatchNorm recomputed on the training data")
  status = metrics_lib.read_status(workdir)
  got = _evaluated(sol)
  assert got["test_loss"] == pytest.approx(status["test_loss"], rel=1e-5)
  assert got["test_accuracy"] == pytest.approx(status["result_test_accuracy"], abs=1e-9)
  result = sharpness.measure(workdir, k=1, batches=1, trace_samples=2, max_iterations=1)
  assert result["step"] == 5 and result["model"] == sol.model
  assert "(step 0)" not in sharpness.table(result)
