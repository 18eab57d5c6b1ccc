"""The data-parallel train loop: device-count invariance, resume, divergence, evaluation."""

import os
import shutil

import jax
import numpy as np
import pytest

from configs import quickstart
from configs import sweeps
from lbjax import checkpoint as checkpoint_lib
from lbjax import evaluation
from lbjax import mesh as mesh_lib
from lbjax import metrics as metrics_lib
from lbjax import step as step_lib
from lbjax import train


def small_config(**overrides):
  c = quickstart.get_config()
  c.image_size = 16
  c.num_epochs = 2.0
  c.batch_size = 32
  c.log_every_steps = 5
  c.eval_every_epochs = 1.0
  c.checkpoint_every_steps = 20
  c.progress_bar = False
  return sweeps.apply_overrides(c, overrides, where="test")


def run_steps(config, num_devices, steps):
  """Runs ``steps`` train steps (the train program) on a mesh of the first ``num_devices``
  devices; returns the final state on the host."""
  exp = step_lib.build(config)
  mesh = mesh_lib.data_mesh(jax.devices()[:num_devices])
  program = exp.train_program(mesh)
  state = mesh_lib.put_replicated(exp.init_state(), mesh)
  for step in range(steps):
    state, _ = program(state, exp.put_train_batch(step, mesh))
  return mesh_lib.to_host(state)


@pytest.mark.parametrize("model,augment", [("lenet5", "crop+normalize"),
                                           ("resnet_tiny", "standard")])
def test_one_and_four_devices_give_the_same_result(model, augment):
  assert jax.device_count() >= 4, "tests/conftest.py must simulate 4 CPU devices"
  config = small_config(**{"model.name": model, "augment": augment})
  one = run_steps(config, 1, 4)
  four = run_steps(config, 4, 4)
  assert int(one.step) == int(four.step) == 4
  for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(four.params)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(one.batch_stats), jax.tree.leaves(four.batch_stats)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
  # The step really changed the parameters.
  init = jax.device_get(step_lib.build(config).init_state())
  moved = [np.abs(a - b).max() for a, b in zip(jax.tree.leaves(init.params),
                                              jax.tree.leaves(one.params))]
  assert max(moved) > 1e-4


def _final_params(workdir):
  ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"))
  step = ckpt.latest_step()
  tree = ckpt.restore(step, step_lib.build(small_config()).init_state())
  ckpt.close()
  return step, tree


def test_rerun_resumes_to_the_same_result(tmp_path):
  config = small_config(checkpoint_every_steps=30)
  full = train.train_and_evaluate(config, str(tmp_path / "full"))
  assert full["status"] == "completed"

  part = str(tmp_path / "part")
  train.train_and_evaluate(config, part)
  # Simulate a job killed after its checkpoint at step 30: drop the later checkpoints.
  ckpt_dir = os.path.join(part, "checkpoints")
  steps = sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())
  assert 30 in steps and steps[-1] > 30
  for s in steps:
    if s > 30:
      shutil.rmtree(os.path.join(ckpt_dir, str(s)))
  resumed = train.train_and_evaluate(config, part)
  assert resumed["status"] == "completed"
  assert resumed["test_accuracy"] == full["test_accuracy"]
  step_a, a = _final_params(str(tmp_path / "full"))
  step_b, b = _final_params(part)
  assert step_a == step_b == full["step"]
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  # metrics.jsonl holds each step once: the records after step 30 were rewritten, not appended.
  train_steps = [r["step"] for r in metrics_lib.read_metrics(part) if "train_loss" in r]
  assert train_steps == sorted(set(train_steps))


def test_divergence_ends_the_run_with_status_diverged(tmp_path):
  config = small_config(**{"optimizer.learning_rate": 1e8, "schedule.name": "constant",
                           "schedule.warmup_epochs": 0.0})
  summary = train.train_and_evaluate(config, str(tmp_path))
  assert summary["status"] == "diverged"
  status = metrics_lib.read_status(str(tmp_path))
  assert status["status"] == "diverged" and 1 <= status["step"] <= 5
  records = metrics_lib.read_metrics(str(tmp_path))
  assert records[-1]["diverged"] == 1 and records[-1]["step"] == status["step"]


def test_evaluation_counts_every_test_example_once(tmp_path):
  config = small_config(num_epochs=1.0)
  exp = step_lib.build(config)
  mesh = mesh_lib.data_mesh()
  state = mesh_lib.put_replicated(exp.init_state(), mesh)
  result = evaluation.evaluate(exp.eval_program(mesh), state.params, state.batch_stats,
                               exp.data.test, batch_size=48, mesh=mesh)
  # Independent reference: the same model applied to the whole test split at once.
  from lbjax.data import augment  # pylint: disable=g-import-not-at-top
  init = exp.init_state()
  test = exp.data.test
  n = len(test["label"])
  images, _ = augment.apply({"image": test["image"], "label": test["label"]},
                            jax.random.split(jax.random.PRNGKey(0), n), mode=config.augment,
                            num_classes=10, mean=exp.data.mean, std=exp.data.std, train=False)
  logits = exp.model.apply({"params": init.params, "batch_stats": init.batch_stats}, images,
                           train=False)
  expected = float(np.mean(np.argmax(logits, -1) == test["label"]))
  assert result["accuracy"] == pytest.approx(expected, abs=1e-7)
